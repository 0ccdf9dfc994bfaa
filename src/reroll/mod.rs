//! Re-rolling the selective scan. Exporters unroll `h_t = dA_t * h_{t-1} + dBu_t`,
//! `y_t = <h_t, C_t>` into S copies per layer (Gather, Mul, Add, [Cast], Gather, Unsqueeze,
//! MatMul, Gather, then Unsqueeze + Concat). This pass finds each chain and replaces it with one
//! ONNX `Scan`, so the graph (and the relevance pass over it) no longer grows with S.
mod bodies;
mod chain;

pub use bodies::{backward_body, forward_body, SELECTIVE_SCAN};
pub use chain::Chain;

use std::collections::HashSet;

use crate::error::Result;
use crate::ir::{topo, Graph};
use crate::onnx::attributes::{make_graph, make_int, make_ints};

/// How the recurrence appears in the compiled model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanForm {
    /// One ONNX `Scan` per layer, forward and backward: size independent of the length.
    #[default]
    Rolled,
    /// As exported: one copy of the step per time step.
    Unrolled,
}

impl std::str::FromStr for ScanForm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rolled" => Ok(ScanForm::Rolled),
            "unrolled" => Ok(ScanForm::Unrolled),
            "chunked" => {
                Err("--scan chunked is not implemented yet; use rolled or unrolled".into())
            }
            other => Err(format!(
                "unknown scan form '{other}': expected rolled or unrolled"
            )),
        }
    }
}

/// Replaces every unrolled selective-scan chain by a `Scan` node. With `keep_states` the Scan
/// also outputs all states `H` `[B, D, S, N]` (the gradient x input backward needs them).
/// Returns how many chains were re-rolled; the caller rebuilds the graph's indexes.
pub fn reroll(graph: &mut Graph, keep_states: bool) -> Result<usize> {
    let chains = chain::find_all(graph)?;
    if chains.is_empty() {
        return Ok(0);
    }
    let used_before: HashSet<String> = used_values(graph);
    let mut concats = HashSet::new();
    for chain in &chains {
        let (b, d, _, n) = chain.dims;
        let dtype = graph.dtype_of(&chain.decay);
        let body = forward_body(graph, (b, d, n), dtype, keep_states);
        let attrs = vec![
            make_graph("body", body),
            make_int("num_scan_inputs", 3),
            make_ints("scan_input_axes", &[2, 2, 1]),
            make_ints("scan_output_axes", if keep_states { &[2, 2] } else { &[2] }),
        ];
        let outputs = if keep_states { 3 } else { 2 };
        // The scan runs in dA's float type; float16 models read C (and write y) in float16
        // around a float32 state, so their operands are cast in and the stacked y back out.
        let mut inputs = Vec::new();
        for value in [&chain.h0, &chain.decay, &chain.input, &chain.readout] {
            let converted = if graph.dtype_of(value) == dtype {
                value.clone()
            } else {
                graph.add_node("Cast", &[value], vec![make_int("to", dtype as i64)])
            };
            inputs.push(converted);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let produced = graph.add_node_named(SELECTIVE_SCAN, "Scan", &inputs, outputs, attrs);
        let stacked_dtype = graph.dtype_of(&chain.stacked);
        let index = graph.nodes().len() - 1;
        if stacked_dtype == dtype {
            // The Scan takes over the stacked output's name, so its readers need no rewiring.
            graph.proto.node[index].output[1] = chain.stacked.clone();
        } else {
            let cast = graph.add_node(
                "Cast",
                &[&produced[1]],
                vec![make_int("to", stacked_dtype as i64)],
            );
            let last = graph.nodes().len() - 1;
            graph.proto.node[last].output[0] = chain.stacked.clone();
            let _ = cast;
        }
        concats.insert(chain.concat_node.clone());
    }
    graph.proto.node.retain(|n| !concats.contains(n.name()));
    topo::remove_dead_nodes(graph, |_| true)?;
    topo::sort_nodes(graph)?;
    let used_after = used_values(graph);
    graph
        .proto
        .initializer
        .retain(|t| !used_before.contains(t.name()) || used_after.contains(t.name()));
    Ok(chains.len())
}

/// True for the forward `Scan` nodes this pass creates (named `mambalrp/selective_scan_N`).
pub fn is_forward_scan(node: &crate::onnx::proto::NodeProto) -> bool {
    let prefix = format!("mambalrp/{SELECTIVE_SCAN}_");
    node.op_type() == "Scan"
        && node.input.len() == 4
        && node
            .name()
            .strip_prefix(&prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn used_values(graph: &Graph) -> HashSet<String> {
    graph
        .nodes()
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.proto.output.iter().map(|o| o.name().to_string()))
        .collect()
}

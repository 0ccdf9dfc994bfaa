//! Re-rolling the selective scan. Exporters unroll `h_t = dA_t * h_{t-1} + dBu_t`,
//! `y_t = <h_t, C_t>` into S copies per layer (Gather, Mul, Add, [Cast], Gather, Unsqueeze,
//! MatMul, Gather, then Unsqueeze + Concat). This pass finds each chain and replaces it with one
//! ONNX `Scan`, so the graph (and the relevance pass over it) no longer grows with S.
mod bodies;
mod chain;
pub mod chunked;

pub use bodies::{backward_body, forward_body, SELECTIVE_SCAN};
pub use chain::Chain;

/// Name hint of the forward Scan nodes of the chunked form.
pub const SELECTIVE_SCAN_CHUNKED: &str = "selective_scan_chunked";

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
    /// One ONNX `Scan` per layer over chunks of steps, each chunk computed in parallel from
    /// cumulative sums of log dA (Mamba-2's SSD algebra); size independent of the length.
    Chunked,
    /// As exported: one copy of the step per time step.
    Unrolled,
}

impl std::str::FromStr for ScanForm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rolled" => Ok(ScanForm::Rolled),
            "unrolled" => Ok(ScanForm::Unrolled),
            "chunked" => Ok(ScanForm::Chunked),
            other => Err(format!(
                "unknown scan form '{other}': expected rolled, chunked or unrolled"
            )),
        }
    }
}

/// Which of our forward selective-scan `Scan`s a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanKind {
    /// One step per iteration: inputs h0, dA, dBu `[B,D,S,N]`, C `[B,S,N]`.
    Stepwise,
    /// One chunk per iteration: inputs h0, log dA, dBu `[B,D,K,L,N]`, C `[B,K,L,N]`.
    Chunked,
}

/// Replaces every unrolled selective-scan chain by a `Scan` node, stepwise or (with
/// `chunk_len`) chunked. With `keep_states` the Scan also outputs all states (the gradient x
/// input backward needs them). Returns how many chains were re-rolled; the caller rebuilds the
/// graph's indexes.
pub fn reroll(graph: &mut Graph, keep_states: bool, chunk_len: Option<usize>) -> Result<usize> {
    let chains = chain::find_all(graph)?;
    if chains.is_empty() {
        return Ok(0);
    }
    let used_before: HashSet<String> = used_values(graph);
    let mut concats = HashSet::new();
    for chain in &chains {
        concats.insert(chain.concat_node.clone());
        if let Some(len) = chunk_len {
            chunked::emit(graph, chain, len.max(1), keep_states)?;
            continue;
        }
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

/// The kind of a forward `Scan` this pass created (named `mambalrp/selective_scan_N` or
/// `mambalrp/selective_scan_chunked_N`), `None` for any other node.
pub fn forward_scan_kind(node: &crate::onnx::proto::NodeProto) -> Option<ScanKind> {
    let numbered = |hint: &str| {
        node.name()
            .strip_prefix(&format!("mambalrp/{hint}_"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if node.op_type() != "Scan" || node.input.len() != 4 {
        None
    } else if numbered(SELECTIVE_SCAN) {
        Some(ScanKind::Stepwise)
    } else if numbered(SELECTIVE_SCAN_CHUNKED) {
        Some(ScanKind::Chunked)
    } else {
        None
    }
}

/// True for the forward selective-scan `Scan` nodes this pass creates, of either kind.
pub fn is_forward_scan(node: &crate::onnx::proto::NodeProto) -> bool {
    forward_scan_kind(node).is_some()
}

fn used_values(graph: &Graph) -> HashSet<String> {
    graph
        .nodes()
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.proto.output.iter().map(|o| o.name().to_string()))
        .collect()
}

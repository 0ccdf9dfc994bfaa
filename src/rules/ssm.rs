//! R3: the selection parameters of the SSM (dt, B, C, split from the x_proj output) are
//! stop-gradients, so relevance flows only through the scanned input u, the linear recurrence
//! and the D skip.
use std::collections::HashSet;

use super::pattern::{produced_by, skip_noops};
use super::{Edge, Effect, Matches, Rejection, Rule, Site};
use crate::ir::Graph;

pub fn find(graph: &Graph, matches: &mut Matches) {
    let mut seen = HashSet::new();
    for node in graph.nodes().iter().filter(|n| n.op_type() == "Softplus") {
        match selection_split(graph, &node.input[0]) {
            Ok((split_nodes, outputs)) => {
                if !seen.insert(split_nodes.clone()) {
                    continue;
                }
                let stops: Vec<Edge> = outputs
                    .iter()
                    .flat_map(|o| graph.consumers(o).iter())
                    .map(|&(index, slot)| graph.edge(index, slot))
                    .collect();
                let names: Vec<&str> = split_nodes.iter().map(|&i| graph.node(i).name()).collect();
                matches.sites.push(Site {
                    rule: Rule::Ssm,
                    node: names.join("+"),
                    detail: format!(
                        "dt, B, C = '{}' frozen (found from Softplus '{}')",
                        outputs.join("', '"),
                        node.name()
                    ),
                    effect: Effect::StopGradient(stops),
                });
            }
            Err(reason) => {
                matches.rejections.push(Rejection {
                    rule: Rule::Ssm,
                    node: node.name().to_string(),
                    reason,
                });
            }
        }
    }
}

/// From the Softplus input `dt_proj(dt_in) + bias`, the node(s) splitting the x_proj output into
/// dt_in, B and C, and all their outputs.
fn selection_split(
    graph: &Graph,
    softplus_input: &str,
) -> Result<(Vec<usize>, Vec<String>), String> {
    let mut pre = skip_noops(graph, softplus_input);
    if let Some((_, add)) = produced_by(graph, pre, "Add") {
        if let Some(v) = add.input.iter().find(|i| !graph.is_constant(i)) {
            if add.input.iter().any(|i| graph.is_constant(i)) {
                pre = skip_noops(graph, v);
            }
        }
    }
    let (_, dt_proj) = produced_by(graph, pre, "MatMul")
        .ok_or("its input is not dt_proj(dt) (+ bias): no MatMul")?;
    if !graph.is_constant(&dt_proj.input[1]) {
        return Err(format!(
            "MatMul '{}' has no constant dt_proj weight",
            dt_proj.name()
        ));
    }
    let dt_in = skip_noops(graph, &dt_proj.input[0]);
    let (split_index, split) = graph
        .producer(dt_in)
        .ok_or("dt_proj reads a graph input, not a split of x_proj")?;
    match split.op_type() {
        "Split" => Ok((vec![split_index], split.output.clone())),
        "Slice" => {
            let source = &split.input[0];
            let slices: Vec<usize> = graph
                .consumers(source)
                .iter()
                .filter(|&&(i, slot)| slot == 0 && graph.node(i).op_type() == "Slice")
                .map(|&(i, _)| i)
                .collect();
            let outputs = slices
                .iter()
                .map(|&i| graph.node(i).output[0].clone())
                .collect();
            Ok((slices, outputs))
        }
        op => Err(format!(
            "dt_proj reads the output of {op} '{}', not a Split/Slice of the x_proj output",
            split.name()
        )),
    }
}

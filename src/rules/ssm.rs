//! R3: the selection parameters of the SSM (dt, B, C, split from the x_proj output) are
//! stop-gradients, so relevance flows only through the scanned input u, the linear recurrence
//! and the D skip.
use std::collections::HashSet;

use super::pattern::skip_noops;
use super::{Edge, Effect, Matches, Rejection, Rule, Site};
use crate::ir::Graph;
use crate::onnx::proto::NodeProto;

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

/// Ops that apply the dt_proj weight.
const MATRIX_PRODUCTS: &[&str] = &["MatMul", "Gemm", "Einsum"];
/// How many ops may lie between the Softplus and the split of the x_proj output.
const SEARCH_LIMIT: usize = 64;

/// The Split/Slice nodes that every non-constant value the Softplus input is computed from
/// passes through: the selection parameters' split. Whatever lies between (dt_proj, bias, the
/// dt RMSNorm of Falcon-Mamba) is frozen with them. Also says whether a matrix product with a
/// constant weight (dt_proj) lies on the way.
fn selection_cut(graph: &Graph, softplus_input: &str) -> Result<(Vec<usize>, bool), String> {
    // (value, the node that reads it on the way back from the Softplus)
    let mut pending = vec![(skip_noops(graph, softplus_input), None)];
    let mut seen = HashSet::new();
    let (mut splits, mut crossed_product) = (Vec::new(), false);
    while let Some((value, reader)) = pending.pop() {
        if !seen.insert(value) || graph.is_constant(value) {
            continue;
        }
        if seen.len() > SEARCH_LIMIT {
            return Err(format!(
                "its input is computed by more than {SEARCH_LIMIT} ops before any Split/Slice of the x_proj output"
            ));
        }
        let Some((index, node)) = graph.producer(value) else {
            let read_by = reader
                .map(|n: &NodeProto| format!(" (read by {} '{}')", n.op_type(), n.name()))
                .unwrap_or_default();
            return Err(format!(
                "its input depends on the graph input '{value}'{read_by} other than through a Split/Slice of the x_proj output"
            ));
        };
        let op = node.op_type();
        if matches!(op, "Split" | "Slice") {
            if !splits.contains(&index) {
                splits.push(index);
            }
            continue;
        }
        if MATRIX_PRODUCTS.contains(&op) {
            if !node.input.iter().take(2).any(|i| graph.is_constant(i)) {
                return Err(format!(
                    "{op} '{}' has no constant dt_proj weight",
                    node.name()
                ));
            }
            crossed_product = true;
        }
        pending.extend(
            node.input
                .iter()
                .filter(|i| !i.is_empty())
                .map(|i| (skip_noops(graph, i), Some(node))),
        );
    }
    Ok((splits, crossed_product))
}

/// From the Softplus input `dt_proj(dt_in) + bias` (written any way), the node(s) splitting the
/// x_proj output into dt_in, B and C, and all their outputs.
fn selection_split(
    graph: &Graph,
    softplus_input: &str,
) -> Result<(Vec<usize>, Vec<String>), String> {
    let (splits, crossed_product) = selection_cut(graph, softplus_input)?;
    let Some(&split_index) = splits.first() else {
        return Err("its input is not computed from a Split/Slice of the x_proj output".into());
    };
    let split = graph.node(split_index);
    if splits
        .iter()
        .any(|&i| graph.node(i).input[0] != split.input[0])
    {
        return Err("its input is computed from slices of different tensors".into());
    }
    if !crossed_product {
        return Err(format!(
            "its input is a slice of '{}' with no dt_proj matrix product in between",
            split.input[0]
        ));
    }
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

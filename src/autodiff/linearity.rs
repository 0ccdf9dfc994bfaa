//! The proof obligation of MambaLRP mode: with all rules applied, every node on the relevance
//! path must be linear in its relevance-carrying inputs, so relevance is conserved (Euler).
use std::collections::HashSet;

use super::Modifiers;
use crate::error::{Error, Result};
use crate::ir::Graph;

const LINEAR_OPS: &[&str] = &[
    "Add",
    "Sub",
    "Neg",
    "Sum",
    "Slice",
    "Split",
    "Concat",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Flatten",
    "Transpose",
    "Expand",
    "Cast",
    "Identity",
    "ReduceSum",
    "ReduceMean",
    "Where",
    "Pad",
];

pub fn check(
    graph: &Graph,
    index: usize,
    carrying: &HashSet<String>,
    modifiers: &Modifiers,
) -> Result<()> {
    let node = graph.node(index);
    let carried: Vec<&str> = node
        .input
        .iter()
        .enumerate()
        .filter(|(slot, name)| carrying.contains(*name) && !modifiers.stops(node, *slot))
        .map(|(_, name)| name.as_str())
        .collect();
    let fail = |why: String| {
        Err(Error::NotLinear {
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            why,
        })
    };
    match node.op_type() {
        op if LINEAR_OPS.contains(&op) => Ok(()),
        "Mul" if carried.len() == 2 && modifiers.half_nodes.contains(crate::ir::node_key(node)) => {
            Ok(())
        }
        "Mul" | "MatMul" | "Gemm" | "Conv" if carried.len() >= 2 => fail(format!(
            "multiplies two relevance-carrying tensors ('{}' and '{}') and no rule (SiLU, gate, SSM) covers the product",
            carried[0], carried[1]
        )),
        "Conv" | "Gemm" if !carried.contains(&node.input[0].as_str()) => {
            fail("carries relevance through its weights, which is not linear in the input".into())
        }
        "Mul" | "MatMul" | "Gemm" | "Conv" => Ok(()),
        "Scan" if graph.forward_scan_kind(node).is_some() => {
            let relevance_operands = crate::ir::scan::RELEVANCE_SLOTS.map(|slot| &node.input[slot]);
            if carried.iter().all(|c| relevance_operands.iter().any(|r| *r == c)) {
                Ok(())
            } else {
                fail("carries relevance through dA or C of the selective scan, which the SSM rule freezes".into())
            }
        }
        "Div" if !carried.contains(&node.input[1].as_str()) => Ok(()),
        "Div" => fail(format!("divides by the relevance-carrying tensor '{}' and no norm rule covers it", node.input[1])),
        _ => fail(format!(
            "is non-linear in '{}' and no MambaLRP rule covers it",
            carried.first().copied().unwrap_or("?")
        )),
    }
}

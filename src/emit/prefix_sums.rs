//! Sums read off prefix sums. A sum over an axis is the last element of the inclusive
//! cumulative sum over that axis, and the first element of the reverse one. Where the compiled
//! graph computes both of one value (the parallel scan form does, per level: the chunk sums of
//! the forward pass beside its `CumSum`, and their transposes' sums beside the reverse ones),
//! the sum becomes a `Slice` of one step: it reads 1/L of a state-sized tensor instead of all of
//! it (ONNX Runtime's CUDA `ReduceSum` over a chunk of 8 took 0.35 ms on
//! `[1, 1536, 256, 8, 16]`, as long as two elementwise ops).
//!
//! This runs after differentiation, so the autodiff still transposes a `ReduceSum` (a broadcast,
//! left unexpanded) rather than a `Slice` (a state-sized `Pad`). Only the compiler's own nodes
//! are rewritten: the exported forward pass keeps its arithmetic.
use std::collections::HashMap;

use crate::error::Result;
use crate::ir::{topo, Graph};
use crate::onnx::attributes;

/// Rewrites every sum the compiler minted whose operand also has a prefix sum over the same
/// axis; returns how many.
pub fn read_sums_off_prefix_sums(graph: &mut Graph) -> Result<usize> {
    // (operand, axis) -> (prefix sum, reverse)
    let mut prefix_sums: HashMap<(String, usize), (String, bool)> = HashMap::new();
    for node in graph.nodes() {
        if node.op_type() != "CumSum" || attributes::int(node, "exclusive").unwrap_or(0) != 0 {
            continue;
        }
        let Some(axis) = single_axis(graph, &node.input[0], node.input.get(1)) else {
            continue;
        };
        let reverse = attributes::int(node, "reverse").unwrap_or(0) != 0;
        prefix_sums
            .entry((node.input[0].clone(), axis))
            .or_insert((node.output[0].clone(), reverse));
    }
    let mut rewrites = Vec::new();
    for node in graph.nodes() {
        if node.op_type() != "ReduceSum" || !graph.is_minted_node(node) {
            continue;
        }
        let axes = match node.input.get(1) {
            Some(axes) => single_axis(graph, &node.input[0], Some(axes)),
            None => attributes::ints(node, "axes")
                .filter(|axes| axes.len() == 1)
                .and_then(|axes| normalized(graph, &node.input[0], axes[0])),
        };
        let Some(axis) = axes else { continue };
        if let Some((prefix, reverse)) = prefix_sums.get(&(node.input[0].clone(), axis)) {
            let keepdims = attributes::int(node, "keepdims").unwrap_or(1) != 0;
            rewrites.push((
                node.output[0].clone(),
                prefix.clone(),
                *reverse,
                axis,
                keepdims,
            ));
        }
    }
    for (sum, prefix, reverse, axis, keepdims) in &rewrites {
        // The inclusive prefix sum's last step, or the reverse one's first.
        let (start, end) = if *reverse { (0, 1) } else { (-1, i64::MAX) };
        let mut step = graph.op_slice_signed(prefix, *axis, start, end);
        if !keepdims {
            step = graph.op_squeeze(&step, &[*axis as i64]);
        }
        graph.substitute(sum, &step);
    }
    if !rewrites.is_empty() {
        topo::remove_dead_minted_nodes(graph)?;
        topo::sort_nodes(graph)?;
    }
    Ok(rewrites.len())
}

/// The one axis a constant `axes` operand names, made non-negative with `operand`'s rank.
fn single_axis(graph: &Graph, operand: &str, axes: Option<&String>) -> Option<usize> {
    let values = graph.constant(axes?)?.to_i64_vec();
    match values.as_slice() {
        [axis] => normalized(graph, operand, *axis),
        _ => None,
    }
}

fn normalized(graph: &Graph, operand: &str, axis: i64) -> Option<usize> {
    if axis >= 0 {
        return Some(axis as usize);
    }
    let rank = graph.shape(operand).ok()?.len() as i64;
    (axis + rank >= 0).then_some((axis + rank) as usize)
}

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
use crate::onnx::proto::NodeProto;
use crate::ops::support::{axes_operand, constant_operand, normalize_axis};
use crate::ops::Attrs;

/// Rewrites every sum the compiler minted whose operand also has a prefix sum over the same
/// axis; returns how many.
pub fn read_sums_off_prefix_sums(graph: &mut Graph) -> Result<usize> {
    // (operand, axis) -> (prefix sum, reverse)
    let mut prefix_sums: HashMap<(String, usize), (String, bool)> = HashMap::new();
    for (index, node) in graph.nodes().iter().enumerate() {
        let &Attrs::CumSum { exclusive, reverse } = graph.op(index).attrs() else {
            continue;
        };
        if exclusive {
            continue;
        }
        let axis = constant_operand(graph, node, 1, "axis").ok().flatten();
        if let Some(axis) = single_axis(graph, node, axis) {
            prefix_sums
                .entry((node.input[0].clone(), axis))
                .or_insert((node.output[0].clone(), reverse));
        }
    }
    let mut rewrites = Vec::new();
    for (index, node) in graph.nodes().iter().enumerate() {
        let (Attrs::Reduce(reduce), "ReduceSum") = (graph.op(index).attrs(), node.op_type()) else {
            continue;
        };
        if !graph.is_minted_node(node) {
            continue;
        }
        let axes = axes_operand(graph, node, &reduce.axes).ok().flatten();
        let Some(axis) = single_axis(graph, node, axes) else {
            continue;
        };
        if let Some((prefix, reverse)) = prefix_sums.get(&(node.input[0].clone(), axis)) {
            rewrites.push((
                node.output[0].clone(),
                prefix.clone(),
                *reverse,
                axis,
                reduce.keepdims,
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

/// The one axis `axes` names, non-negative. A negative one is resolved against the operand's
/// traced rank; values the relevance pass adds with a symbolic length may have none, and their
/// axes are written non-negative.
fn single_axis(graph: &Graph, node: &NodeProto, axes: Option<Vec<i64>>) -> Option<usize> {
    match *axes?.as_slice() {
        [axis] if axis >= 0 => Some(axis as usize),
        [axis] => {
            let rank = graph.shape(&node.input[0]).ok()?.len();
            normalize_axis(axis, rank, node).ok()
        }
        _ => None,
    }
}

//! Layout and selection ops: reshapes, transposes, broadcasts, concatenation, splits, slices,
//! pads and gathers. All linear: their VJPs move the cotangent back into place.
use ndarray::{ArrayD, Axis, IxDyn};

use super::attrs::{self, Attrs};
use super::support::{
    axes_operand, broadcast, input_type, integer_operands, normalize_axis, one, per_sample_dot,
    reshape_target, reshaped_to_output, slice_len, slice_spec, split_sizes,
};
use super::{Arity, Linearity, OpDef, Step, Vjp};
use crate::autodiff::Contribution;
use crate::error::{Error, Result};
use crate::ir::{Graph, ValueType};
use crate::onnx::attributes::make_int;
use crate::onnx::proto::NodeProto;
use crate::onnx::Tensor;

pub(super) static OPS: &[OpDef] = &[
    OpDef::new("Reshape", Arity::new(2, 1), infer_reshape)
        .with_parse(attrs::reshape)
        .with_vjp(Linearity::Linear, reshape_back)
        .with_fold(fold_relayout)
        .recomputable(),
    OpDef::new("Flatten", Arity::new(1, 1), infer_flatten)
        .with_parse(attrs::axis_default_1)
        .with_vjp(Linearity::Linear, reshape_back),
    OpDef::new("Unsqueeze", Arity::new(2, 1).until(13, 1), infer_unsqueeze)
        .with_parse(attrs::axes)
        .with_vjp(Linearity::Linear, unsqueeze_back)
        .with_fold(fold_relayout)
        .recomputable(),
    OpDef::new("Squeeze", Arity::new(1, 1), infer_squeeze)
        .with_parse(attrs::axes)
        .with_vjp(Linearity::Linear, squeeze_back)
        .with_fold(fold_relayout)
        .recomputable(),
    OpDef::new("Transpose", Arity::new(1, 1), infer_transpose)
        .with_parse(attrs::transpose)
        .with_vjp(Linearity::Linear, transpose_back)
        .recomputable(),
    OpDef::new("Expand", Arity::new(2, 1), infer_expand)
        .with_vjp(Linearity::Linear, expand_back)
        .with_fold(fold_relayout)
        .recomputable(),
    OpDef::new("Concat", Arity::new(1, 1), infer_concat)
        .with_parse(attrs::axis_default_0)
        .with_vjp(Linearity::Linear, concat_back)
        .with_fold(fold_concat),
    OpDef::new("Split", Arity::new(1, 1), infer_split)
        .with_parse(attrs::split)
        .with_vjp(Linearity::Linear, split_back),
    OpDef::new("Slice", Arity::new(3, 1).until(10, 1), infer_slice)
        .with_parse(attrs::slice)
        .with_vjp(Linearity::Linear, slice_back)
        .with_fold(fold_slice)
        .recomputable(),
    OpDef::new("Pad", Arity::new(2, 1).until(11, 1), infer_pad)
        .with_parse(attrs::pad)
        .with_vjp(Linearity::Linear, pad_back)
        .recomputable(),
    OpDef::new("Gather", Arity::new(2, 1), infer_gather)
        .with_parse(attrs::axis_default_0)
        .with_vjp(Linearity::Linear, gather_back)
        .with_fold(fold_gather),
    OpDef::new("GatherElements", Arity::new(2, 1), infer_gather_elements)
        .with_parse(attrs::axis_default_0),
];

fn axis_of(attrs: &Attrs) -> i64 {
    match attrs {
        Attrs::Axis(axis) => *axis,
        Attrs::Split(split) => split.axis,
        _ => unreachable!("parsed with an axis"),
    }
}

fn with_shape(x: ValueType, shape: Vec<usize>) -> Result<Vec<Option<ValueType>>> {
    one(ValueType {
        dtype: x.dtype,
        shape,
    })
}

fn infer_reshape(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let &Attrs::Reshape { allowzero } = attrs else {
        unreachable!("parsed by attrs::reshape")
    };
    let x = input_type(graph, node, 0)?;
    let target = graph
        .constant(&node.input[1])
        .ok_or_else(|| Error::node(node, "Reshape shape must be constant"))?;
    let shape = reshape_target(&x.shape, &target.to_i64_vec(), allowzero, node)?;
    with_shape(x, shape)
}

fn infer_flatten(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let x = input_type(graph, node, 0)?;
    let axis = normalize_axis(axis_of(attrs), x.rank() + 1, node)?;
    let shape = vec![
        x.shape[..axis].iter().product(),
        x.shape[axis..].iter().product(),
    ];
    with_shape(x, shape)
}

fn infer_unsqueeze(
    graph: &Graph,
    node: &NodeProto,
    attrs: &Attrs,
) -> Result<Vec<Option<ValueType>>> {
    let Attrs::Axes(attribute) = attrs else {
        unreachable!("parsed by attrs::axes")
    };
    let x = input_type(graph, node, 0)?;
    let axes = axes_operand(graph, node, attribute)?
        .ok_or_else(|| Error::node(node, "Unsqueeze without axes"))?;
    let rank = x.rank() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| normalize_axis(a, rank, node))
        .collect::<Result<_>>()?;
    axes.sort_unstable();
    let mut shape = x.shape.clone();
    for a in axes {
        shape.insert(a.min(shape.len()), 1);
    }
    with_shape(x, shape)
}

fn infer_squeeze(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let Attrs::Axes(attribute) = attrs else {
        unreachable!("parsed by attrs::axes")
    };
    let x = input_type(graph, node, 0)?;
    let shape = match axes_operand(graph, node, attribute)? {
        Some(axes) => {
            let axes: Vec<usize> = axes
                .iter()
                .map(|&a| normalize_axis(a, x.rank(), node))
                .collect::<Result<_>>()?;
            x.shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect()
        }
        None => x.shape.iter().copied().filter(|&d| d != 1).collect(),
    };
    with_shape(x, shape)
}

/// The permutation of a Transpose over rank `rank` (reversed axes by default).
fn permutation(attrs: &Attrs, rank: usize) -> Vec<i64> {
    let Attrs::Transpose { perm } = attrs else {
        unreachable!("parsed by attrs::transpose")
    };
    perm.clone()
        .unwrap_or_else(|| (0..rank as i64).rev().collect())
}

fn infer_transpose(
    graph: &Graph,
    node: &NodeProto,
    attrs: &Attrs,
) -> Result<Vec<Option<ValueType>>> {
    let x = input_type(graph, node, 0)?;
    let perm = permutation(attrs, x.rank());
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..x.rank() as i64).collect::<Vec<_>>() {
        return Err(Error::node(
            node,
            format!("perm {perm:?} is not a permutation of {} axes", x.rank()),
        ));
    }
    let shape = perm
        .iter()
        .map(|&p| x.shape.get(p as usize).copied())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::node(node, "bad perm"))?;
    with_shape(x, shape)
}

fn infer_expand(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let x = input_type(graph, node, 0)?;
    let target = graph
        .constant(&node.input[1])
        .ok_or_else(|| Error::node(node, "Expand shape must be constant"))?;
    let target: Vec<usize> = target
        .to_i64_vec()
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    let shape = broadcast(&x.shape, &target)
        .ok_or_else(|| Error::node(node, "Expand shape does not broadcast"))?;
    with_shape(x, shape)
}

fn infer_concat(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let first = input_type(graph, node, 0)?;
    let axis = normalize_axis(axis_of(attrs), first.rank(), node)?;
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for i in 0..node.input.len() {
        let part = input_type(graph, node, i)?.shape;
        let agrees = part.len() == first.rank()
            && (0..part.len()).all(|d| d == axis || part[d] == first.shape[d]);
        if !agrees {
            return Err(Error::node(
                node,
                format!(
                    "Concat inputs {:?} and {part:?} do not line up on axis {axis}",
                    first.shape
                ),
            ));
        }
        shape[axis] += part[axis];
    }
    with_shape(first, shape)
}

fn infer_split(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let Attrs::Split(split) = attrs else {
        unreachable!("parsed by attrs::split")
    };
    let x = input_type(graph, node, 0)?;
    let axis = normalize_axis(split.axis, x.rank(), node)?;
    let sizes = split_sizes(graph, node, split, x.shape[axis])?;
    Ok(sizes
        .into_iter()
        .map(|s| {
            let mut shape = x.shape.clone();
            shape[axis] = s;
            Some(ValueType {
                dtype: x.dtype,
                shape,
            })
        })
        .collect())
}

fn infer_slice(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let x = input_type(graph, node, 0)?;
    let mut shape = x.shape.clone();
    for (axis, s, e, st) in slice_spec(graph, node, attrs, &x.shape)? {
        shape[axis] = slice_len(s, e, st);
    }
    with_shape(x, shape)
}

/// The constant pad amounts `[begins..., ends...]` of a Pad node over rank `rank`.
fn pad_amounts(graph: &Graph, node: &NodeProto, rank: usize) -> Result<Vec<i64>> {
    let pads = node
        .input
        .get(1)
        .and_then(|p| graph.constant(p))
        .ok_or_else(|| Error::node(node, "Pad amounts must be known at compile time"))?
        .to_i64_vec();
    if node.input.get(3).is_some_and(|a| !a.is_empty()) || pads.len() != 2 * rank {
        return Err(Error::node(
            node,
            "Pad needs one begin and one end per axis",
        ));
    }
    Ok(pads)
}

fn infer_pad(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let x = input_type(graph, node, 0)?;
    let pads = pad_amounts(graph, node, x.rank())?;
    let shape = (0..x.rank())
        .map(|i| {
            usize::try_from(x.shape[i] as i64 + pads[i] + pads[i + x.rank()])
                .map_err(|_| Error::node(node, "Pad crops below zero length"))
        })
        .collect::<Result<Vec<_>>>()?;
    with_shape(x, shape)
}

fn infer_gather(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let (data, idx) = (input_type(graph, node, 0)?, input_type(graph, node, 1)?);
    let axis = normalize_axis(axis_of(attrs), data.rank(), node)?;
    let mut shape = data.shape[..axis].to_vec();
    shape.extend(&idx.shape);
    shape.extend(&data.shape[axis + 1..]);
    with_shape(data, shape)
}

fn infer_gather_elements(
    graph: &Graph,
    node: &NodeProto,
    _: &Attrs,
) -> Result<Vec<Option<ValueType>>> {
    let indices = input_type(graph, node, 1)?;
    with_shape(input_type(graph, node, 0)?, indices.shape)
}

/// Reshape, Flatten, Squeeze, Unsqueeze: the cotangent takes the input's runtime shape.
fn reshape_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let mut vjp = Vjp::default();
    let g = step.grad()?;
    vjp.full(0, graph.op_reshape_like(&g, &step.node.input[0]));
    Ok(vjp)
}

/// The transpose of a Squeeze is the Unsqueeze of the same axes: no runtime shape is read
/// (a read of the forward input's shape would keep it alive until the relevance pass).
fn squeeze_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let Attrs::Axes(attribute) = step.attrs else {
        unreachable!("parsed by attrs::axes")
    };
    let rank = step.input_shape(graph, 0)?.len();
    let axes = match axes_operand(graph, node, attribute)? {
        Some(axes) => axes
            .iter()
            .map(|&a| normalize_axis(a, rank, node).map(|a| a as i64))
            .collect::<Result<Vec<_>>>()?,
        // Every dim of size 1 (as traced).
        None => (0..rank as i64)
            .filter(|&a| step.input_shape(graph, 0).is_ok_and(|s| s[a as usize] == 1))
            .collect(),
    };
    let g = step.grad()?;
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_unsqueeze(&g, &axes));
    Ok(vjp)
}

/// The transpose of an Unsqueeze is the Squeeze of the same axes (no runtime shape read).
fn unsqueeze_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let Attrs::Axes(attribute) = step.attrs else {
        unreachable!("parsed by attrs::axes")
    };
    let rank = step.output_shape(graph)?.len();
    let axes = axes_operand(graph, node, attribute)?
        .ok_or_else(|| Error::node(node, "Unsqueeze without axes"))?
        .iter()
        .map(|&a| normalize_axis(a, rank, node).map(|a| a as i64))
        .collect::<Result<Vec<_>>>()?;
    let g = step.grad()?;
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_squeeze(&g, &axes));
    Ok(vjp)
}

fn transpose_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let g = step.grad()?;
    let rank = step.output_shape(graph)?.len();
    let perm = permutation(step.attrs, rank);
    let mut inverse = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p as usize] = i as i64;
    }
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_transpose(&g, &inverse));
    Ok(vjp)
}

fn expand_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let g = step.grad()?;
    let (out_shape, shape) = (step.output_shape(graph)?, step.input_shape(graph, 0)?);
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_unbroadcast(&g, &out_shape, &shape)?);
    Ok(vjp)
}

fn concat_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let g = step.grad()?;
    let rank = step.output_shape(graph)?.len();
    let axis = normalize_axis(axis_of(step.attrs), rank, node)?;
    let out_shape = step.output_shape(graph)?;
    let mut vjp = Vjp::default();
    let mut terms = Vec::new();
    let mut offset = 0;
    for slot in 0..node.input.len() {
        let shape = step.input_shape(graph, slot)?;
        let len = shape[axis];
        if step.carries[slot] {
            vjp.full(slot, graph.op_slice(&g, axis, offset, offset + len));
        } else if axis > 0 && len > 0 && graph.dtype_of(&node.input[slot]).is_float() {
            // A piece the input does not reach (Vision Mamba's class token) is a constant
            // additive term of the output: its relevance is bias.
            let part = graph.op_slice(&g, axis, offset, offset + len);
            let mut piece_shape = out_shape.clone();
            piece_shape[axis] = len;
            terms.push(per_sample_dot(
                graph,
                &part,
                &node.input[slot],
                &piece_shape,
                step.batch,
                node,
            )?);
        }
        offset += len;
    }
    vjp.bias = (!terms.is_empty()).then(|| graph.op_sum(&terms));
    Ok(vjp)
}

/// Split has one cotangent per output: the parts nobody differentiated are zeros.
fn split_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let Attrs::Split(split) = step.attrs else {
        unreachable!("parsed by attrs::split")
    };
    let shape = step.input_shape(graph, 0)?;
    let axis = normalize_axis(split.axis, shape.len(), node)?;
    let parts_count = split_sizes(graph, node, split, shape[axis])?.len();
    let mut parts = Vec::new();
    for i in 0..parts_count {
        match step.out_grads.get(i).cloned().flatten() {
            Some(gi) => parts.push(gi),
            None => parts.push(graph.op_zeros_like(&node.output[i])),
        }
    }
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_concat(&parts, axis));
    Ok(vjp)
}

/// True when `value` is written in the graph (an initializer or a Constant node's output), not
/// computed: such Slice bounds give static pad amounts.
fn literal(graph: &Graph, value: &str) -> bool {
    value.is_empty()
        || graph.is_initializer(value)
        || graph
            .producer(value)
            .is_some_and(|(_, p)| p.op_type() == "Constant")
}

fn slice_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let mut g = step.grad()?;
    let shape = step.input_shape(graph, 0)?;
    let spec = slice_spec(graph, node, step.attrs, &shape)?;
    let mut vjp = Vjp::default();
    // Bounds written in the graph give static pad amounts; bounds computed from shapes
    // (the compact scans' trim to the runtime length, the exporters' shape arithmetic)
    // get their amounts from the runtime shapes, which is right for symbolic axes too.
    if node.input.iter().skip(1).all(|v| literal(graph, v)) {
        // The cotangent's shape as it is spread out, axis by axis.
        let mut current = step.output_shape(graph)?;
        let mut before = vec![0; shape.len()];
        let mut after = vec![0; shape.len()];
        for (axis, start, end, step_size) in spec {
            let taken = slice_len(start, end, step_size);
            if taken == 0 {
                return Err(step.unsupported(" (Slice taking nothing)"));
            }
            // The lowest input index read, and the distance between those read.
            let (lowest, stride) = if step_size < 0 {
                // A flip (the backward direction of a bidirectional scan, say): the
                // cotangent is flipped back, lowest index first.
                g = reversed(graph, &g, axis);
                (
                    start + (taken as i64 - 1) * step_size,
                    (-step_size) as usize,
                )
            } else {
                (start, step_size as usize)
            };
            let occupied = (taken - 1) * stride + 1;
            if stride > 1 {
                g = spread(graph, &g, axis, stride, &current);
                current[axis] = occupied;
            }
            before[axis] = lowest as usize;
            after[axis] = shape[axis].saturating_sub(lowest as usize + occupied);
        }
        vjp.full(0, graph.op_pad(&g, &before, &after));
        return Ok(vjp);
    }
    let mut before = vec![0; shape.len()];
    let mut after = vec![0; shape.len()];
    for (axis, start, end, step_size) in spec {
        if step_size != 1 {
            return Err(step.unsupported(" (Slice with a step other than 1 and computed bounds)"));
        }
        before[axis] = start.max(0) as usize;
        after[axis] = shape[axis].saturating_sub(end.max(start).max(0) as usize);
    }
    let before = graph.const_i64(&before.iter().map(|&p| p as i64).collect::<Vec<_>>());
    let (whole, part) = (
        graph.op_shape_of(&node.input[0]),
        graph.add_node("Shape", &[&g], vec![]),
    );
    let rest = graph.add_node("Sub", &[&whole, &part], vec![]);
    let after = graph.add_node("Sub", &[&rest, &before], vec![]);
    let pads = graph.add_node("Concat", &[&before, &after], vec![make_int("axis", 0)]);
    vjp.full(0, graph.add_node("Pad", &[&g, &pads], vec![]));
    Ok(vjp)
}

/// `x` flipped along `axis`, whatever its length.
fn reversed(graph: &mut Graph, x: &str, axis: usize) -> String {
    let (starts, ends, axes, steps) = (
        graph.const_i64(&[-1]),
        graph.const_i64(&[i64::MIN]),
        graph.const_i64(&[axis as i64]),
        graph.const_i64(&[-1]),
    );
    graph.add_node("Slice", &[x, &starts, &ends, &axes, &steps], vec![])
}

/// `x` with `stride - 1` zeros after each element along `axis`, but the last: the element `i`
/// lands at `i * stride`. (`shape`: `x`'s traced shape; the dims after `axis` are fixed.)
fn spread(graph: &mut Graph, x: &str, axis: usize, stride: usize, shape: &[usize]) -> String {
    let rank = shape.len();
    let split = graph.op_unsqueeze(x, &[axis as i64 + 1]);
    let mut after = vec![0; rank + 1];
    after[axis + 1] = stride - 1;
    let padded = graph.op_pad(&split, &vec![0; rank + 1], &after);
    // Dims before the axis are copied (0), the axis merges with the zeros (-1), the rest fixed.
    let target: Vec<i64> = (0..rank)
        .map(|i| match i.cmp(&axis) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => -1,
            std::cmp::Ordering::Greater => shape[i] as i64,
        })
        .collect();
    let target = graph.const_i64(&target);
    let merged = graph.add_node("Reshape", &[&padded, &target], vec![]);
    let occupied = (shape[axis] - 1) * stride + 1;
    graph.op_slice_signed(&merged, axis, 0, occupied as i64)
}

fn pad_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let rank = step.input_shape(graph, 0)?.len();
    if !matches!(
        step.attrs,
        Attrs::Pad {
            constant_mode: true
        }
    ) {
        return Err(step.unsupported(" (only constant-mode Pad)"));
    }
    if node.input.get(3).is_some_and(|a| !a.is_empty()) {
        return Err(step.unsupported(" (Pad with an axes input)"));
    }
    let zero_fill = match node.input.get(2).filter(|v| !v.is_empty()) {
        None => true,
        Some(v) => graph
            .constant(v)
            .is_some_and(|t| t.to_f64_vec().iter().all(|&x| x == 0.0)),
    };
    let pads = graph
        .constant(&node.input[1])
        .map(|t| t.to_i64_vec())
        .filter(|p| p.len() == 2 * rank && p.iter().all(|&x| x >= 0));
    let (Some(pads), true) = (pads, zero_fill) else {
        return Err(step.unsupported(" (Pad needs known, non-negative amounts and a zero fill)"));
    };
    let g = step.grad()?;
    // The cotangent of the input is the unpadded window, bounded by its runtime shape.
    let begins = graph.const_i64(&pads[..rank]);
    let shape = graph.op_shape_of(&node.input[0]);
    let ends = graph.add_node("Add", &[&begins, &shape], vec![]);
    let axes = graph.const_i64(&(0..rank as i64).collect::<Vec<_>>());
    let mut vjp = Vjp::default();
    vjp.full(
        0,
        graph.add_node("Slice", &[&g, &begins, &ends, &axes], vec![]),
    );
    Ok(vjp)
}

/// Why a Gather's indices are not constant: the graph inputs they are computed from, if any.
/// (transformers 5.x's `logits_to_keep` becomes such an input under the TorchScript exporter,
/// and the graph then gathers one position of the logits chosen at run time.)
fn runtime_indices(graph: &Graph, indices: &str) -> String {
    let mut inputs = Vec::new();
    let (mut pending, mut seen) = (vec![indices.to_string()], std::collections::HashSet::new());
    while let Some(value) = pending.pop() {
        if !seen.insert(value.clone()) || seen.len() > 256 {
            continue;
        }
        match graph.producer(&value) {
            Some((_, producer)) => pending.extend(producer.input.iter().cloned()),
            None if graph.declares_input(&value) => inputs.push(value),
            None => {}
        }
    }
    if inputs.is_empty() {
        return " (Gather on the relevance path needs constant indices)".into();
    }
    inputs.sort();
    format!(
        " (Gather on the relevance path needs constant indices; these are computed at run time \
         from graph input '{}': an export that picks positions at run time, as transformers \
         5.x's `logits_to_keep` does when the TorchScript exporter turns it into an input; \
         export a forward that takes the ids alone, see README)",
        inputs.join("', '")
    )
}

/// Gather with constant indices: each index contributes the matching slice of the cotangent
/// (the autodiff stacks pieces into one Concat instead of one padded tensor per index).
fn gather_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let g = step.grad()?;
    let shape = step.input_shape(graph, 0)?;
    let axis = normalize_axis(axis_of(step.attrs), shape.len(), node)?;
    let indices = graph
        .constant(&node.input[1])
        .ok_or_else(|| step.unsupported(&runtime_indices(graph, &node.input[1])))?
        .clone();
    let dim = shape[axis] as i64;
    let normalize = |i: i64| {
        if (-dim..dim).contains(&i) {
            Ok(i.rem_euclid(dim) as usize)
        } else {
            Err(step.unsupported(" (index out of range)"))
        }
    };
    let mut vjp = Vjp::default();
    match indices.shape() {
        [] => {
            let index = normalize(indices.to_i64_vec()[0])?;
            vjp.contributions.push((
                0,
                Contribution::Piece {
                    axis,
                    index,
                    value: g,
                },
            ));
        }
        [_] => {
            for (j, &i) in indices.to_i64_vec().iter().enumerate() {
                let pick = graph.scalar_i64(j as i64);
                let piece =
                    graph.add_node("Gather", &[&g, &pick], vec![make_int("axis", axis as i64)]);
                let index = normalize(i)?;
                vjp.contributions.push((
                    0,
                    Contribution::Piece {
                        axis,
                        index,
                        value: piece,
                    },
                ));
            }
        }
        _ => return Err(step.unsupported(" (Gather with multi-dimensional indices)")),
    }
    Ok(vjp)
}

// Folding of integer shape arithmetic.

/// Reshape, Squeeze, Unsqueeze, Expand of known integers.
fn fold_relayout(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Option<Tensor>> {
    let Some(v) = integer_operands(graph, node) else {
        return Ok(None);
    };
    let t = graph.value_type(&node.output[0])?;
    let x = &v[0];
    if let Some(b) = x.broadcast(IxDyn(&t.shape)) {
        return Ok(Some(Tensor::I64(b.to_owned())));
    }
    reshaped_to_output(graph, node, x.iter().copied().collect())
}

fn fold_gather(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Option<Tensor>> {
    let Some(v) = integer_operands(graph, node) else {
        return Ok(None);
    };
    let [x, idx] = &v[..] else { return Ok(None) };
    let axis = normalize_axis(axis_of(attrs), x.ndim(), node)?;
    let dim = x.shape()[axis] as i64;
    let picks: Option<Vec<usize>> = idx
        .iter()
        .map(|&i| (-dim..dim).contains(&i).then(|| i.rem_euclid(dim) as usize))
        .collect();
    let Some(picks) = picks else {
        return Err(Error::node(node, "constant Gather index out of range"));
    };
    let gathered = x.select(Axis(axis), &picks);
    reshaped_to_output(graph, node, gathered.iter().copied().collect())
}

fn fold_concat(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Option<Tensor>> {
    let Some(parts) = integer_operands(graph, node) else {
        return Ok(None);
    };
    let axis = normalize_axis(axis_of(attrs), parts[0].ndim(), node)?;
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    Ok(ndarray::concatenate(Axis(axis), &views)
        .ok()
        .map(Tensor::I64))
}

fn fold_slice(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Option<Tensor>> {
    let Some(v) = integer_operands(graph, node) else {
        return Ok(None);
    };
    let x: &ArrayD<i64> = &v[0];
    let mut view = x.view();
    let spec = slice_spec(graph, node, attrs, x.shape())?;
    if spec.iter().any(|&(_, _, _, step)| step != 1) {
        return Ok(None);
    }
    for (axis, s, e, st) in spec {
        view.slice_axis_inplace(
            Axis(axis),
            ndarray::Slice::new(s as isize, Some(e as isize), st as isize),
        );
    }
    Ok(Some(Tensor::I64(view.to_owned())))
}

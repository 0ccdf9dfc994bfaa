//! Helpers the op registrations share: broadcasting, axis normalisation, reading Slice bounds,
//! Split sizes and reduction axes, and the bias bookkeeping of VJP rules.
use super::attrs::{Attrs, ReduceAttrs, SplitAttrs};
use crate::error::{Error, Result};
use crate::ir::{Graph, ValueType};
use crate::onnx::proto::NodeProto;

pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i + s.len() >= rank {
            s[i + s.len() - rank]
        } else {
            1
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Resolves a possibly negative `axis` against `rank`: the one place axes are normalised.
pub fn normalize_axis(axis: i64, rank: usize, node: &NodeProto) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r.max(1)).contains(&a) || (r == 0 && a == 0) {
        Ok(a as usize)
    } else {
        Err(Error::node(
            node,
            format!("axis {axis} is out of range for rank {rank}"),
        ))
    }
}

/// The type of input `i` of `node`.
pub fn input_type(graph: &Graph, node: &NodeProto, i: usize) -> Result<ValueType> {
    let name = node
        .input
        .get(i)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::node(node, format!("missing input {i}")))?;
    graph.value_type(name).cloned()
}

/// Start, end (exclusive) and step of one Slice axis, clamped as the ONNX spec says.
pub fn slice_bounds(start: i64, end: i64, step: i64, dim: usize) -> (i64, i64, i64) {
    let d = dim as i64;
    let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
    let fix = |v: i64| if v < 0 { v + d } else { v };
    if step > 0 {
        (clamp(fix(start), 0, d), clamp(fix(end), 0, d), step)
    } else {
        (
            clamp(fix(start), 0, d - 1),
            clamp(fix(end), -1, d - 1),
            step,
        )
    }
}

pub fn slice_len(start: i64, end: i64, step: i64) -> usize {
    if step > 0 {
        ((end - start).max(0) as usize).div_ceil(step as usize)
    } else {
        ((start - end).max(0) as usize).div_ceil((-step) as usize)
    }
}

/// Per-axis (axis, start, end, step) of a Slice node over an input of shape `shape`.
pub fn slice_spec(
    graph: &Graph,
    node: &NodeProto,
    attrs: &Attrs,
    shape: &[usize],
) -> Result<Vec<(usize, i64, i64, i64)>> {
    let konst = |i: usize| -> Result<Option<Vec<i64>>> {
        match node.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => graph
                .constant(name)
                .map(|t| Some(t.to_i64_vec()))
                .ok_or_else(|| {
                    Error::node(
                        node,
                        format!("Slice input '{name}' must be a compile-time constant"),
                    )
                }),
        }
    };
    let (starts, ends, axes, steps) = match attrs {
        Attrs::Slice { starts, ends, axes } => (starts.clone(), ends.clone(), axes.clone(), None),
        _ => (konst(1)?, konst(2)?, konst(3)?, konst(4)?),
    };
    let starts = starts.ok_or_else(|| Error::node(node, "Slice without starts"))?;
    let ends = ends.ok_or_else(|| Error::node(node, "Slice without ends"))?;
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(Error::node(
            node,
            "Slice starts, ends, axes and steps differ in length",
        ));
    }
    let mut spec = Vec::new();
    for i in 0..starts.len() {
        let axis = normalize_axis(axes[i], shape.len(), node)?;
        if steps[i] == 0 {
            return Err(Error::node(node, "Slice step 0"));
        }
        let (s, e, st) = slice_bounds(starts[i], ends[i], steps[i], shape[axis]);
        spec.push((axis, s, e, st));
    }
    Ok(spec)
}

/// Sizes of each output of a Split node along its axis.
pub fn split_sizes(
    graph: &Graph,
    node: &NodeProto,
    split: &SplitAttrs,
    dim: usize,
) -> Result<Vec<usize>> {
    let outputs = node.output.len();
    let sizes = match &split.sizes {
        Some(sizes) => Some(sizes.clone()),
        None => constant_operand(graph, node, 1, "split")?,
    };
    if let Some(sizes) = sizes {
        if sizes.iter().any(|&s| s < 0)
            || sizes.iter().sum::<i64>() != dim as i64
            || sizes.len() != outputs
        {
            return Err(Error::node(
                node,
                format!("split sizes {sizes:?} do not fit dimension {dim}"),
            ));
        }
        return Ok(sizes.iter().map(|&s| s as usize).collect());
    }
    let parts = split.num_outputs.map(|n| n as usize).unwrap_or(outputs);
    if parts == 0 {
        return Err(Error::node(node, "Split into zero parts"));
    }
    let chunk = dim.div_ceil(parts);
    Ok((0..parts)
        .map(|i| chunk.min(dim.saturating_sub(i * chunk)))
        .collect())
}

/// An integer operand the op needs at compile time (axes, split sizes), if it is given.
pub fn constant_operand(
    graph: &Graph,
    node: &NodeProto,
    slot: usize,
    what: &str,
) -> Result<Option<Vec<i64>>> {
    match node.input.get(slot).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(name) => match graph.constant(name) {
            Some(t) => Ok(Some(t.to_i64_vec())),
            None => Err(Error::node(
                node,
                format!("input '{name}' ({what}) must be a compile-time constant"),
            )),
        },
    }
}

/// The axes an op reads from its `axes` attribute or, in later opsets, from input 1.
pub fn axes_operand(
    graph: &Graph,
    node: &NodeProto,
    attribute: &Option<Vec<i64>>,
) -> Result<Option<Vec<i64>>> {
    match attribute {
        Some(axes) => Ok(Some(axes.clone())),
        None => constant_operand(graph, node, 1, "axes"),
    }
}

/// The reduced axes (normalised) and whether they are kept, of a Reduce* node over `shape`.
pub fn reduction(
    graph: &Graph,
    node: &NodeProto,
    reduce: &ReduceAttrs,
    shape: &[usize],
) -> Result<(Vec<usize>, bool)> {
    let rank = shape.len();
    let axes = axes_operand(graph, node, &reduce.axes)?;
    let axes = match axes {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&x| normalize_axis(x, rank, node))
            .collect::<Result<_>>()?,
        _ if reduce.noop_with_empty_axes => vec![],
        _ => (0..rank).collect(),
    };
    Ok((axes, reduce.keepdims))
}

/// `[start, end)` of the dims a Shape node returns, for an input of rank `rank`.
pub fn shape_op_range(start: i64, end: Option<i64>, rank: usize) -> (usize, usize) {
    let r = rank as i64;
    let fix = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    (fix(start), fix(end.unwrap_or(r)))
}

pub fn reshape_target(
    input: &[usize],
    target: &[i64],
    allowzero: bool,
    node: &NodeProto,
) -> Result<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut shape: Vec<usize> = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                shape.push(1);
            }
            0 if !allowzero => shape.push(
                *input
                    .get(i)
                    .ok_or_else(|| Error::node(node, "Reshape 0 beyond input rank"))?,
            ),
            d if d >= 0 => shape.push(d as usize),
            _ => return Err(Error::node(node, format!("bad Reshape target {target:?}"))),
        }
    }
    let known: usize = shape.iter().product();
    if let Some(i) = infer_at {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(Error::node(
                node,
                format!("cannot reshape {input:?} to {target:?}"),
            ));
        }
        shape[i] = total / known;
    } else if known != total {
        return Err(Error::node(
            node,
            format!("cannot reshape {input:?} to {target:?}"),
        ));
    }
    Ok(shape)
}

/// `sum(term * g)` per sample: the relevance a constant additive term absorbs. Axis 0 must be
/// the batch.
pub fn per_sample_dot(
    graph: &mut Graph,
    g: &str,
    term: &str,
    shape: &[usize],
    batch: usize,
    node: &NodeProto,
) -> Result<String> {
    if shape.first() != Some(&batch) {
        return Err(Error::node(node, format!("cannot attribute bias relevance per sample: output shape {shape:?} does not start with the batch size {batch}")));
    }
    // Accumulated in float32, as every relevance output.
    let (g, term) = (graph.op_to_float32(g), graph.op_to_float32(term));
    let product = graph.op_binary("Mul", &g, &term);
    let axes: Vec<i64> = (1..shape.len() as i64).collect();
    if axes.is_empty() {
        return Ok(product);
    }
    Ok(graph.op_reduce_sum(&product, &axes, false))
}

/// One output of the type of input 0 (elementwise unary ops).
pub fn same_as_input(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Vec<Option<ValueType>>> {
    Ok(vec![Some(input_type(graph, node, 0)?)])
}

/// One output: `Ok(vec![Some(t)])`.
pub fn one(t: ValueType) -> Result<Vec<Option<ValueType>>> {
    Ok(vec![Some(t)])
}

/// The values of every input of `node` as integers, when all are known at compile time and the
/// node computes an int64 (shape arithmetic): what integer folding works on.
pub fn integer_operands(graph: &Graph, node: &NodeProto) -> Option<Vec<ndarray::ArrayD<i64>>> {
    use crate::onnx::Tensor;
    let integer_output = node
        .output
        .first()
        .and_then(|o| graph.value_type(o).ok())
        .is_some_and(|t| t.dtype == crate::ir::DType::Int64);
    if !integer_output {
        return None;
    }
    node.input
        .iter()
        .filter(|s| !s.is_empty())
        .map(|name| match graph.constant(name)? {
            Tensor::I64(a) => Some(a.clone()),
            Tensor::F32(a) => Some(a.mapv(|v| v as i64)),
            Tensor::Bool(a) => Some(a.mapv(|v| v as i64)),
        })
        .collect()
}

/// `values` laid out in the static shape of `node`'s first output.
pub fn reshaped_to_output(
    graph: &Graph,
    node: &NodeProto,
    values: Vec<i64>,
) -> Result<Option<crate::onnx::Tensor>> {
    let t = graph.value_type(&node.output[0])?;
    Ok(
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&t.shape), values)
            .ok()
            .map(crate::onnx::Tensor::I64),
    )
}

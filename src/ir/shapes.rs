//! Static type inference for the ops that exported Mamba graphs use, with constant folding of
//! integer arithmetic (the TorchScript exporter computes chunk bounds from `Shape`).
use super::graph::{Graph, ValueType};
use crate::error::{Error, Result};
use crate::onnx::attributes;
use crate::onnx::proto::{tensor_proto::DataType, type_proto, NodeProto, ValueInfoProto};

const FLOAT: i32 = DataType::Float as i32;
const INT64: i32 = DataType::Int64 as i32;
const BOOL: i32 = DataType::Bool as i32;

pub(super) fn infer(graph: &mut Graph) -> Result<()> {
    let declared: Vec<ValueInfoProto> = graph
        .proto
        .input
        .iter()
        .chain(&graph.proto.value_info)
        .chain(&graph.proto.output)
        .cloned()
        .collect();
    let mut hints = std::collections::HashMap::new();
    for vi in &declared {
        if let Some(t) = static_type_with(vi, &graph.symbolic_dims) {
            hints.insert(vi.name().to_string(), t);
        }
    }
    for input in &graph.proto.input {
        if let Some(t) = hints.get(input.name()) {
            check_size(input.name(), &t.shape)?;
            graph
                .types
                .entry(input.name().to_string())
                .or_insert_with(|| t.clone());
        }
    }
    for index in super::topo::order(graph)? {
        let node = graph.node(index).clone();
        match infer_node(graph, &node) {
            Ok(types) => {
                for (name, t) in node.output.iter().zip(types) {
                    if let Some(t) = t {
                        check_size(name, &t.shape)?;
                        graph.types.insert(name.clone(), t);
                    }
                }
            }
            // Ops we cannot infer keep the exporter's declaration, if any; a value whose shape
            // is needed later and unknown is reported then, naming it.
            Err(_) => {
                for name in &node.output {
                    if let Some(t) = hints.get(name) {
                        graph.types.insert(name.clone(), t.clone());
                    }
                }
            }
        }
        super::fold::fold_node(graph, &node)?;
    }
    Ok(())
}

/// The static type declared by a `ValueInfoProto`, if it is a tensor with fixed dims.
pub fn static_type(vi: &ValueInfoProto) -> Option<ValueType> {
    static_type_with(vi, &std::collections::HashMap::new())
}

/// Element type and dims of a declared tensor type; unknown dims are `None`.
fn declared_dims(
    vi: &ValueInfoProto,
    symbols: &std::collections::HashMap<String, usize>,
) -> Option<(i32, Vec<Option<usize>>)> {
    use crate::onnx::proto::tensor_shape_proto::dimension::Value;
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = t.shape.as_ref()?.dim.iter().map(|d| match &d.value {
        Some(Value::DimValue(v)) if *v >= 0 => Some(*v as usize),
        Some(Value::DimParam(name)) => symbols.get(name).copied(),
        _ => None,
    });
    Some((t.elem_type(), dims.collect()))
}

/// Like [`static_type`], reading named (symbolic) dims from `symbols`.
pub fn static_type_with(
    vi: &ValueInfoProto,
    symbols: &std::collections::HashMap<String, usize>,
) -> Option<ValueType> {
    let (dtype, dims) = declared_dims(vi, symbols)?;
    Some(ValueType {
        dtype,
        shape: dims.into_iter().collect::<Option<Vec<_>>>()?,
    })
}

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

/// Per-axis (start, end, step) of a Slice node over an input of shape `shape`.
pub fn slice_spec(
    graph: &Graph,
    node: &NodeProto,
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
    let (starts, ends, axes, steps) = if graph.opset < 10 {
        (
            attributes::ints(node, "starts"),
            attributes::ints(node, "ends"),
            attributes::ints(node, "axes"),
            None,
        )
    } else {
        (konst(1)?, konst(2)?, konst(3)?, konst(4)?)
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
pub fn split_sizes(graph: &Graph, node: &NodeProto, dim: usize) -> Result<Vec<usize>> {
    let outputs = node.output.len();
    if let Some(sizes) = graph.ints_attr_or_input(node, "split", 1)? {
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
    let parts = attributes::int(node, "num_outputs")
        .map(|n| n as usize)
        .unwrap_or(outputs);
    if parts == 0 {
        return Err(Error::node(node, "Split into zero parts"));
    }
    let chunk = dim.div_ceil(parts);
    Ok((0..parts)
        .map(|i| chunk.min(dim.saturating_sub(i * chunk)))
        .collect())
}

fn reduce_axes(graph: &Graph, node: &NodeProto, rank: usize) -> Result<Vec<usize>> {
    let axes_as_input = node.op_type() == "ReduceSum" && graph.opset >= 13 || graph.opset >= 18;
    let axes = if axes_as_input {
        graph.ints_attr_or_input(node, "axes", 1)?
    } else {
        attributes::ints(node, "axes")
    };
    match axes {
        Some(a) if !a.is_empty() => a.iter().map(|&x| normalize_axis(x, rank, node)).collect(),
        _ if attributes::int(node, "noop_with_empty_axes") == Some(1) => Ok(vec![]),
        _ => Ok((0..rank).collect()),
    }
}

pub fn reduction(graph: &Graph, node: &NodeProto, shape: &[usize]) -> Result<(Vec<usize>, bool)> {
    let axes = reduce_axes(graph, node, shape.len())?;
    Ok((axes, attributes::int(node, "keepdims").unwrap_or(1) == 1))
}

fn input_type(graph: &Graph, node: &NodeProto, i: usize) -> Result<ValueType> {
    let name = node
        .input
        .get(i)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::node(node, format!("missing input {i}")))?;
    graph.value_type(name).cloned()
}

fn infer_node(graph: &Graph, node: &NodeProto) -> Result<Vec<Option<ValueType>>> {
    let input = |i| input_type(graph, node, i);
    let one = |t: ValueType| Ok(vec![Some(t)]);
    let op = node.op_type();
    match op {
        "Identity" | "Neg" | "Sqrt" | "Reciprocal" | "Exp" | "Log" | "Sigmoid" | "Softplus"
        | "Tanh" | "Relu" | "Abs" | "Erf" | "Softmax" | "LogSoftmax" | "Swish" => one(input(0)?),
        "Cast" => {
            let to = attributes::int(node, "to")
                .ok_or_else(|| Error::node(node, "Cast without 'to'"))?;
            one(ValueType {
                dtype: to as i32,
                shape: input(0)?.shape,
            })
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Greater" | "Less" | "Equal"
        | "GreaterOrEqual" | "LessOrEqual" | "And" | "Or" => {
            let (a, b) = (input(0)?, input(1)?);
            let shape = broadcast(&a.shape, &b.shape).ok_or_else(|| {
                Error::node(
                    node,
                    format!("cannot broadcast {:?} with {:?}", a.shape, b.shape),
                )
            })?;
            let logical = matches!(
                op,
                "Greater" | "Less" | "Equal" | "GreaterOrEqual" | "LessOrEqual" | "And" | "Or"
            );
            one(ValueType {
                dtype: if logical { BOOL } else { a.dtype },
                shape,
            })
        }
        "Scan" => scan_types(graph, node),
        "Sum" | "Mean" => {
            let first = input(0)?;
            let mut shape = first.shape.clone();
            for i in 1..node.input.len() {
                shape = broadcast(&shape, &input(i)?.shape)
                    .ok_or_else(|| Error::node(node, "operands do not broadcast"))?;
            }
            one(ValueType {
                dtype: first.dtype,
                shape,
            })
        }
        "Where" => {
            let (c, a, b) = (input(0)?, input(1)?, input(2)?);
            let shape = broadcast(&c.shape, &a.shape)
                .and_then(|s| broadcast(&s, &b.shape))
                .ok_or_else(|| Error::node(node, "Where operands do not broadcast"))?;
            one(ValueType {
                dtype: a.dtype,
                shape,
            })
        }
        "MatMul" => {
            let (a, b) = (input(0)?, input(1)?);
            if a.rank() < 2 || b.rank() < 2 {
                return Err(Error::node(
                    node,
                    "MatMul with a 1-D operand is not supported",
                ));
            }
            let (m, k) = (a.shape[a.rank() - 2], a.shape[a.rank() - 1]);
            let (k2, n) = (b.shape[b.rank() - 2], b.shape[b.rank() - 1]);
            if k != k2 {
                return Err(Error::node(
                    node,
                    format!(
                        "MatMul inner dimensions differ: {:?} x {:?}",
                        a.shape, b.shape
                    ),
                ));
            }
            let mut shape = broadcast(&a.shape[..a.rank() - 2], &b.shape[..b.rank() - 2])
                .ok_or_else(|| Error::node(node, "MatMul batch dimensions do not broadcast"))?;
            shape.extend([m, n]);
            one(ValueType {
                dtype: a.dtype,
                shape,
            })
        }
        "Gemm" => {
            let (a, b) = (input(0)?, input(1)?);
            if a.rank() != 2 || b.rank() != 2 {
                return Err(Error::node(node, "Gemm operands must be matrices"));
            }
            let ta = attributes::int(node, "transA").unwrap_or(0) == 1;
            let tb = attributes::int(node, "transB").unwrap_or(0) == 1;
            let m = if ta { a.shape[1] } else { a.shape[0] };
            let n = if tb { b.shape[0] } else { b.shape[1] };
            one(ValueType {
                dtype: a.dtype,
                shape: vec![m, n],
            })
        }
        "Transpose" => {
            let x = input(0)?;
            let perm = attributes::ints(node, "perm")
                .unwrap_or_else(|| (0..x.rank() as i64).rev().collect());
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
            one(ValueType {
                dtype: x.dtype,
                shape,
            })
        }
        "Gather" => {
            let (data, idx) = (input(0)?, input(1)?);
            let axis = normalize_axis(
                attributes::int(node, "axis").unwrap_or(0),
                data.rank(),
                node,
            )?;
            let mut shape = data.shape[..axis].to_vec();
            shape.extend(&idx.shape);
            shape.extend(&data.shape[axis + 1..]);
            one(ValueType {
                dtype: data.dtype,
                shape,
            })
        }
        "GatherElements" => one(ValueType {
            dtype: input(0)?.dtype,
            shape: input(1)?.shape,
        }),
        "Unsqueeze" => {
            let x = input(0)?;
            let axes = graph
                .ints_attr_or_input(node, "axes", 1)?
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
            one(ValueType {
                dtype: x.dtype,
                shape,
            })
        }
        "Squeeze" => {
            let x = input(0)?;
            let shape = match graph.ints_attr_or_input(node, "axes", 1)? {
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
            one(ValueType {
                dtype: x.dtype,
                shape,
            })
        }
        "Reshape" => {
            let x = input(0)?;
            let target = graph
                .constant(&node.input[1])
                .ok_or_else(|| Error::node(node, "Reshape shape must be constant"))?;
            one(ValueType {
                dtype: x.dtype,
                shape: reshape_target(&x.shape, &target.to_i64_vec(), node)?,
            })
        }
        "Flatten" => {
            let x = input(0)?;
            let axis = normalize_axis(
                attributes::int(node, "axis").unwrap_or(1),
                x.rank() + 1,
                node,
            )?;
            let shape = vec![
                x.shape[..axis].iter().product(),
                x.shape[axis..].iter().product(),
            ];
            one(ValueType {
                dtype: x.dtype,
                shape,
            })
        }
        "Concat" => {
            let first = input(0)?;
            let axis = normalize_axis(
                attributes::int(node, "axis").unwrap_or(0),
                first.rank(),
                node,
            )?;
            let mut shape = first.shape.clone();
            shape[axis] = 0;
            for i in 0..node.input.len() {
                let part = input(i)?.shape;
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
            one(ValueType {
                dtype: first.dtype,
                shape,
            })
        }
        "Split" => {
            let x = input(0)?;
            let axis = normalize_axis(attributes::int(node, "axis").unwrap_or(0), x.rank(), node)?;
            let sizes = split_sizes(graph, node, x.shape[axis])?;
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
        "Slice" => {
            let x = input(0)?;
            let mut shape = x.shape.clone();
            for (axis, s, e, st) in slice_spec(graph, node, &x.shape)? {
                shape[axis] = slice_len(s, e, st);
            }
            one(ValueType {
                dtype: x.dtype,
                shape,
            })
        }
        "Conv" => {
            let (x, w) = (input(0)?, input(1)?);
            let spatial = x.rank().saturating_sub(2);
            if w.rank() != x.rank() || spatial == 0 {
                return Err(Error::node(node, "Conv input and weight ranks disagree"));
            }
            if attributes::string(node, "auto_pad").is_some_and(|p| p != "NOTSET") {
                return Err(Error::node(
                    node,
                    "Conv auto_pad is not supported; export with explicit pads",
                ));
            }
            let pads = attributes::ints(node, "pads").unwrap_or_else(|| vec![0; 2 * spatial]);
            let strides = attributes::ints(node, "strides").unwrap_or_else(|| vec![1; spatial]);
            let dilations = attributes::ints(node, "dilations").unwrap_or_else(|| vec![1; spatial]);
            let group = attributes::int(node, "group").unwrap_or(1);
            if pads.len() != 2 * spatial || strides.len() != spatial || dilations.len() != spatial {
                return Err(Error::node(
                    node,
                    "Conv pads, strides or dilations do not match the spatial rank",
                ));
            }
            if strides.iter().chain(&dilations).any(|&v| v < 1)
                || pads.iter().any(|&p| p < 0)
                || group < 1
            {
                return Err(Error::node(
                    node,
                    "Conv strides, dilations and group must be positive, pads non-negative",
                ));
            }
            if x.shape[1] as i64 != w.shape[1] as i64 * group || w.shape[0] as i64 % group != 0 {
                return Err(Error::node(
                    node,
                    format!(
                        "Conv channels do not match: input {:?}, weight {:?}, group {group}",
                        x.shape, w.shape
                    ),
                ));
            }
            let mut shape = vec![x.shape[0], w.shape[0]];
            for i in 0..spatial {
                let padded = x.shape[2 + i] as i64 + pads[i] + pads[i + spatial];
                let span = dilations[i] * (w.shape[2 + i] as i64 - 1) + 1;
                shape.push(((padded - span) / strides[i] + 1).max(0) as usize);
            }
            one(ValueType {
                dtype: x.dtype,
                shape,
            })
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2" => {
            let x = input(0)?;
            let (axes, keep) = reduction(graph, node, &x.shape)?;
            let shape = x
                .shape
                .iter()
                .enumerate()
                .filter_map(|(i, &d)| {
                    if axes.contains(&i) {
                        keep.then_some(1)
                    } else {
                        Some(d)
                    }
                })
                .collect();
            one(ValueType {
                dtype: x.dtype,
                shape,
            })
        }
        "ArgMax" | "ArgMin" => {
            let x = input(0)?;
            let axis = normalize_axis(attributes::int(node, "axis").unwrap_or(0), x.rank(), node)?;
            let keep = attributes::int(node, "keepdims").unwrap_or(1) == 1;
            let shape = x.shape.iter().enumerate().filter_map(|(i, &d)| {
                if i == axis {
                    keep.then_some(1)
                } else {
                    Some(d)
                }
            });
            one(ValueType {
                dtype: INT64,
                shape: shape.collect(),
            })
        }
        "CumSum" => one(input(0)?),
        "Pad" => {
            let x = input(0)?;
            let pads = node
                .input
                .get(1)
                .and_then(|p| graph.constant(p))
                .ok_or_else(|| Error::node(node, "Pad amounts must be known at compile time"))?
                .to_i64_vec();
            if node.input.get(3).is_some_and(|a| !a.is_empty()) || pads.len() != 2 * x.rank() {
                return Err(Error::node(
                    node,
                    "Pad needs one begin and one end per axis",
                ));
            }
            let shape = (0..x.rank())
                .map(|i| {
                    usize::try_from(x.shape[i] as i64 + pads[i] + pads[i + x.rank()])
                        .map_err(|_| Error::node(node, "Pad crops below zero length"))
                })
                .collect::<Result<Vec<_>>>()?;
            one(ValueType {
                dtype: x.dtype,
                shape,
            })
        }
        "Shape" => {
            let x = input(0)?;
            let (start, end) = shape_op_range(node, x.rank());
            one(ValueType {
                dtype: INT64,
                shape: vec![end.saturating_sub(start)],
            })
        }
        "Constant" => {
            let t = super::fold::constant_node_value(node)?;
            one(ValueType {
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
            })
        }
        "ConstantOfShape" => {
            let shape = graph
                .constant(&node.input[0])
                .ok_or_else(|| Error::node(node, "ConstantOfShape needs a constant shape"))?;
            let dtype = attributes::find(node, "value")
                .and_then(|a| a.t.as_ref())
                .map(|t| t.data_type())
                .unwrap_or(FLOAT);
            let shape = shape
                .to_i64_vec()
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect();
            one(ValueType { dtype, shape })
        }
        "Expand" => {
            let x = input(0)?;
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
            one(ValueType {
                dtype: x.dtype,
                shape,
            })
        }
        "Range" => {
            let (s, l, d) = (
                graph.constant(&node.input[0]),
                graph.constant(&node.input[1]),
                graph.constant(&node.input[2]),
            );
            match (s, l, d) {
                (Some(s), Some(l), Some(d)) => {
                    let scalar =
                        |t: &crate::onnx::Tensor| t.to_f64_vec().first().copied().unwrap_or(0.0);
                    let (s, l, d) = (scalar(s), scalar(l), scalar(d));
                    if d == 0.0 || !(s.is_finite() && l.is_finite() && d.is_finite()) {
                        return Err(Error::node(node, "Range needs a finite, non-zero step"));
                    }
                    let n = ((l - s) / d).ceil().max(0.0) as usize;
                    one(ValueType {
                        dtype: input(0)?.dtype,
                        shape: vec![n],
                    })
                }
                _ => Err(Error::node(node, "Range bounds must be constant")),
            }
        }
        _ => Err(Error::node(node, "no shape inference for this op")),
    }
}

pub fn shape_op_range(node: &NodeProto, rank: usize) -> (usize, usize) {
    let r = rank as i64;
    let fix = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    (
        fix(attributes::int(node, "start").unwrap_or(0)),
        fix(attributes::int(node, "end").unwrap_or(r)),
    )
}

pub fn reshape_target(input: &[usize], target: &[i64], node: &NodeProto) -> Result<Vec<usize>> {
    let total: usize = input.iter().product();
    let allowzero = attributes::int(node, "allowzero").unwrap_or(0) == 1;
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

/// Largest tensor the compiler accepts (2^40 elements): beyond that a file's dims are absurd.
const MAX_ELEMENTS: usize = 1 << 40;

pub fn check_size(name: &str, shape: &[usize]) -> Result<()> {
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match count {
        Some(n) if n <= MAX_ELEMENTS => Ok(()),
        _ => Err(Error::tensor(
            name,
            format!("absurd shape {shape:?} (more than 2^40 elements)"),
        )),
    }
}

/// Scan outputs: the final states have the initial states' types; each scan output is the body
/// output's declared type with the iteration count inserted at its scan axis.
fn scan_types(graph: &Graph, node: &NodeProto) -> Result<Vec<Option<ValueType>>> {
    let body = attributes::find(node, "body")
        .and_then(|a| a.g.as_ref())
        .ok_or_else(|| Error::node(node, "Scan without a body"))?;
    let scanned = attributes::int(node, "num_scan_inputs").unwrap_or(0).max(0) as usize;
    let states = node
        .input
        .len()
        .checked_sub(scanned)
        .ok_or_else(|| Error::node(node, "fewer inputs than num_scan_inputs"))?;
    let first_scanned = node
        .input
        .get(states)
        .ok_or_else(|| Error::node(node, "Scan without scan inputs"))?;
    let input_axis = attributes::ints(node, "scan_input_axes")
        .and_then(|a| a.first().copied())
        .unwrap_or(0);
    let shape = graph.shape(first_scanned)?;
    let steps = shape[normalize_axis(input_axis, shape.len(), node)?];
    let output_axes = attributes::ints(node, "scan_output_axes").unwrap_or_default();
    let mut types = Vec::new();
    for i in 0..node.output.len() {
        if i < states {
            types.push(Some(graph.value_type(&node.input[i])?.clone()));
            continue;
        }
        // Dims a body leaves open (the batch axis of a `--dynamic-batch` model's scans) are
        // those of the first initial state.
        let state_shape = graph.shape(&node.input[0])?.to_vec();
        let declared = body
            .output
            .get(i)
            .and_then(|vi| declared_dims(vi, &graph.symbolic_dims))
            .and_then(|(dtype, dims)| {
                let shape = dims
                    .iter()
                    .enumerate()
                    .map(|(k, d)| d.or_else(|| state_shape.get(k).copied()))
                    .collect::<Option<Vec<_>>>();
                shape.map(|shape| ValueType { dtype, shape })
            })
            .ok_or_else(|| Error::node(node, "Scan body outputs need static types"))?;
        let mut shape = declared.shape.clone();
        let axis = normalize_axis(
            output_axes.get(i - states).copied().unwrap_or(0),
            shape.len() + 1,
            node,
        )?;
        shape.insert(axis, steps);
        types.push(Some(ValueType {
            dtype: declared.dtype,
            shape,
        }));
    }
    Ok(types)
}

/// Re-infers a node's output types from its inputs and checks they match the recorded ones.
/// The backward pass calls this for every node it differentiates, so that a file whose declared
/// shapes contradict its ops is refused instead of confusing a vector-Jacobian rule.
pub fn check_node_types(graph: &Graph, node: &NodeProto) -> Result<()> {
    let inferred = infer_node(graph, node)?;
    for (name, t) in node.output.iter().zip(inferred) {
        if let (Some(t), Ok(recorded)) = (t, graph.value_type(name)) {
            if &t != recorded {
                return Err(Error::node(
                    node,
                    format!("output '{name}' is declared {recorded:?} but the op computes {t:?}"),
                ));
            }
        }
    }
    Ok(())
}

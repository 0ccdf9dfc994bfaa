//! Compile-time evaluation of `Constant` nodes and of small integer arithmetic (shape, index and
//! bound computations), so that Slice bounds and Split sizes are known when we differentiate.
use ndarray::{ArrayD, Axis, IxDyn};

use super::graph::Graph;
use super::shapes::{normalize_axis, shape_op_range, slice_spec};
use crate::error::{Error, Result};
use crate::onnx::proto::NodeProto;
use crate::onnx::tensor::tensor_from_proto;
use crate::onnx::{attributes, Tensor};

pub fn constant_node_value(node: &NodeProto) -> Result<Tensor> {
    let attr = node
        .attribute
        .first()
        .ok_or_else(|| Error::node(node, "Constant without a value"))?;
    let scalar_f32 = |v: f32| Tensor::F32(ndarray::arr0(v).into_dyn());
    let vector =
        |v: Vec<i64>| Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D"));
    match attr.name() {
        "value" => {
            let t = attr
                .t
                .as_ref()
                .ok_or_else(|| Error::node(node, "Constant value is not a tensor"))?;
            tensor_from_proto(t)?
                .ok_or_else(|| Error::node(node, "Constant of an unsupported data type"))
        }
        "value_float" => Ok(scalar_f32(attr.f())),
        "value_int" => Ok(Tensor::I64(ndarray::arr0(attr.i()).into_dyn())),
        "value_ints" => Ok(vector(attr.ints.clone())),
        "value_floats" => {
            let v = attr.floats.clone();
            Ok(Tensor::F32(
                ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D"),
            ))
        }
        other => Err(Error::node(
            node,
            format!("Constant attribute '{other}' is not supported"),
        )),
    }
}

/// Records the value of `node`'s outputs when they can be computed at compile time.
pub(super) fn fold_node(graph: &mut Graph, node: &NodeProto) -> Result<()> {
    let value = match node.op_type() {
        "Constant" => Some(constant_node_value(node)?),
        "Shape" => match graph.value_type(&node.input[0]) {
            Ok(t) => {
                let (start, end) = shape_op_range(node, t.rank());
                let dims: Vec<i64> = t.shape[start..end.max(start)]
                    .iter()
                    .map(|&d| d as i64)
                    .collect();
                Some(Tensor::I64(
                    ArrayD::from_shape_vec(IxDyn(&[dims.len()]), dims).expect("1-D"),
                ))
            }
            Err(_) => None,
        },
        _ => {
            let all_known = node
                .input
                .iter()
                .filter(|s| !s.is_empty())
                .all(|s| graph.constant(s).is_some());
            let integer_output = node
                .output
                .first()
                .and_then(|o| graph.value_type(o).ok())
                .is_some_and(|t| t.dtype == 7);
            if all_known && integer_output {
                evaluate_integer(graph, node)?
            } else {
                None
            }
        }
    };
    if let (Some(value), Some(output)) = (value, node.output.first()) {
        graph.constants.insert(output.clone(), value);
    }
    Ok(())
}

fn ints(graph: &Graph, name: &str) -> Option<ArrayD<i64>> {
    match graph.constant(name)? {
        Tensor::I64(a) => Some(a.clone()),
        Tensor::F32(a) => Some(a.mapv(|v| v as i64)),
        Tensor::Bool(a) => Some(a.mapv(|v| v as i64)),
    }
}

fn binary(a: &ArrayD<i64>, b: &ArrayD<i64>, f: fn(i64, i64) -> Option<i64>) -> Option<ArrayD<i64>> {
    let shape = super::shapes::broadcast(a.shape(), b.shape())?;
    let (a, b) = (a.broadcast(IxDyn(&shape))?, b.broadcast(IxDyn(&shape))?);
    let values = a
        .iter()
        .zip(b.iter())
        .map(|(&x, &y)| f(x, y))
        .collect::<Option<Vec<_>>>()?;
    ArrayD::from_shape_vec(IxDyn(&shape), values).ok()
}

/// Evaluates integer-valued ops on constant inputs; `None` leaves the value unknown.
fn evaluate_integer(graph: &Graph, node: &NodeProto) -> Result<Option<Tensor>> {
    let input = |i: usize| node.input.get(i).and_then(|n| ints(graph, n));
    let Some(x) = input(0) else { return Ok(None) };
    let result = match node.op_type() {
        "Identity" | "Cast" => Some(x),
        "Neg" => Some(x.mapv(|v| -v)),
        "Add" | "Sub" | "Mul" | "Div" => {
            let Some(y) = input(1) else { return Ok(None) };
            let f: fn(i64, i64) -> Option<i64> = match node.op_type() {
                "Add" => i64::checked_add,
                "Sub" => i64::checked_sub,
                "Mul" => i64::checked_mul,
                _ => i64::checked_div,
            };
            binary(&x, &y, f)
        }
        "Unsqueeze" | "Squeeze" | "Reshape" | "Expand" => {
            let t = graph.value_type(&node.output[0])?;
            x.broadcast(IxDyn(&t.shape))
                .map(|v| v.to_owned())
                .or_else(|| {
                    ArrayD::from_shape_vec(IxDyn(&t.shape), x.iter().copied().collect()).ok()
                })
        }
        "Gather" => {
            let Some(idx) = input(1) else { return Ok(None) };
            let axis = normalize_axis(attributes::int(node, "axis").unwrap_or(0), x.ndim(), node)?;
            let dim = x.shape()[axis] as i64;
            let picks: Option<Vec<usize>> = idx
                .iter()
                .map(|&i| {
                    if (-dim..dim).contains(&i) {
                        Some(i.rem_euclid(dim) as usize)
                    } else {
                        None
                    }
                })
                .collect();
            let Some(picks) = picks else {
                return Err(Error::node(node, "constant Gather index out of range"));
            };
            let gathered = x.select(Axis(axis), &picks);
            let t = graph.value_type(&node.output[0])?;
            ArrayD::from_shape_vec(IxDyn(&t.shape), gathered.iter().copied().collect()).ok()
        }
        "Concat" => {
            let parts: Option<Vec<ArrayD<i64>>> = (0..node.input.len()).map(input).collect();
            let Some(parts) = parts else { return Ok(None) };
            let axis = normalize_axis(attributes::int(node, "axis").unwrap_or(0), x.ndim(), node)?;
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            ndarray::concatenate(Axis(axis), &views).ok()
        }
        "Slice" => {
            let mut view = x.view();
            let spec = slice_spec(graph, node, x.shape())?;
            if spec.iter().any(|&(_, _, _, step)| step != 1) {
                return Ok(None);
            }
            for (axis, s, e, st) in spec {
                view.slice_axis_inplace(
                    Axis(axis),
                    ndarray::Slice::new(s as isize, Some(e as isize), st as isize),
                );
            }
            Some(view.to_owned())
        }
        _ => None,
    };
    Ok(result.map(Tensor::I64))
}

//! Ops that make values from attributes or shapes: Constant, Shape, ConstantOfShape, Range.
use ndarray::{ArrayD, IxDyn};

use super::attrs::{self, Attrs};
use super::support::{input_type, one, shape_op_range};
use super::{Arity, OpDef};
use crate::error::{Error, Result};
use crate::ir::{DType, Graph, ValueType};
use crate::onnx::proto::NodeProto;
use crate::onnx::tensor::tensor_from_proto;
use crate::onnx::Tensor;

pub(super) static OPS: &[OpDef] = &[
    OpDef::new("Constant", Arity::new(0, 1), infer_constant).with_fold(fold_constant),
    OpDef::new("Shape", Arity::new(1, 1), infer_shape)
        .with_parse(attrs::shape)
        .with_fold(fold_shape),
    OpDef::new("ConstantOfShape", Arity::new(1, 1), infer_constant_of_shape)
        .with_parse(attrs::constant_of_shape)
        .with_fold(fold_constant_of_shape),
    OpDef::new("Range", Arity::new(3, 1), infer_range),
];

/// The value a Constant node holds.
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

fn infer_constant(_: &Graph, node: &NodeProto, _: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let t = constant_node_value(node)?;
    one(ValueType {
        dtype: t.dtype(),
        shape: t.shape().to_vec(),
    })
}

fn fold_constant(_: &Graph, node: &NodeProto, _: &Attrs) -> Result<Option<Tensor>> {
    constant_node_value(node).map(Some)
}

fn infer_shape(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let &Attrs::Shape { start, end } = attrs else {
        unreachable!("parsed by attrs::shape")
    };
    let x = input_type(graph, node, 0)?;
    let (start, end) = shape_op_range(start, end, x.rank());
    one(ValueType {
        dtype: DType::Int64,
        shape: vec![end.saturating_sub(start)],
    })
}

/// The static dims of the input, when its type is known.
fn fold_shape(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Option<Tensor>> {
    let &Attrs::Shape { start, end } = attrs else {
        unreachable!("parsed by attrs::shape")
    };
    let Ok(t) = graph.value_type(&node.input[0]) else {
        return Ok(None);
    };
    let (start, end) = shape_op_range(start, end, t.rank());
    let dims: Vec<i64> = t.shape[start..end.max(start)]
        .iter()
        .map(|&d| d as i64)
        .collect();
    Ok(Some(Tensor::I64(
        ArrayD::from_shape_vec(IxDyn(&[dims.len()]), dims).expect("1-D"),
    )))
}

fn infer_constant_of_shape(
    graph: &Graph,
    node: &NodeProto,
    attrs: &Attrs,
) -> Result<Vec<Option<ValueType>>> {
    let &Attrs::ConstantOfShape { dtype } = attrs else {
        unreachable!("parsed by attrs::constant_of_shape")
    };
    let shape = graph
        .constant(&node.input[0])
        .ok_or_else(|| Error::node(node, "ConstantOfShape needs a constant shape"))?;
    let shape = shape
        .to_i64_vec()
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    one(ValueType { dtype, shape })
}

/// An integer fill of a constant shape (shape arithmetic, as the TorchScript exporter writes
/// `expand(B, -1, -1)`); float fills stay runtime values.
fn fold_constant_of_shape(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Option<Tensor>> {
    let Some(shape) = graph.constant(&node.input[0]) else {
        return Ok(None);
    };
    let fill = match node.attribute.iter().find(|a| a.name() == "value") {
        Some(attr) => match attr.t.as_ref().map(tensor_from_proto).transpose()? {
            Some(Some(Tensor::I64(v))) => v.iter().next().copied(),
            _ => None,
        },
        None => None,
    };
    let Some(fill) = fill else {
        return Ok(None);
    };
    let dims: Vec<usize> = shape
        .to_i64_vec()
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    Ok(Some(Tensor::I64(ArrayD::from_elem(IxDyn(&dims), fill))))
}

fn infer_range(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let bound = |i: usize| graph.constant(&node.input[i]);
    let (Some(s), Some(l), Some(d)) = (bound(0), bound(1), bound(2)) else {
        return Err(Error::node(node, "Range bounds must be constant"));
    };
    let scalar = |t: &Tensor| t.to_f64_vec().first().copied().unwrap_or(0.0);
    let (s, l, d) = (scalar(s), scalar(l), scalar(d));
    if d == 0.0 || !(s.is_finite() && l.is_finite() && d.is_finite()) {
        return Err(Error::node(node, "Range needs a finite, non-zero step"));
    }
    let n = ((l - s) / d).ceil().max(0.0) as usize;
    one(ValueType {
        dtype: input_type(graph, node, 0)?.dtype,
        shape: vec![n],
    })
}

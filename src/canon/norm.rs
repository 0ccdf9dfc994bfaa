//! RMSNorm written as one op: opset-23 `RMSNormalization`, ONNX Runtime's
//! `SimplifiedLayerNormalization` and `SkipSimplifiedLayerNormalization` (what its offline
//! optimiser fuses the decomposed norm into). All become `x * 1/sqrt(mean(x^2) + eps) * scale`,
//! the form the norm rule matches, computed in the op's stash type as the op specifies.
use super::onnx_or_ort_domain;
use crate::error::{Error, Result};
use crate::ir::{DType, Graph};
use crate::onnx::attributes::{self, make_int};
use crate::onnx::proto::NodeProto;

/// How an RMSNorm op normalises: over the axes from `axis` to the last, with `epsilon`, in the
/// float type `stash`.
struct NormSpec {
    axis: i64,
    epsilon: f32,
    stash: DType,
}

impl NormSpec {
    fn of(node: &NodeProto) -> NormSpec {
        NormSpec {
            axis: attributes::int(node, "axis").unwrap_or(-1),
            epsilon: attributes::float(node, "epsilon").unwrap_or(1e-5),
            stash: DType::from_onnx(attributes::int(node, "stash_type").unwrap_or(1) as i32),
        }
    }
}

/// `x` cast to `to` (or `x` itself when it already is).
fn cast_to(graph: &mut Graph, x: &str, to: DType) -> String {
    if graph.dtype_of(x) == to {
        x.to_string()
    } else {
        graph.add_node("Cast", &[x], vec![make_int("to", to.onnx() as i64)])
    }
}

/// `x / sqrt(mean(x^2) + eps)` (as `x * Reciprocal(Sqrt(..))`), times `scale` when given.
fn decomposed(
    graph: &mut Graph,
    node: &NodeProto,
    x: &str,
    scale: Option<&str>,
    spec: &NormSpec,
) -> Result<Option<String>> {
    let dtype = graph.dtype_of(x);
    // Untyped (it reads an op not rewritten yet): a later round will see it typed.
    let Ok(shape) = graph.shape(x) else {
        return Ok(None);
    };
    let rank = shape.len() as i64;
    let first = if spec.axis < 0 {
        spec.axis + rank
    } else {
        spec.axis
    };
    if !(0..rank).contains(&first) {
        return Err(Error::node(
            node,
            format!(
                "normalisation axis {} is out of range for rank {rank}",
                spec.axis
            ),
        ));
    }
    let stash = if spec.stash.is_float() {
        spec.stash
    } else {
        dtype
    };
    let xs = cast_to(graph, x, stash);
    let square = graph.op_binary("Mul", &xs, &xs);
    let axes: Vec<i64> = (first..rank).collect();
    let mean = if graph.opset >= 18 {
        let axes = graph.const_i64(&axes);
        graph.add_node(
            "ReduceMean",
            &[&square, &axes],
            vec![make_int("keepdims", 1)],
        )
    } else {
        graph.add_node(
            "ReduceMean",
            &[&square],
            vec![
                attributes::make_ints("axes", &axes),
                make_int("keepdims", 1),
            ],
        )
    };
    let eps = graph.scalar_float(spec.epsilon as f64, stash);
    let shifted = graph.op_binary("Add", &mean, &eps);
    let root = graph.op_unary("Sqrt", &shifted);
    let inverse = graph.op_unary("Reciprocal", &root);
    let normalised = graph.op_binary("Mul", &xs, &inverse);
    let normalised = cast_to(graph, &normalised, dtype);
    Ok(Some(match scale {
        Some(scale) => graph.op_binary("Mul", &normalised, scale),
        None => normalised,
    }))
}

/// True when only the first of `node`'s outputs (and those in `allowed`) is read.
fn reads_only(graph: &Graph, node: &NodeProto, allowed: &[usize]) -> bool {
    node.output.iter().enumerate().all(|(slot, value)| {
        slot == 0
            || allowed.contains(&slot)
            || value.is_empty()
            || (graph.consumers(value).is_empty() && !graph.output_names().any(|o| o == value))
    })
}

/// `RMSNormalization(X, scale)` (opset 23).
pub fn rms_normalization(graph: &mut Graph, index: usize) -> Result<bool> {
    let node = graph.node(index).clone();
    if !matches!(node.domain(), "" | "ai.onnx") || node.input.len() < 2 {
        return Ok(false);
    }
    let spec = NormSpec::of(&node);
    let Some(y) = decomposed(graph, &node, &node.input[0], Some(&node.input[1]), &spec)? else {
        return Ok(false);
    };
    graph.substitute(&node.output[0], &y);
    Ok(true)
}

/// `SimplifiedLayerNormalization(X, scale)`: the same, when its inverse-deviation output is unread.
pub fn simplified_layer_normalization(graph: &mut Graph, index: usize) -> Result<bool> {
    let node = graph.node(index).clone();
    if !onnx_or_ort_domain(node.domain()) || node.input.len() < 2 || !reads_only(graph, &node, &[])
    {
        return Ok(false);
    }
    let spec = NormSpec::of(&node);
    let Some(y) = decomposed(graph, &node, &node.input[0], Some(&node.input[1]), &spec)? else {
        return Ok(false);
    };
    graph.substitute(&node.output[0], &y);
    Ok(true)
}

/// `SkipSimplifiedLayerNormalization(input, skip, gamma[, bias])`: `s = input + skip (+ bias)`,
/// output 0 the RMSNorm of `s` times gamma, output 3 `s` itself (the residual stream).
pub fn skip_simplified_layer_normalization(graph: &mut Graph, index: usize) -> Result<bool> {
    let node = graph.node(index).clone();
    if node.domain() != "com.microsoft" || node.input.len() < 3 || !reads_only(graph, &node, &[3]) {
        return Ok(false);
    }
    if graph.shape(&node.input[0]).is_err() {
        return Ok(false);
    }
    let mut sum = graph.op_binary("Add", &node.input[0], &node.input[1]);
    if let Some(bias) = node.input.get(3).filter(|b| !b.is_empty()) {
        sum = graph.op_binary("Add", &sum, bias);
    }
    let spec = NormSpec {
        axis: -1,
        ..NormSpec::of(&node)
    };
    let Some(y) = decomposed(graph, &node, &sum, Some(&node.input[2]), &spec)? else {
        return Ok(false);
    };
    graph.substitute(&node.output[0], &y);
    if let Some(residual) = node.output.get(3).filter(|v| !v.is_empty()) {
        graph.substitute(residual, &sum);
    }
    Ok(true)
}

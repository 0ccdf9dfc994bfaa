//! Activations written another way: SiLU as opset-24 `Swish` or as `x / (1 + exp(-x))`, the
//! logistic function as `1 / (1 + exp(-x))`, softplus as `log(1 + exp(x))`.
use super::onnx_or_ort_domain;
use crate::error::Result;
use crate::ir::{is_constant_equal, produced_by, skip_noops, Graph};
use crate::onnx::attributes;

/// `Swish(x, alpha)` (opset 24) and ONNX Runtime's `QuickGelu(x, alpha)` (what its extended
/// optimisation fuses SiLU into, with alpha = 1) = `x * sigmoid(alpha * x)`.
pub fn swish(graph: &mut Graph, index: usize) -> Result<bool> {
    let node = graph.node(index).clone();
    if !onnx_or_ort_domain(node.domain()) || node.input.is_empty() || node.output.is_empty() {
        return Ok(false);
    }
    let x = node.input[0].clone();
    // QuickGelu's default alpha is GELU's 1.702; Swish's is 1.
    let default_alpha = if node.op_type() == "QuickGelu" {
        1.702
    } else {
        1.0
    };
    let alpha = attributes::float(&node, "alpha").unwrap_or(default_alpha);
    let scaled = if alpha == 1.0 {
        x.clone()
    } else {
        graph.op_scale(&x, alpha)
    };
    let sigmoid = graph.op_unary("Sigmoid", &scaled);
    let silu = graph.op_binary("Mul", &x, &sigmoid);
    graph.substitute(&node.output[0], &silu);
    Ok(true)
}

/// `z` when `value` is `1 + exp(-z)` (operands of the Add in either order, the negation as
/// `Neg` or as a multiplication by -1).
fn one_plus_exp_of_negated<'g>(graph: &'g Graph, value: &'g str) -> Option<&'g str> {
    let (_, add) = produced_by(graph, value, "Add")?;
    let exp_slot = (0..2).find(|&slot| is_constant_equal(graph, &add.input[1 - slot], 1.0))?;
    let (_, exp) = produced_by(graph, &add.input[exp_slot], "Exp")?;
    let negated = skip_noops(graph, &exp.input[0]);
    let (_, producer) = graph.producer(negated)?;
    match producer.op_type() {
        "Neg" => Some(skip_noops(graph, &producer.input[0])),
        "Mul" => (0..2)
            .find(|&slot| is_constant_equal(graph, &producer.input[1 - slot], -1.0))
            .map(|slot| skip_noops(graph, &producer.input[slot])),
        _ => None,
    }
}

/// `x / (1 + exp(-x))` = `x * sigmoid(x)` and `1 / (1 + exp(-x))` = `sigmoid(x)`.
pub fn logistic_division(graph: &mut Graph, index: usize) -> Result<bool> {
    let node = graph.node(index).clone();
    let Some(z) = one_plus_exp_of_negated(graph, &node.input[1]).map(str::to_string) else {
        return Ok(false);
    };
    let numerator = skip_noops(graph, &node.input[0]).to_string();
    let replacement = if is_constant_equal(graph, &numerator, 1.0) {
        graph.op_unary("Sigmoid", &z)
    } else if numerator == z {
        let sigmoid = graph.op_unary("Sigmoid", &z);
        graph.op_binary("Mul", &node.input[0], &sigmoid)
    } else {
        return Ok(false);
    };
    graph.substitute(&node.output[0], &replacement);
    Ok(true)
}

/// `log(1 + exp(x))` = `softplus(x)`.
pub fn softplus_from_log(graph: &mut Graph, index: usize) -> Result<bool> {
    let node = graph.node(index).clone();
    let Some((_, add)) = produced_by(graph, &node.input[0], "Add") else {
        return Ok(false);
    };
    let Some(exp_slot) = (0..2).find(|&slot| is_constant_equal(graph, &add.input[1 - slot], 1.0))
    else {
        return Ok(false);
    };
    let Some((_, exp)) = produced_by(graph, &add.input[exp_slot], "Exp") else {
        return Ok(false);
    };
    let x = exp.input[0].clone();
    let softplus = graph.op_unary("Softplus", &x);
    graph.substitute(&node.output[0], &softplus);
    Ok(true)
}

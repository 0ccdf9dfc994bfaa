//! Elementwise ops: unary functions, broadcasting arithmetic, comparisons, Cast and Where.
use ndarray::{ArrayD, IxDyn};

use super::attrs::{self, Attrs};
use super::support::{broadcast, input_type, integer_operands, one, per_sample_dot, same_as_input};
use super::{Arity, Linearity, OpDef, Step, Vjp};
use crate::error::{Error, Result};
use crate::ir::{DType, Graph, ValueType};
use crate::onnx::attributes::make_int;
use crate::onnx::proto::NodeProto;
use crate::onnx::Tensor;

const UNARY: Arity = Arity::new(1, 1);
const BINARY: Arity = Arity::new(2, 1);

pub(super) static OPS: &[OpDef] = &[
    OpDef::new("Identity", UNARY, same_as_input)
        .with_vjp(Linearity::Linear, pass_through)
        .with_fold(fold_identity)
        .recomputable(),
    OpDef::new("Cast", UNARY, infer_cast)
        .with_parse(attrs::cast)
        .with_vjp(Linearity::Linear, cast_back)
        .with_fold(fold_identity)
        .recomputable(),
    OpDef::new("Neg", UNARY, same_as_input)
        .with_vjp(Linearity::Linear, negate)
        .with_fold(fold_neg)
        .recomputable(),
    OpDef::new("Add", BINARY, infer_broadcast)
        .with_vjp(Linearity::Linear, sum_back)
        .with_fold(fold_arithmetic)
        .recomputable(),
    OpDef::new("Sub", BINARY, infer_broadcast)
        .with_vjp(Linearity::Linear, sum_back)
        .with_fold(fold_arithmetic)
        .recomputable(),
    OpDef::new("Sum", UNARY, infer_broadcast).with_vjp(Linearity::Linear, sum_back),
    OpDef::new("Mean", UNARY, infer_broadcast),
    OpDef::new("Mul", BINARY, infer_broadcast)
        .with_vjp(Linearity::Bilinear, product_back)
        .with_fold(fold_arithmetic)
        .recomputable(),
    OpDef::new("Div", BINARY, infer_broadcast)
        .with_vjp(
            Linearity::LinearIn {
                slots: &[0],
                why: "divides by a relevance-carrying tensor and no norm rule covers it",
            },
            quotient_back,
        )
        .with_fold(fold_arithmetic)
        .recomputable(),
    OpDef::new("Pow", BINARY, infer_broadcast).with_vjp(Linearity::NonLinear, power_back),
    OpDef::new("Where", Arity::new(3, 1), infer_where)
        .with_vjp(Linearity::Linear, where_back)
        .with_fold(fold_where),
    OpDef::new("Sigmoid", UNARY, same_as_input)
        .with_vjp(Linearity::NonLinear, sigmoid_back)
        .recomputable(),
    OpDef::new("Exp", UNARY, same_as_input)
        .with_vjp(Linearity::NonLinear, exp_back)
        .recomputable(),
    OpDef::new("Softplus", UNARY, same_as_input)
        .with_vjp(Linearity::NonLinear, softplus_back)
        .recomputable(),
    OpDef::new("Sqrt", UNARY, same_as_input).with_vjp(Linearity::NonLinear, sqrt_back),
    OpDef::new("Reciprocal", UNARY, same_as_input).with_vjp(Linearity::NonLinear, reciprocal_back),
    OpDef::new("Tanh", UNARY, same_as_input).with_vjp(Linearity::NonLinear, tanh_back),
    OpDef::new("Log", UNARY, same_as_input),
    OpDef::new("Relu", UNARY, same_as_input),
    OpDef::new("Abs", UNARY, same_as_input),
    OpDef::new("Erf", UNARY, same_as_input),
    OpDef::new("Swish", UNARY, same_as_input),
    OpDef::new("Max", BINARY, infer_broadcast)
        .with_vjp(Linearity::NonLinear, extremum_back)
        .with_fold(fold_arithmetic)
        .recomputable(),
    OpDef::new("Min", BINARY, infer_broadcast)
        .with_vjp(Linearity::NonLinear, extremum_back)
        .with_fold(fold_arithmetic)
        .recomputable(),
    OpDef::new("Greater", BINARY, infer_comparison),
    OpDef::new("Less", BINARY, infer_comparison),
    OpDef::new("Equal", BINARY, infer_comparison).with_fold(fold_equal),
    OpDef::new("GreaterOrEqual", BINARY, infer_comparison),
    OpDef::new("LessOrEqual", BINARY, infer_comparison),
    OpDef::new("And", BINARY, infer_comparison),
    OpDef::new("Or", BINARY, infer_comparison),
];

fn infer_cast(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let &Attrs::Cast { to } = attrs else {
        unreachable!("parsed by attrs::cast")
    };
    one(ValueType {
        dtype: to,
        shape: input_type(graph, node, 0)?.shape,
    })
}

/// The broadcast type of all inputs, with the first input's element type.
fn infer_broadcast(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let first = input_type(graph, node, 0)?;
    let mut shape = first.shape.clone();
    for i in 1..node.input.len() {
        let other = input_type(graph, node, i)?.shape;
        shape = broadcast(&shape, &other).ok_or_else(|| {
            Error::node(node, format!("cannot broadcast {shape:?} with {other:?}"))
        })?;
    }
    one(ValueType {
        dtype: first.dtype,
        shape,
    })
}

fn infer_comparison(graph: &Graph, node: &NodeProto, a: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let mut types = infer_broadcast(graph, node, a)?;
    if let Some(Some(t)) = types.first_mut() {
        t.dtype = DType::Bool;
    }
    Ok(types)
}

fn infer_where(graph: &Graph, node: &NodeProto, a: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let mut types = infer_broadcast(graph, node, a)?;
    if let Some(Some(t)) = types.first_mut() {
        t.dtype = input_type(graph, node, 1)?.dtype;
    }
    Ok(types)
}

fn pass_through(_: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let mut vjp = Vjp::default();
    vjp.full(0, step.grad()?);
    Ok(vjp)
}

fn cast_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let source = graph.value_type(&node.input[0])?.dtype;
    let g = step.grad()?;
    let mut vjp = Vjp::default();
    if source == graph.value_type(&node.output[0])?.dtype {
        vjp.full(0, g);
    } else {
        vjp.full(
            0,
            graph.add_node("Cast", &[&g], vec![make_int("to", source.onnx() as i64)]),
        );
    }
    Ok(vjp)
}

fn negate(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_unary("Neg", &step.grad()?));
    Ok(vjp)
}

/// Add, Sub and Sum: each carrying operand gets the cotangent (negated for Sub's subtrahend);
/// each constant operand absorbs its share of relevance as a bias.
fn sum_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let g = step.grad()?;
    let out_shape = step.output_shape(graph)?;
    let mut vjp = Vjp::default();
    let mut terms = Vec::new();
    for slot in 0..node.input.len() {
        let negative = node.op_type() == "Sub" && slot == 1;
        if step.carries[slot] {
            let gi = if negative {
                graph.op_unary("Neg", &g)
            } else {
                g.clone()
            };
            let shape = step.input_shape(graph, slot)?;
            vjp.full(slot, graph.op_unbroadcast(&gi, &out_shape, &shape)?);
        } else {
            let term = per_sample_dot(graph, &g, &node.input[slot], &out_shape, step.batch, node)?;
            terms.push(if negative {
                graph.op_unary("Neg", &term)
            } else {
                term
            });
        }
    }
    vjp.bias = (!terms.is_empty()).then(|| graph.op_sum(&terms));
    Ok(vjp)
}

/// `shape` with leading 1s up to `rank` (numpy's alignment).
fn aligned(shape: &[usize], rank: usize) -> Vec<usize> {
    let mut full = vec![1; rank.saturating_sub(shape.len())];
    full.extend_from_slice(shape);
    full
}

/// Whether `g * other`, with g of the output's shape `out` but 1 on the axes `spread` (an
/// unexpanded cotangent), unbroadcasts to the operand of shape `own` as the full product would:
/// on every spread axis the operand must itself broadcast, or the other operand must have the
/// output's size there. Shapes are the traced ones while some dims are symbolic at run time:
/// dims that agree and exceed 1 at the traced size are the same dim at run time, a traced 1 is
/// ambiguous, hence `> 1`.
fn takes_spread(own: &[usize], other: &[usize], out: &[usize], spread: &[usize]) -> bool {
    let rank = out.len();
    let (own, other) = (aligned(own, rank), aligned(other, rank));
    own.len() == rank
        && other.len() == rank
        && spread
            .iter()
            .all(|&r| r < rank && out[r] > 1 && (own[r] == 1 || other[r] == out[r]))
}

/// The transpose of a product multiplies the cotangent by the other operand. An unexpanded
/// cotangent (the transpose of a sum that reads this product, see
/// `Gradients::cotangent_unexpanded`) is multiplied as it is where broadcasting gives the
/// same result: one state-sized write fewer per layer in the GPU form.
fn product_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    if step.stabilized_silu {
        return stabilized_silu_back(graph, step);
    }
    let node = step.node;
    let (g, spread) = step.spread_grad()?;
    let g = if step.half {
        graph.op_scale(&g, 0.5)
    } else {
        g
    };
    let out_shape = step.output_shape(graph)?;
    let dtype = graph.dtype_of(&node.output[0]);
    let carried: Vec<usize> = (0..2).filter(|&slot| step.carries[slot]).collect();
    let mut shapes = Vec::new();
    for slot in 0..2 {
        shapes.push(step.input_shape(graph, slot)?);
    }
    let usable = spread.is_empty()
        || carried
            .iter()
            .all(|&slot| takes_spread(&shapes[slot], &shapes[1 - slot], &out_shape, &spread));
    let (g, g_shape) = if usable {
        let mut g_shape = out_shape.clone();
        for &r in &spread {
            g_shape[r] = 1;
        }
        (g, g_shape)
    } else {
        (graph.op_expand_like(&g, &node.output[0]), out_shape.clone())
    };
    let mut vjp = Vjp::default();
    for slot in carried {
        let other =
            crate::autodiff::remat::recomputed(graph, &node.input[1 - slot], &g, step.recomputed)?;
        let product = graph.op_binary("Mul", &g, &other);
        // The product's own traced shape: the output's, unless g is unexpanded and the other
        // operand broadcasts too.
        let product_shape = broadcast(&g_shape, &shapes[1 - slot]).ok_or_else(|| {
            Error::node(
                node,
                format!(
                    "cotangent of shape {g_shape:?} does not broadcast with {:?}",
                    shapes[1 - slot]
                ),
            )
        })?;
        vjp.full(
            slot,
            graph.op_unbroadcast_as(&product, &product_shape, &shapes[slot], Some(dtype))?,
        );
    }
    Ok(vjp)
}

/// The official SiLU identity rule: the SiLU output `s = x * sigmoid(x)` is seen as
/// `x * c + b` with the frozen multiplier `c = s / st(x)`, `st(x) = x + (1[x = 0] + sign x)·1e-6`
/// (`= x ± 1e-6`, + for x >= 0), and the frozen remainder `b = s - x * c`, whose relevance
/// `sum(g * b)` is absorbed like a bias's: conservation stays exact.
fn stabilized_silu_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let mut vjp = Vjp::default();
    let Some(x_slot) = (0..2).find(|&slot| step.carries[slot]) else {
        return Ok(vjp);
    };
    // Full-size: the backward loop hands unexpanded cotangents to plain products only.
    let g = step.grad()?;
    let out_shape = step.output_shape(graph)?;
    let (x, silu) = (node.input[x_slot].clone(), node.output[0].clone());
    // st(x) = x + 1e-6 * (2 * 1[x >= 0] - 1), in x's type: the sign is exactly +-1, so x gets
    // one rounding, as in the official code. (A Where with scalar branches is slow.)
    let zero = graph.scalar_like(0.0, &x);
    let non_negative = graph.op_binary("GreaterOrEqual", &x, &zero);
    let dtype = graph.dtype_of(&x);
    let indicator = graph.add_node(
        "Cast",
        &[&non_negative],
        vec![make_int("to", dtype.onnx() as i64)],
    );
    let (two, one, eps) = (
        graph.scalar_like(2.0, &x),
        graph.scalar_like(1.0, &x),
        graph.scalar_like(1e-6, &x),
    );
    let doubled = graph.op_binary("Mul", &indicator, &two);
    let sign = graph.op_binary("Sub", &doubled, &one);
    let offset = graph.op_binary("Mul", &sign, &eps);
    let stabilized = graph.op_binary("Add", &x, &offset);
    let multiplier = graph.op_binary("Div", &silu, &stabilized);
    let linear_part = graph.op_binary("Mul", &x, &multiplier);
    let remainder = graph.op_binary("Sub", &silu, &linear_part);
    let gx = graph.op_binary("Mul", &g, &multiplier);
    let x_shape = graph.shape(&x)?.to_vec();
    vjp.full(x_slot, graph.op_unbroadcast(&gx, &out_shape, &x_shape)?);
    vjp.bias = Some(per_sample_dot(
        graph, &g, &remainder, &out_shape, step.batch, node,
    )?);
    Ok(vjp)
}

fn quotient_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let g = step.grad()?;
    let out_shape = step.output_shape(graph)?;
    let b = &node.input[1];
    let mut vjp = Vjp::default();
    if step.carries[0] {
        // A large frozen denominator made from small values (the parallel scan's growth) is
        // recomputed here rather than kept from the forward pass (see `remat`).
        let b = crate::autodiff::remat::recomputed(graph, b, &g, step.recomputed)?;
        let q = graph.op_binary("Div", &g, &b);
        let shape = step.input_shape(graph, 0)?;
        vjp.full(0, graph.op_unbroadcast(&q, &out_shape, &shape)?);
    }
    if step.carries[1] {
        let q = graph.op_binary("Div", &node.output[0], b);
        let gq = graph.op_binary("Mul", &g, &q);
        let neg = graph.op_unary("Neg", &gq);
        let shape = step.input_shape(graph, 1)?;
        vjp.full(1, graph.op_unbroadcast(&neg, &out_shape, &shape)?);
    }
    Ok(vjp)
}

fn power_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    if step.carries[1] {
        return Err(step.unsupported(" (relevance through the exponent)"));
    }
    let exponent = graph
        .constant(&node.input[1])
        .filter(|t| t.shape().iter().product::<usize>() == 1)
        .map(|t| t.to_f64_vec()[0] as f32)
        .ok_or_else(|| step.unsupported(" (Pow needs a constant scalar exponent)"))?;
    let g = step.grad()?;
    let e1 = graph.scalar_like(exponent as f64 - 1.0, &node.input[0]);
    let p = graph.op_binary("Pow", &node.input[0], &e1);
    let scaled = graph.op_scale(&p, exponent);
    let prod = graph.op_binary("Mul", &g, &scaled);
    let (out_shape, shape) = (step.output_shape(graph)?, step.input_shape(graph, 0)?);
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_unbroadcast(&prod, &out_shape, &shape)?);
    Ok(vjp)
}

fn where_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let g = step.grad()?;
    let out_shape = step.output_shape(graph)?;
    let zero = graph.scalar_like(0.0, &g);
    let mut vjp = Vjp::default();
    for (slot, keep_where_true) in [(1, true), (2, false)] {
        if step.carries[slot] {
            let picked = if keep_where_true {
                graph.add_node("Where", &[&node.input[0], &g, &zero], vec![])
            } else {
                graph.add_node("Where", &[&node.input[0], &zero, &g], vec![])
            };
            let shape = step.input_shape(graph, slot)?;
            vjp.full(slot, graph.op_unbroadcast(&picked, &out_shape, &shape)?);
        }
    }
    Ok(vjp)
}

// Exact derivatives of the non-linear ops: used by `--rules gi` and rule ablations.

/// Max / Min of two operands: the cotangent goes to the operand that was picked (the first on
/// ties).
fn extremum_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    if node.input.len() != 2 {
        return Err(step.unsupported(" (only two operands)"));
    }
    let g = step.grad()?;
    let out_shape = step.output_shape(graph)?;
    let compare = if node.op_type() == "Max" {
        "GreaterOrEqual"
    } else {
        "LessOrEqual"
    };
    let first = graph.add_node(compare, &[&node.input[0], &node.input[1]], vec![]);
    let zero = graph.scalar_like(0.0, &g);
    let mut vjp = Vjp::default();
    for slot in [0, 1] {
        if step.carries[slot] {
            let (when_first, otherwise) = if slot == 0 {
                (g.as_str(), zero.as_str())
            } else {
                (zero.as_str(), g.as_str())
            };
            let picked = graph.add_node("Where", &[&first, when_first, otherwise], vec![]);
            let shape = step.input_shape(graph, slot)?;
            vjp.full(slot, graph.op_unbroadcast(&picked, &out_shape, &shape)?);
        }
    }
    Ok(vjp)
}

/// `g * d`, where `d` is the local derivative built by `derivative` from the node.
fn chain(
    graph: &mut Graph,
    step: &mut Step,
    derivative: fn(&mut Graph, &NodeProto) -> String,
) -> Result<Vjp> {
    let g = step.grad()?;
    let d = derivative(graph, step.node);
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_binary("Mul", &g, &d));
    Ok(vjp)
}

fn sigmoid_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    chain(graph, step, |graph, node| {
        let y = &node.output[0];
        let one = graph.scalar_like(1.0, y);
        let rest = graph.op_binary("Sub", &one, y);
        graph.op_binary("Mul", y, &rest)
    })
}

fn exp_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    chain(graph, step, |_, node| node.output[0].clone())
}

fn softplus_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    chain(graph, step, |graph, node| {
        graph.op_unary("Sigmoid", &node.input[0])
    })
}

fn sqrt_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let g = step.grad()?;
    let half = graph.op_scale(&g, 0.5);
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_binary("Div", &half, &step.node.output[0]));
    Ok(vjp)
}

fn reciprocal_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let g = step.grad()?;
    let y = &step.node.output[0];
    let sq = graph.op_binary("Mul", y, y);
    let gsq = graph.op_binary("Mul", &g, &sq);
    let mut vjp = Vjp::default();
    vjp.full(0, graph.op_unary("Neg", &gsq));
    Ok(vjp)
}

fn tanh_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    chain(graph, step, |graph, node| {
        let y = &node.output[0];
        let sq = graph.op_binary("Mul", y, y);
        let one = graph.scalar_like(1.0, y);
        graph.op_binary("Sub", &one, &sq)
    })
}

// Folding of integer shape arithmetic.

fn fold_identity(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Option<Tensor>> {
    Ok(integer_operands(graph, node).map(|mut v| Tensor::I64(v.swap_remove(0))))
}

fn fold_neg(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Option<Tensor>> {
    Ok(integer_operands(graph, node).map(|v| Tensor::I64(v[0].mapv(|x| -x))))
}

/// Int64 values of `names` known at compile time (unlike `integer_operands`, a float or
/// boolean constant is not one).
fn exact_integers(graph: &Graph, names: &[String]) -> Option<Vec<ArrayD<i64>>> {
    names
        .iter()
        .map(|name| match graph.constant(name)? {
            Tensor::I64(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

/// The operands broadcast to their common shape (numpy rules), or `None` when they do not
/// broadcast or are not `N` of them.
fn broadcast_all<T, const N: usize>(
    operands: &[ArrayD<T>],
) -> Option<(Vec<usize>, [ndarray::ArrayViewD<'_, T>; N])> {
    if operands.len() != N {
        return None;
    }
    let shape = operands
        .iter()
        .try_fold(vec![], |shape: Vec<usize>, a| broadcast(&shape, a.shape()))?;
    let views: Vec<_> = operands
        .iter()
        .map(|a| a.broadcast(IxDyn(&shape)))
        .collect::<Option<_>>()?;
    Some((shape, views.try_into().ok()?))
}

/// `Equal` of integer shape values (the TorchScript exporter's `expand(B, -1, -1)` writes the
/// -1 substitution with it).
fn fold_equal(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Option<Tensor>> {
    let Some(v) = exact_integers(graph, &node.input) else {
        return Ok(None);
    };
    let Some((shape, [a, b])) = broadcast_all(&v) else {
        return Ok(None);
    };
    let values: Vec<bool> = a.iter().zip(b.iter()).map(|(x, y)| x == y).collect();
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), values)
        .ok()
        .map(Tensor::Bool))
}

/// `Where` choosing between integer shape values by a constant condition (0 or 1 here).
fn fold_where(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Option<Tensor>> {
    let Some(v) = integer_operands(graph, node) else {
        return Ok(None);
    };
    let Some((shape, [c, x, y])) = broadcast_all(&v) else {
        return Ok(None);
    };
    let values: Vec<i64> = c
        .iter()
        .zip(x.iter().zip(y.iter()))
        .map(|(&c, (&x, &y))| if c != 0 { x } else { y })
        .collect();
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), values)
        .ok()
        .map(Tensor::I64))
}

fn fold_arithmetic(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Option<Tensor>> {
    let Some(v) = integer_operands(graph, node) else {
        return Ok(None);
    };
    let f: fn(i64, i64) -> Option<i64> = match node.op_type() {
        "Add" => i64::checked_add,
        "Sub" => i64::checked_sub,
        "Mul" => i64::checked_mul,
        "Min" => |x: i64, y: i64| Some(x.min(y)),
        "Max" => |x: i64, y: i64| Some(x.max(y)),
        _ => i64::checked_div,
    };
    let Some((shape, [a, b])) = broadcast_all(&v) else {
        return Ok(None);
    };
    let values: Option<Vec<i64>> = a.iter().zip(b.iter()).map(|(&x, &y)| f(x, y)).collect();
    Ok(values
        .and_then(|v| ArrayD::from_shape_vec(IxDyn(&shape), v).ok())
        .map(Tensor::I64))
}

//! Linear layers: MatMul, Gemm and Conv.
use super::attrs::{self, Attrs, ConvAttrs, EinsumSpec};
use super::support::{broadcast, input_type, one, per_sample_dot};
use super::{Arity, Linearity, OpDef, Step, Vjp};
use crate::error::{Error, Result};
use crate::ir::{Graph, ValueType};
use crate::onnx::attributes::{make_int, make_ints, make_string};
use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto, NodeProto};

const WEIGHTS: &str = "carries relevance through its weights, which is not linear in the input";

pub(super) static OPS: &[OpDef] = &[
    OpDef::new("MatMul", Arity::new(2, 1), infer_matmul).with_vjp(Linearity::Bilinear, matmul_back),
    OpDef::new("Gemm", Arity::new(2, 1), infer_gemm)
        .with_parse(attrs::gemm)
        .with_vjp(
            Linearity::LinearIn {
                slots: &[0, 2],
                why: WEIGHTS,
            },
            gemm_back,
        ),
    OpDef::new("Einsum", Arity::new(1, 1), infer_einsum)
        .with_parse(attrs::einsum)
        .with_vjp(Linearity::Bilinear, einsum_back),
    OpDef::new("Conv", Arity::new(2, 1), infer_conv)
        .with_parse(attrs::conv)
        .with_vjp(
            Linearity::LinearIn {
                slots: &[0],
                why: WEIGHTS,
            },
            conv_back,
        ),
];

fn infer_matmul(graph: &Graph, node: &NodeProto, _: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let (a, b) = (input_type(graph, node, 0)?, input_type(graph, node, 1)?);
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

fn infer_gemm(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let Attrs::Gemm(gemm) = attrs else {
        unreachable!("parsed by attrs::gemm")
    };
    let (a, b) = (input_type(graph, node, 0)?, input_type(graph, node, 1)?);
    if a.rank() != 2 || b.rank() != 2 {
        return Err(Error::node(node, "Gemm operands must be matrices"));
    }
    let m = if gemm.trans_a { a.shape[1] } else { a.shape[0] };
    let n = if gemm.trans_b { b.shape[0] } else { b.shape[1] };
    one(ValueType {
        dtype: a.dtype,
        shape: vec![m, n],
    })
}

fn infer_conv(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let Attrs::Conv(conv) = attrs else {
        unreachable!("parsed by attrs::conv")
    };
    let (x, w) = (input_type(graph, node, 0)?, input_type(graph, node, 1)?);
    let spatial = x.rank().saturating_sub(2);
    if w.rank() != x.rank() || spatial == 0 {
        return Err(Error::node(node, "Conv input and weight ranks disagree"));
    }
    if conv.auto_pad.is_some() {
        return Err(Error::node(
            node,
            "Conv auto_pad is not supported; export with explicit pads",
        ));
    }
    let (pads, strides, dilations) = conv.geometry(spatial);
    let group = conv.group;
    if pads.len() != 2 * spatial || strides.len() != spatial || dilations.len() != spatial {
        return Err(Error::node(
            node,
            "Conv pads, strides or dilations do not match the spatial rank",
        ));
    }
    if strides.iter().chain(&dilations).any(|&v| v < 1) || pads.iter().any(|&p| p < 0) || group < 1
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

/// True when `value` is a constant column of ones `[n, 1]`: a MatMul by it sums its other
/// operand's last axis (`Graph::op_sum_last_axis`).
fn is_ones_column(graph: &Graph, value: &str) -> bool {
    graph
        .constant(value)
        .is_some_and(|t| matches!(t.shape(), [_, 1]) && t.to_f64_vec().iter().all(|&x| x == 1.0))
}

fn matmul_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let g = step.grad()?;
    let out_shape = step.output_shape(graph)?;
    let (a_shape, b_shape) = (step.input_shape(graph, 0)?, step.input_shape(graph, 1)?);
    let mut vjp = Vjp::default();
    if step.carries[0] && is_ones_column(graph, &node.input[1]) {
        // A sum over a's last axis: its transpose is g `[.., M, 1]` broadcast along that axis
        // (a's other dims are g's: b is 2-D), left to the consumer, as ReduceSum's is. A
        // MatMul with `ones[1, n]` would write a's full size; a product reading a takes g as
        // it is (`Gradients::cotangent_unexpanded`).
        vjp.spread(0, g.clone(), vec![a_shape.len() - 1]);
    } else if step.carries[0] {
        let bt = graph.op_transpose_last_two(&node.input[1], b_shape.len());
        let ga = graph.op_binary("MatMul", &g, &bt);
        let mut ga_shape = out_shape.clone();
        *ga_shape.last_mut().expect("rank >= 2") = a_shape[a_shape.len() - 1];
        vjp.full(0, graph.op_unbroadcast(&ga, &ga_shape, &a_shape)?);
    }
    if step.carries[1] {
        let at = graph.op_transpose_last_two(&node.input[0], a_shape.len());
        let gb = graph.op_binary("MatMul", &at, &g);
        let mut gb_shape = out_shape.clone();
        let r = gb_shape.len();
        gb_shape[r - 2] = b_shape[b_shape.len() - 2];
        vjp.full(1, graph.op_unbroadcast(&gb, &gb_shape, &b_shape)?);
    }
    Ok(vjp)
}

fn gemm_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let &Attrs::Gemm(gemm) = step.attrs else {
        unreachable!("parsed by attrs::gemm")
    };
    let g = step.grad()?;
    let out_shape = step.output_shape(graph)?;
    let (ta, tb) = (gemm.trans_a as i64, gemm.trans_b as i64);
    let product = |graph: &mut Graph, x: &str, y: &str, t1: i64, t2: i64| {
        graph.add_node(
            "Gemm",
            &[x, y],
            vec![
                make_int("transA", t1),
                make_int("transB", t2),
                alpha_attr(gemm.alpha),
            ],
        )
    };
    let (a, b) = (node.input[0].clone(), node.input[1].clone());
    let mut vjp = Vjp::default();
    if step.carries[0] {
        let ga = if ta == 0 {
            product(graph, &g, &b, 0, 1 - tb)
        } else {
            product(graph, &b, &g, tb, 1)
        };
        vjp.full(0, ga);
    }
    if step.carries[1] {
        let gb = if tb == 0 {
            product(graph, &a, &g, 1 - ta, 0)
        } else {
            product(graph, &g, &a, 1, ta)
        };
        vjp.full(1, gb);
    }
    if let Some(c) = node.input.get(2).filter(|c| !c.is_empty()) {
        let scaled = if gemm.beta == 1.0 {
            g.clone()
        } else {
            graph.op_scale(&g, gemm.beta)
        };
        if step.carries[2] {
            let shape = step.input_shape(graph, 2)?;
            vjp.full(2, graph.op_unbroadcast(&scaled, &out_shape, &shape)?);
        } else {
            vjp.bias = Some(per_sample_dot(
                graph, &scaled, c, &out_shape, step.batch, node,
            )?);
        }
    }
    Ok(vjp)
}

fn alpha_attr(alpha: f32) -> AttributeProto {
    AttributeProto {
        name: Some("alpha".into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(alpha),
        ..Default::default()
    }
}

fn conv_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let Attrs::Conv(conv) = step.attrs else {
        unreachable!("parsed by attrs::conv")
    };
    if step.carries.get(1).copied().unwrap_or(false) {
        return Err(step.unsupported(" (relevance through Conv weights)"));
    }
    if let Some(gamma) = step.gamma {
        return conv_gamma_back(graph, step, conv, gamma);
    }
    let g = step.grad()?;
    let out_shape = step.output_shape(graph)?;
    let mut vjp = Vjp::default();
    if step.carries[0] {
        let x_shape = step.input_shape(graph, 0)?;
        vjp.full(
            0,
            conv_input_gradient(graph, node, conv, &g, &node.input[1], &x_shape, &out_shape)?,
        );
    }
    if let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) {
        let mut bshape = vec![1; out_shape.len()];
        bshape[1] = out_shape[1];
        let b4 = graph.op_reshape(b, &bshape);
        vjp.bias = Some(per_sample_dot(
            graph, &g, &b4, &out_shape, step.batch, node,
        )?);
    }
    Ok(vjp)
}

/// LRP-gamma through a Conv (the patch embedding of an image model), sign-aware as the
/// official MambaLRP `ModifiedConv`: an output above 1e-6 spreads its relevance over the
/// contributions of its sign, with positive weights (on positive inputs; negative weights on
/// negative inputs) counted `1 + gamma` times, and an output below it the other way round. In
/// autograd terms the output is `zp * sg(z / zp)`, with `zp` the sum of four modified
/// convolutions; the forward value stays `z`. The modified biases absorb their share.
fn conv_gamma_back(
    graph: &mut Graph,
    step: &mut Step,
    conv: &ConvAttrs,
    gamma: f32,
) -> Result<Vjp> {
    let node = step.node;
    let g = step.grad()?;
    let (x, z) = (node.input[0].clone(), node.output[0].clone());
    let (x_shape, z_shape) = (step.input_shape(graph, 0)?, step.output_shape(graph)?);
    // v + gamma * max(v, 0) and v + gamma * min(v, 0), for weights and biases alike.
    let weighted = |graph: &mut Graph, v: &str| {
        let positive = graph.op_unary("Relu", v);
        let negative = graph.op_binary("Sub", v, &positive);
        let gain = graph.scalar_like(gamma as f64, v);
        let up = |graph: &mut Graph, part: &str| {
            let extra = graph.op_binary("Mul", part, &gain);
            graph.op_binary("Add", v, &extra)
        };
        (up(graph, &positive), up(graph, &negative))
    };
    let (w_pos, w_neg) = weighted(graph, &node.input[1]);
    let bias = node.input.get(2).filter(|b| !b.is_empty()).cloned();
    let (b_pos, b_neg) = match &bias {
        Some(b) => {
            let (p, n) = weighted(graph, b);
            (Some(p), Some(n))
        }
        None => (None, None),
    };
    let x_pos = graph.op_unary("Relu", &x);
    let x_neg = graph.op_binary("Sub", &x, &x_pos);
    let convolve = |graph: &mut Graph, input: &str, w: &str, b: Option<&String>| {
        let mut operands = vec![input, w];
        if let Some(b) = b {
            operands.push(b);
        }
        graph.add_node("Conv", &operands, node.attribute.clone())
    };
    let zp_pos = {
        let a = convolve(graph, &x_pos, &w_pos, b_pos.as_ref());
        let b = convolve(graph, &x_neg, &w_neg, None);
        graph.op_binary("Add", &a, &b)
    };
    let zp_neg = {
        let a = convolve(graph, &x_pos, &w_neg, b_neg.as_ref());
        let b = convolve(graph, &x_neg, &w_pos, None);
        graph.op_binary("Add", &a, &b)
    };
    let threshold = graph.scalar_like(1e-6, &z);
    let mask = |graph: &mut Graph, op: &str| {
        let m = graph.op_binary(op, &z, &threshold);
        let to = graph.dtype_of(&z).onnx() as i64;
        graph.add_node("Cast", &[&m], vec![make_int("to", to)])
    };
    let (above, below) = (mask(graph, "Greater"), mask(graph, "Less"));
    let zp = {
        let a = graph.op_binary("Mul", &zp_pos, &above);
        let b = graph.op_binary("Mul", &zp_neg, &below);
        graph.op_binary("Add", &a, &b)
    };
    // zp is 0 only where every contribution vanishes (or z is exactly the threshold): no
    // relevance flows there, instead of a 0/0.
    let zero = graph.scalar_like(0.0, &zp);
    let one = graph.scalar_like(1.0, &zp);
    let vanishes = graph.op_binary("Equal", &zp, &zero);
    let safe = graph.add_node("Where", &[&vanishes, &one, &zp], vec![]);
    let ratio = graph.op_binary("Div", &z, &safe);
    let kept = graph.add_node("Where", &[&vanishes, &zero, &ratio], vec![]);
    let s = graph.op_binary("Mul", &g, &kept);
    let s_pos = graph.op_binary("Mul", &s, &above);
    let s_neg = graph.op_binary("Mul", &s, &below);
    let mut vjp = Vjp::default();
    if step.carries[0] {
        let back = |graph: &mut Graph, s: &str, w: &str| {
            conv_input_gradient(graph, node, conv, s, w, &x_shape, &z_shape)
        };
        let on_positive = {
            let a = back(graph, &s_pos, &w_pos)?;
            let b = back(graph, &s_neg, &w_neg)?;
            graph.op_binary("Add", &a, &b)
        };
        let on_negative = {
            let a = back(graph, &s_pos, &w_neg)?;
            let b = back(graph, &s_neg, &w_pos)?;
            graph.op_binary("Add", &a, &b)
        };
        let zero_x = graph.scalar_like(0.0, &x);
        let positive_x = graph.op_binary("Greater", &x, &zero_x);
        vjp.full(
            0,
            graph.add_node("Where", &[&positive_x, &on_positive, &on_negative], vec![]),
        );
    }
    if let (Some(b_pos), Some(b_neg)) = (b_pos, b_neg) {
        let mut bshape = vec![1; z_shape.len()];
        bshape[1] = z_shape[1];
        let mut terms = vec![];
        for (s, b) in [(&s_pos, &b_pos), (&s_neg, &b_neg)] {
            let b = graph.op_reshape(b, &bshape);
            terms.push(per_sample_dot(graph, s, &b, &z_shape, step.batch, node)?);
        }
        vjp.bias = Some(graph.op_sum(&terms));
    }
    Ok(vjp)
}

/// Cotangent of a Conv input: the transposed convolution with `weight` (the Conv's own, or
/// a rule's modified copy of the same shape).
fn conv_input_gradient(
    graph: &mut Graph,
    node: &NodeProto,
    conv: &ConvAttrs,
    g: &str,
    weight: &str,
    x_shape: &[usize],
    y_shape: &[usize],
) -> Result<String> {
    let spatial = x_shape.len() - 2;
    let w_shape = graph.shape(&node.input[1])?.to_vec();
    let (pads, strides, dilations) = conv.geometry(spatial);
    let output_padding: Vec<i64> = (0..spatial)
        .map(|i| {
            let produced = (y_shape[2 + i] as i64 - 1) * strides[i]
                + dilations[i] * (w_shape[2 + i] as i64 - 1)
                + 1
                - pads[i]
                - pads[i + spatial];
            x_shape[2 + i] as i64 - produced
        })
        .collect();
    if output_padding.iter().any(|&p| p < 0) {
        return Err(Error::node(
            node,
            "cannot invert this Conv's shape arithmetic",
        ));
    }
    let kernel: Vec<i64> = w_shape[2..].iter().map(|&k| k as i64).collect();
    let mut attrs = vec![
        make_int("group", conv.group),
        make_ints("kernel_shape", &kernel),
        make_ints("pads", &pads),
        make_ints("strides", &strides),
        make_ints("dilations", &dilations),
    ];
    if output_padding.iter().any(|&p| p > 0) {
        attrs.push(make_ints("output_padding", &output_padding));
    }
    Ok(graph.add_node("ConvTranspose", &[g, weight], attrs))
}

/// The size of every subscript letter, checked to agree across operands.
fn einsum_dims(
    graph: &Graph,
    node: &NodeProto,
    spec: &EinsumSpec,
) -> Result<std::collections::HashMap<char, usize>> {
    let mut dims = std::collections::HashMap::new();
    for (i, term) in spec.operands.iter().enumerate() {
        let shape = input_type(graph, node, i)?.shape;
        if shape.len() != term.len() {
            return Err(Error::node(
                node,
                format!("Einsum operand {i} has shape {shape:?}, but its subscripts are {term:?}"),
            ));
        }
        for (&letter, &dim) in term.iter().zip(&shape) {
            if *dims.entry(letter).or_insert(dim) != dim {
                return Err(Error::node(
                    node,
                    format!("Einsum subscript '{letter}' has two sizes"),
                ));
            }
        }
    }
    Ok(dims)
}

fn infer_einsum(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let Attrs::Einsum(spec) = attrs else {
        unreachable!("parsed by attrs::einsum")
    };
    let dims = einsum_dims(graph, node, spec)?;
    one(ValueType {
        dtype: input_type(graph, node, 0)?.dtype,
        shape: spec.output.iter().map(|c| dims[c]).collect(),
    })
}

/// The cotangent of operand i is the Einsum of the output cotangent with the other operands,
/// written to operand i's subscripts; letters only operand i has (summed away in the forward
/// pass) are restored by broadcasting.
fn einsum_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let Attrs::Einsum(spec) = step.attrs else {
        unreachable!("parsed by attrs::einsum")
    };
    let g = step.grad()?;
    let mut vjp = Vjp::default();
    for slot in (0..node.input.len()).filter(|&slot| step.carries[slot]) {
        let own = &spec.operands[slot];
        if (1..own.len()).any(|k| own[..k].contains(&own[k])) {
            return Err(step.unsupported(" (Einsum with a repeated subscript in one operand)"));
        }
        let seen_elsewhere = |c: &char| {
            spec.output.contains(c)
                || (0..spec.operands.len()).any(|j| j != slot && spec.operands[j].contains(c))
        };
        let kept: Vec<char> = own.iter().copied().filter(seen_elsewhere).collect();
        let mut terms: Vec<&[char]> = vec![&spec.output];
        let mut values = vec![g.as_str()];
        for (j, term) in spec.operands.iter().enumerate().filter(|(j, _)| *j != slot) {
            terms.push(term);
            values.push(&node.input[j]);
        }
        let equation = EinsumSpec::equation(&terms, &kept);
        let mut grad = graph.add_node("Einsum", &values, vec![make_string("equation", &equation)]);
        if kept.len() < own.len() {
            let missing: Vec<i64> = (0..own.len())
                .filter(|&k| !seen_elsewhere(&own[k]))
                .map(|k| k as i64)
                .collect();
            let unsqueezed = graph.op_unsqueeze(&grad, &missing);
            grad = graph.op_expand_like(&unsqueezed, &node.input[slot]);
        }
        vjp.full(slot, grad);
    }
    Ok(vjp)
}

//! One vector-Jacobian rule per op type. Each takes the cotangents of a node's outputs and emits
//! the nodes computing the cotangents of its relevance-carrying inputs, plus the relevance that
//! constant additive terms (biases) absorb.
use std::collections::HashMap;

use super::Contribution;
use crate::error::{Error, Result};
use crate::ir::scan::{self, SelectiveScan};
use crate::ir::shapes::{normalize_axis, reduction, slice_spec, split_sizes};
use crate::ir::Graph;
use crate::onnx::attributes::{self, make_graph, make_int, make_ints};
use crate::onnx::proto::NodeProto;
use crate::reroll::{bodies, chunked, forward_scan_kind, ScanKind};

pub(super) struct Step<'a> {
    pub node: &'a NodeProto,
    /// Per input slot: does relevance flow back into it?
    pub carries: &'a [bool],
    pub out_grads: &'a [Option<String>],
    /// The gate half rule applies to this product.
    pub half: bool,
    /// This is a SiLU product under the stabilized identity rule.
    pub stabilized_silu: bool,
    pub batch: usize,
}

type Contributions = Vec<(usize, Contribution)>;

/// `recomputed` caches the large forward values rebuilt for the backward pass (see `remat`).
pub(super) fn backward(
    graph: &mut Graph,
    step: &Step,
    recomputed: &mut HashMap<String, String>,
) -> Result<(Contributions, Option<String>)> {
    let node = step.node;
    let no_rule = |detail: &str| Error::NoVjp {
        node: node.name().to_string(),
        op: node.op_type().to_string(),
        detail: detail.to_string(),
    };
    if node.op_type() == "Scan" {
        let Some(kind) = forward_scan_kind(graph, node) else {
            return Err(no_rule(
                " (only the selective scans mambalrp re-rolls are differentiated)",
            ));
        };
        return selective_scan_backward(graph, step, kind, recomputed);
    }
    let g = match step.out_grads.first() {
        Some(Some(g)) => g.clone(),
        _ if node.op_type() == "Split" => String::new(),
        _ => return Ok((vec![], None)),
    };
    let input_shape =
        |graph: &Graph, slot: usize| graph.shape(&node.input[slot]).map(<[usize]>::to_vec);
    let out_shape = graph.shape(&node.output[0])?.to_vec();
    let full = |slot: usize, v: String| (slot, Contribution::Full(v));
    let mut out: Contributions = Vec::new();
    let mut bias = None;
    match node.op_type() {
        "Identity" => out.push(full(0, g)),
        "Cast" => {
            let source = graph.value_type(&node.input[0])?.dtype;
            if source == graph.value_type(&node.output[0])?.dtype {
                out.push(full(0, g));
            } else {
                out.push(full(
                    0,
                    graph.add_node("Cast", &[&g], vec![make_int("to", source as i64)]),
                ));
            }
        }
        "Neg" => out.push(full(0, graph.op_unary("Neg", &g))),
        "Add" | "Sub" | "Sum" => {
            let mut terms = Vec::new();
            for slot in 0..node.input.len() {
                let negative = node.op_type() == "Sub" && slot == 1;
                if step.carries[slot] {
                    let gi = if negative {
                        graph.op_unary("Neg", &g)
                    } else {
                        g.clone()
                    };
                    let shape = input_shape(graph, slot)?;
                    out.push(full(slot, graph.op_unbroadcast(&gi, &out_shape, &shape)?));
                } else {
                    let term =
                        per_sample_dot(graph, &g, &node.input[slot], &out_shape, step.batch, node)?;
                    terms.push(if negative {
                        graph.op_unary("Neg", &term)
                    } else {
                        term
                    });
                }
            }
            bias = (!terms.is_empty()).then(|| graph.op_sum(&terms));
        }
        "Mul" if step.stabilized_silu => {
            if let Some(x_slot) = (0..2).find(|&slot| step.carries[slot]) {
                let (contribution, absorbed) =
                    stabilized_silu_backward(graph, node, x_slot, &g, &out_shape, step.batch)?;
                out.push(full(x_slot, contribution));
                bias = Some(absorbed);
            }
        }
        "Mul" => {
            let g = if step.half {
                graph.op_scale(&g, 0.5)
            } else {
                g
            };
            for slot in 0..2 {
                if step.carries[slot] {
                    let other =
                        super::remat::recomputed(graph, &node.input[1 - slot], &g, recomputed)?;
                    let product = graph.op_binary("Mul", &g, &other);
                    let shape = input_shape(graph, slot)?;
                    out.push(full(
                        slot,
                        graph.op_unbroadcast(&product, &out_shape, &shape)?,
                    ));
                }
            }
        }
        "Div" => {
            let b = &node.input[1];
            if step.carries[0] {
                let q = graph.op_binary("Div", &g, b);
                let shape = input_shape(graph, 0)?;
                out.push(full(0, graph.op_unbroadcast(&q, &out_shape, &shape)?));
            }
            if step.carries[1] {
                let q = graph.op_binary("Div", &node.output[0], b);
                let gq = graph.op_binary("Mul", &g, &q);
                let neg = graph.op_unary("Neg", &gq);
                let shape = input_shape(graph, 1)?;
                out.push(full(1, graph.op_unbroadcast(&neg, &out_shape, &shape)?));
            }
        }
        "MatMul" => {
            let (a_shape, b_shape) = (input_shape(graph, 0)?, input_shape(graph, 1)?);
            if step.carries[0] {
                let bt = graph.op_transpose_last_two(&node.input[1], b_shape.len());
                let ga = graph.op_binary("MatMul", &g, &bt);
                let mut ga_shape = out_shape.clone();
                *ga_shape.last_mut().expect("rank >= 2") = a_shape[a_shape.len() - 1];
                out.push(full(0, graph.op_unbroadcast(&ga, &ga_shape, &a_shape)?));
            }
            if step.carries[1] {
                let at = graph.op_transpose_last_two(&node.input[0], a_shape.len());
                let gb = graph.op_binary("MatMul", &at, &g);
                let mut gb_shape = out_shape.clone();
                let r = gb_shape.len();
                gb_shape[r - 2] = b_shape[b_shape.len() - 2];
                out.push(full(1, graph.op_unbroadcast(&gb, &gb_shape, &b_shape)?));
            }
        }
        "Gemm" => {
            let alpha = attributes::float(node, "alpha").unwrap_or(1.0);
            let beta = attributes::float(node, "beta").unwrap_or(1.0);
            let ta = attributes::int(node, "transA").unwrap_or(0);
            let tb = attributes::int(node, "transB").unwrap_or(0);
            let gemm = |graph: &mut Graph, x: &str, y: &str, t1: i64, t2: i64| {
                graph.add_node(
                    "Gemm",
                    &[x, y],
                    vec![
                        make_int("transA", t1),
                        make_int("transB", t2),
                        alpha_attr(alpha),
                    ],
                )
            };
            let (a, b) = (node.input[0].clone(), node.input[1].clone());
            if step.carries[0] {
                let ga = if ta == 0 {
                    gemm(graph, &g, &b, 0, 1 - tb)
                } else {
                    gemm(graph, &b, &g, tb, 1)
                };
                out.push(full(0, ga));
            }
            if step.carries[1] {
                let gb = if tb == 0 {
                    gemm(graph, &a, &g, 1 - ta, 0)
                } else {
                    gemm(graph, &g, &a, 1, ta)
                };
                out.push(full(1, gb));
            }
            if let Some(c) = node.input.get(2).filter(|c| !c.is_empty()) {
                let scaled = if beta == 1.0 {
                    g.clone()
                } else {
                    graph.op_scale(&g, beta)
                };
                if step.carries[2] {
                    let shape = input_shape(graph, 2)?;
                    out.push(full(2, graph.op_unbroadcast(&scaled, &out_shape, &shape)?));
                } else {
                    bias = Some(per_sample_dot(
                        graph, &scaled, c, &out_shape, step.batch, node,
                    )?);
                }
            }
        }
        "Conv" => {
            if step.carries.get(1).copied().unwrap_or(false) {
                return Err(no_rule(" (relevance through Conv weights)"));
            }
            if step.carries[0] {
                out.push(full(
                    0,
                    conv_input_gradient(graph, node, &g, &input_shape(graph, 0)?, &out_shape)?,
                ));
            }
            if let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) {
                let mut bshape = vec![1; out_shape.len()];
                bshape[1] = out_shape[1];
                let b4 = graph.op_reshape(b, &bshape);
                bias = Some(per_sample_dot(
                    graph, &g, &b4, &out_shape, step.batch, node,
                )?);
            }
        }
        "Unsqueeze" | "Squeeze" | "Reshape" | "Flatten" => {
            out.push(full(0, graph.op_reshape_like(&g, &node.input[0])));
        }
        "Transpose" => {
            let rank = out_shape.len() as i64;
            let perm = attributes::ints(node, "perm").unwrap_or_else(|| (0..rank).rev().collect());
            let mut inverse = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p as usize] = i as i64;
            }
            out.push(full(0, graph.op_transpose(&g, &inverse)));
        }
        "Expand" => {
            let shape = input_shape(graph, 0)?;
            out.push(full(0, graph.op_unbroadcast(&g, &out_shape, &shape)?));
        }
        "ReduceSum" | "ReduceMean" => {
            let shape = input_shape(graph, 0)?;
            let (axes, keep) = reduction(graph, node, &shape)?;
            let kept = if keep || axes.is_empty() {
                g
            } else {
                let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
                graph.op_unsqueeze(&g, &axes)
            };
            let mut spread = graph.op_expand_like(&kept, &node.input[0]);
            if node.op_type() == "ReduceMean" {
                let count: usize = axes.iter().map(|&a| shape[a]).product();
                spread = graph.op_scale(&spread, 1.0 / count.max(1) as f32);
            }
            out.push(full(0, spread));
        }
        "Slice" => {
            let shape = input_shape(graph, 0)?;
            let mut before = vec![0; shape.len()];
            let mut after = vec![0; shape.len()];
            for (axis, start, end, step_size) in slice_spec(graph, node, &shape)? {
                if step_size != 1 {
                    return Err(no_rule(" (Slice with a step other than 1)"));
                }
                before[axis] = start.max(0) as usize;
                after[axis] = shape[axis].saturating_sub(end.max(start).max(0) as usize);
            }
            let literal = |v: &String| {
                graph.is_initializer(v)
                    || graph
                        .producer(v)
                        .is_some_and(|(_, p)| p.op_type() == "Constant")
            };
            // Bounds written in the graph give static pad amounts; bounds computed from shapes
            // (the compact scans' trim to the runtime length, the exporters' shape arithmetic)
            // get their amounts from the runtime shapes, which is right for symbolic axes too.
            if node
                .input
                .iter()
                .skip(1)
                .all(|v| v.is_empty() || literal(v))
            {
                out.push(full(0, graph.op_pad(&g, &before, &after)));
            } else {
                let before = graph.const_i64(&before.iter().map(|&p| p as i64).collect::<Vec<_>>());
                let (whole, part) = (
                    graph.add_node("Shape", &[&node.input[0]], vec![]),
                    graph.add_node("Shape", &[&g], vec![]),
                );
                let rest = graph.add_node("Sub", &[&whole, &part], vec![]);
                let after = graph.add_node("Sub", &[&rest, &before], vec![]);
                let pads = graph.add_node("Concat", &[&before, &after], vec![make_int("axis", 0)]);
                out.push(full(0, graph.add_node("Pad", &[&g, &pads], vec![])));
            }
        }
        "Pad" => {
            let rank = input_shape(graph, 0)?.len();
            if attributes::string(node, "mode").is_some_and(|m| m != "constant") {
                return Err(no_rule(" (only constant-mode Pad)"));
            }
            if node.input.get(3).is_some_and(|a| !a.is_empty()) {
                return Err(no_rule(" (Pad with an axes input)"));
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
                return Err(no_rule(
                    " (Pad needs known, non-negative amounts and a zero fill)",
                ));
            };
            // The cotangent of the input is the unpadded window, bounded by its runtime shape.
            let begins = graph.const_i64(&pads[..rank]);
            let shape = graph.add_node("Shape", &[&node.input[0]], vec![]);
            let ends = graph.add_node("Add", &[&begins, &shape], vec![]);
            let axes = graph.const_i64(&(0..rank as i64).collect::<Vec<_>>());
            out.push(full(
                0,
                graph.add_node("Slice", &[&g, &begins, &ends, &axes], vec![]),
            ));
        }
        "Split" => {
            let shape = input_shape(graph, 0)?;
            let axis = normalize_axis(
                attributes::int(node, "axis").unwrap_or(0),
                shape.len(),
                node,
            )?;
            let parts_count = split_sizes(graph, node, shape[axis])?.len();
            let mut parts = Vec::new();
            for i in 0..parts_count {
                match step.out_grads.get(i).cloned().flatten() {
                    Some(gi) => parts.push(gi),
                    None => parts.push(graph.op_zeros_like(&node.output[i])),
                }
            }
            out.push(full(0, graph.op_concat(&parts, axis)));
        }
        "Concat" => {
            let axis = normalize_axis(
                attributes::int(node, "axis").unwrap_or(0),
                out_shape.len(),
                node,
            )?;
            let mut offset = 0;
            for slot in 0..node.input.len() {
                let len = input_shape(graph, slot)?[axis];
                if step.carries[slot] {
                    out.push(full(slot, graph.op_slice(&g, axis, offset, offset + len)));
                }
                offset += len;
            }
        }
        "Gather" => {
            let shape = input_shape(graph, 0)?;
            let axis = normalize_axis(
                attributes::int(node, "axis").unwrap_or(0),
                shape.len(),
                node,
            )?;
            let indices = graph
                .constant(&node.input[1])
                .ok_or_else(|| no_rule(" (Gather on the relevance path needs constant indices)"))?
                .clone();
            let dim = shape[axis] as i64;
            let normalize = |i: i64| {
                if (-dim..dim).contains(&i) {
                    Ok(i.rem_euclid(dim) as usize)
                } else {
                    Err(no_rule(" (index out of range)"))
                }
            };
            match indices.shape() {
                [] => {
                    let index = normalize(indices.to_i64_vec()[0])?;
                    out.push((
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
                        let piece = graph.add_node(
                            "Gather",
                            &[&g, &pick],
                            vec![make_int("axis", axis as i64)],
                        );
                        out.push((
                            0,
                            Contribution::Piece {
                                axis,
                                index: normalize(i)?,
                                value: piece,
                            },
                        ));
                    }
                }
                _ => return Err(no_rule(" (Gather with multi-dimensional indices)")),
            }
        }
        "Where" => {
            let zero = graph.scalar_like(0.0, &g);
            for (slot, keep_where_true) in [(1, true), (2, false)] {
                if step.carries[slot] {
                    let picked = if keep_where_true {
                        graph.add_node("Where", &[&node.input[0], &g, &zero], vec![])
                    } else {
                        graph.add_node("Where", &[&node.input[0], &zero, &g], vec![])
                    };
                    let shape = input_shape(graph, slot)?;
                    out.push(full(
                        slot,
                        graph.op_unbroadcast(&picked, &out_shape, &shape)?,
                    ));
                }
            }
        }
        // Exact derivatives of the non-linear ops: used by `--rules gi` and rule ablations.
        "Sigmoid" => {
            let y = &node.output[0];
            let one = graph.scalar_like(1.0, &g);
            let rest = graph.op_binary("Sub", &one, y);
            let d = graph.op_binary("Mul", y, &rest);
            out.push(full(0, graph.op_binary("Mul", &g, &d)));
        }
        "Exp" => out.push(full(0, graph.op_binary("Mul", &g, &node.output[0]))),
        "Softplus" => {
            let s = graph.op_unary("Sigmoid", &node.input[0]);
            out.push(full(0, graph.op_binary("Mul", &g, &s)));
        }
        "Sqrt" => {
            let half = graph.op_scale(&g, 0.5);
            out.push(full(0, graph.op_binary("Div", &half, &node.output[0])));
        }
        "Reciprocal" => {
            let sq = graph.op_binary("Mul", &node.output[0], &node.output[0]);
            let gsq = graph.op_binary("Mul", &g, &sq);
            out.push(full(0, graph.op_unary("Neg", &gsq)));
        }
        "Tanh" => {
            let sq = graph.op_binary("Mul", &node.output[0], &node.output[0]);
            let one = graph.scalar_like(1.0, &g);
            let d = graph.op_binary("Sub", &one, &sq);
            out.push(full(0, graph.op_binary("Mul", &g, &d)));
        }
        "Pow" => {
            if step.carries[1] {
                return Err(no_rule(" (relevance through the exponent)"));
            }
            let exponent = graph
                .constant(&node.input[1])
                .filter(|t| t.shape().iter().product::<usize>() == 1)
                .map(|t| t.to_f64_vec()[0] as f32)
                .ok_or_else(|| no_rule(" (Pow needs a constant scalar exponent)"))?;
            let e1 = graph.scalar_like(exponent as f64 - 1.0, &node.input[0]);
            let p = graph.op_binary("Pow", &node.input[0], &e1);
            let scaled = graph.op_scale(&p, exponent);
            let prod = graph.op_binary("Mul", &g, &scaled);
            let shape = input_shape(graph, 0)?;
            out.push(full(0, graph.op_unbroadcast(&prod, &out_shape, &shape)?));
        }
        _ => return Err(no_rule("")),
    }
    Ok((out, bias))
}

fn alpha_attr(alpha: f32) -> crate::onnx::proto::AttributeProto {
    crate::onnx::proto::AttributeProto {
        name: Some("alpha".into()),
        r#type: Some(crate::onnx::proto::attribute_proto::AttributeType::Float as i32),
        f: Some(alpha),
        ..Default::default()
    }
}

/// The official SiLU identity rule: the SiLU output `s = x * sigmoid(x)` is seen as
/// `x * c + b` with the frozen multiplier `c = s / st(x)`, `st(x) = x + (1[x = 0] + sign x)·1e-6`
/// (`= x ± 1e-6`, + for x >= 0), and the frozen remainder `b = s - x * c`, whose relevance
/// `sum(g * b)` is absorbed like a bias's: conservation stays exact.
fn stabilized_silu_backward(
    graph: &mut Graph,
    node: &NodeProto,
    x_slot: usize,
    g: &str,
    out_shape: &[usize],
    batch: usize,
) -> Result<(String, String)> {
    let (x, silu) = (node.input[x_slot].clone(), node.output[0].clone());
    // st(x) = x + 1e-6 * (2 * 1[x >= 0] - 1), in x's type: the sign is exactly +-1, so x gets
    // one rounding, as in the official code. (A Where with scalar branches is slow.)
    let zero = graph.scalar_like(0.0, &x);
    let non_negative = graph.op_binary("GreaterOrEqual", &x, &zero);
    let dtype = graph.dtype_of(&x);
    let step = graph.add_node("Cast", &[&non_negative], vec![make_int("to", dtype as i64)]);
    let (two, one, eps) = (
        graph.scalar_like(2.0, &x),
        graph.scalar_like(1.0, &x),
        graph.scalar_like(1e-6, &x),
    );
    let doubled = graph.op_binary("Mul", &step, &two);
    let sign = graph.op_binary("Sub", &doubled, &one);
    let offset = graph.op_binary("Mul", &sign, &eps);
    let stabilized = graph.op_binary("Add", &x, &offset);
    let multiplier = graph.op_binary("Div", &silu, &stabilized);
    let linear_part = graph.op_binary("Mul", &x, &multiplier);
    let remainder = graph.op_binary("Sub", &silu, &linear_part);
    let gx = graph.op_binary("Mul", g, &multiplier);
    let x_shape = graph.shape(&x)?.to_vec();
    let contribution = graph.op_unbroadcast(&gx, out_shape, &x_shape)?;
    let absorbed = per_sample_dot(graph, g, &remainder, out_shape, batch, node)?;
    Ok((contribution, absorbed))
}

/// `sum(term * g)` per sample: the relevance a constant additive term absorbs. Axis 0 must be
/// the batch.
fn per_sample_dot(
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

/// Cotangent of a Conv input: the transposed convolution with the same weights.
fn conv_input_gradient(
    graph: &mut Graph,
    node: &NodeProto,
    g: &str,
    x_shape: &[usize],
    y_shape: &[usize],
) -> Result<String> {
    let spatial = x_shape.len() - 2;
    let w_shape = graph.shape(&node.input[1])?.to_vec();
    let pads = attributes::ints(node, "pads").unwrap_or_else(|| vec![0; 2 * spatial]);
    let strides = attributes::ints(node, "strides").unwrap_or_else(|| vec![1; spatial]);
    let dilations = attributes::ints(node, "dilations").unwrap_or_else(|| vec![1; spatial]);
    let group = attributes::int(node, "group").unwrap_or(1);
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
        make_int("group", group),
        make_ints("kernel_shape", &kernel),
        make_ints("pads", &pads),
        make_ints("strides", &strides),
        make_ints("dilations", &dilations),
    ];
    if output_padding.iter().any(|&p| p > 0) {
        attrs.push(make_ints("output_padding", &output_padding));
    }
    Ok(graph.add_node("ConvTranspose", &[g, &node.input[1]], attrs))
}

/// Backward of `Scan(h0, dA, dBu, C) -> (h_last, Y[, H])` over chunks of L steps (every operand
/// laid out `[.., K chunks, L steps, ..]`; the chunked form reads log dA): a reverse-time Scan gives
/// G_H = dY/dh_t for every step, which is the cotangent of dBu; dA and C (frozen under the SSM
/// rule) get theirs from the stored states H.
fn selective_scan_backward(
    graph: &mut Graph,
    step: &Step,
    kind: ScanKind,
    recomputed: &mut HashMap<String, String>,
) -> Result<(Contributions, Option<String>)> {
    let node = step.node;
    let (h0, decay, readout) = (
        &node.input[scan::H0],
        &node.input[scan::DECAY],
        &node.input[scan::READOUT],
    );
    let shape = graph.shape(decay)?.to_vec();
    let &[b, d, _, len, n] = &shape[..] else {
        return Err(Error::node(
            node,
            "selective scan decay must be [B, D, K chunks, L steps, N]",
        ));
    };
    let grad_state = step.out_grads.get(scan::LAST_STATE).cloned().flatten();
    let grad_y = step.out_grads.get(scan::Y).cloned().flatten();
    if step
        .out_grads
        .get(scan::STATES)
        .cloned()
        .flatten()
        .is_some()
    {
        return Err(Error::node(
            node,
            "gradient into the stored states is not supported",
        ));
    }
    if grad_state.is_none() && grad_y.is_none() {
        return Ok((vec![], None));
    }
    let grad_y = grad_y.unwrap_or_else(|| graph.op_zeros_like(&node.output[scan::Y]));
    let carry = grad_state.unwrap_or_else(|| graph.op_zeros_like(h0));
    let dtype = graph.dtype_of(decay);
    let body = match kind {
        ScanKind::Stepwise => bodies::backward_body(graph, (b, d, n), len, dtype),
        ScanKind::Chunked => chunked::backward_body(graph, (b, d, n), len, dtype),
    };
    let attrs = vec![
        make_graph("body", body),
        make_int("num_scan_inputs", 3),
        make_ints("scan_input_axes", &[2, 1, 2]),
        make_ints("scan_input_directions", &[1, 1, 1]),
        make_ints("scan_output_axes", &[2]),
        make_ints("scan_output_directions", &[1]),
    ];
    let decay_again = super::remat::recomputed(graph, decay, &grad_y, recomputed)?;
    let outs = graph.add_selective_scan(
        "selective_scan_backward",
        SelectiveScan::backward(kind),
        &[&carry, &grad_y, readout, &decay_again],
        2,
        attrs,
    );
    let (grad_h0, grad_states) = (outs[0].clone(), outs[1].clone());
    let mut out: Contributions = vec![];
    let mut bias = None;
    if step.carries[scan::INPUT] {
        out.push((scan::INPUT, Contribution::Full(grad_states.clone())));
    }
    if step.carries[scan::H0] {
        out.push((scan::H0, Contribution::Full(grad_h0)));
    } else {
        bias = Some(per_sample_dot(
            graph,
            &grad_h0,
            h0,
            &[b, d, n],
            step.batch,
            node,
        )?);
    }
    if step.carries[scan::DECAY] || step.carries[scan::READOUT] {
        let states = node
            .output
            .get(scan::STATES)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::node(
                    node,
                    "dA or C carries relevance but the scan keeps no states (re-roll with states)",
                )
            })?;
        if step.carries[scan::DECAY] {
            let previous = previous_states(graph, h0, states, &shape);
            let mut grad_decay = graph.op_binary("Mul", &grad_states, &previous);
            if kind == ScanKind::Chunked {
                // The chunked scan reads log dA: d dA / d log dA = dA.
                let decay_values = graph.op_unary("Exp", decay);
                grad_decay = graph.op_binary("Mul", &grad_decay, &decay_values);
            }
            out.push((scan::DECAY, Contribution::Full(grad_decay)));
        }
        if step.carries[scan::READOUT] {
            let last_axis = shape.len() as i64 - 1;
            let gy = graph.op_unsqueeze(&grad_y, &[last_axis]);
            let weighted = graph.op_binary("Mul", &gy, states);
            out.push((
                scan::READOUT,
                Contribution::Full(graph.op_reduce_sum(&weighted, &[1], false)),
            ));
        }
    }
    Ok((out, bias))
}

/// h_{t-1} for every step t, laid out like the stored states H `[B,D,K,L,N]` (h_{-1} = h0).
/// The shift crosses chunk borders, so it works on the flat time axis.
fn previous_states(graph: &mut Graph, h0: &str, states: &str, shape: &[usize]) -> String {
    let (len, n) = (shape[3] as i64, shape[4] as i64);
    let to_flat = graph.const_i64(&[0, 0, -1, n]);
    let flat = graph.add_node("Reshape", &[states, &to_flat], vec![]);
    let first = graph.op_unsqueeze(h0, &[2]);
    let previous = if shape[2] * shape[3] > 1 {
        let shifted = graph.op_slice_signed(&flat, 2, 0, -1);
        graph.op_concat(&[first, shifted], 2)
    } else {
        first
    };
    let to_chunks = graph.const_i64(&[0, 0, -1, len, n]);
    graph.add_node("Reshape", &[&previous, &to_chunks], vec![])
}

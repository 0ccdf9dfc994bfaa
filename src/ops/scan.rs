//! ONNX `Scan`: typed for any body; differentiated only for the selective scans `reroll` emits,
//! whose contract (operands, axes, which slots carry relevance) the backward rule relies on.
use super::attrs::{self, Attrs};
use super::support::{normalize_axis, per_sample_dot};
use super::{Arity, Linearity, OpDef, Step, Vjp};
use crate::error::{Error, Result};
use crate::ir::scan::{self, ScanKind, SelectiveScan};
use crate::ir::shapes::declared_dims;
use crate::ir::{Graph, ValueType};
use crate::onnx::attributes::{find, make_graph, make_int, make_ints};
use crate::onnx::proto::NodeProto;
use crate::reroll::{bodies, chunked};

pub(super) static OPS: &[OpDef] = &[OpDef::new("Scan", Arity::new(1, 1), infer_scan)
    .with_parse(attrs::scan)
    .with_vjp(Linearity::Decided(selective_scan_linearity), scan_back)];

/// Scan outputs: the final states have the initial states' types; each scan output is the body
/// output's declared type with the iteration count inserted at its scan axis.
fn infer_scan(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let Attrs::Scan {
        scan_inputs,
        input_axes,
        output_axes,
    } = attrs
    else {
        unreachable!("parsed by attrs::scan")
    };
    let body = find(node, "body")
        .and_then(|a| a.g.as_ref())
        .ok_or_else(|| Error::node(node, "Scan without a body"))?;
    let states = node
        .input
        .len()
        .checked_sub(*scan_inputs)
        .ok_or_else(|| Error::node(node, "fewer inputs than num_scan_inputs"))?;
    let first_scanned = node
        .input
        .get(states)
        .ok_or_else(|| Error::node(node, "Scan without scan inputs"))?;
    let input_axis = input_axes.first().copied().unwrap_or(0);
    let shape = graph.shape(first_scanned)?;
    let steps = shape[normalize_axis(input_axis, shape.len(), node)?];
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

/// A selective scan is linear in its initial state and its input dBu; dA and C are frozen by
/// the SSM rule. Any other Scan is not understood, hence not proved linear.
fn selective_scan_linearity(
    graph: &Graph,
    node: &NodeProto,
    carried: &[usize],
) -> std::result::Result<(), String> {
    if graph.forward_scan_kind(node).is_none() {
        return Err("is a Scan that mambalrp did not emit, so its linearity is unknown".into());
    }
    if carried
        .iter()
        .all(|slot| scan::RELEVANCE_SLOTS.contains(slot))
    {
        Ok(())
    } else {
        Err(
            "carries relevance through dA or C of the selective scan, which the SSM rule freezes"
                .into(),
        )
    }
}

fn scan_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let Some(kind) = graph.forward_scan_kind(step.node) else {
        return Err(
            step.unsupported(" (only the selective scans mambalrp re-rolls are differentiated)")
        );
    };
    selective_scan_backward(graph, step, kind)
}

/// Backward of `Scan(h0, dA, dBu, C) -> (h_last, Y[, H])` over chunks of L steps (every operand
/// laid out `[.., K chunks, L steps, ..]`; the chunked form reads log dA): a reverse-time Scan gives
/// G_H = dY/dh_t for every step, which is the cotangent of dBu; dA and C (frozen under the SSM
/// rule) get theirs from the stored states H.
fn selective_scan_backward(graph: &mut Graph, step: &mut Step, kind: ScanKind) -> Result<Vjp> {
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
    let grad_of = |slot: usize| step.out_grads.get(slot).cloned().flatten();
    let (grad_state, grad_y) = (grad_of(scan::LAST_STATE), grad_of(scan::Y));
    if grad_of(scan::STATES).is_some() {
        return Err(Error::node(
            node,
            "gradient into the stored states is not supported",
        ));
    }
    let mut vjp = Vjp::default();
    if grad_state.is_none() && grad_y.is_none() {
        return Ok(vjp);
    }
    let grad_y = grad_y.unwrap_or_else(|| graph.op_zeros_like(&node.output[scan::Y]));
    let carry = grad_state.unwrap_or_else(|| graph.op_zeros_like(h0));
    let dtype = graph.dtype_of(decay);
    let body = match kind {
        ScanKind::Stepwise => bodies::backward_body(graph, (b, d, n), len, dtype),
        ScanKind::Chunked => chunked::backward_body(graph, (b, d, n), len, dtype),
    };
    let reverse = [scan::REVERSE; 3];
    let attrs = vec![
        make_graph("body", body),
        make_int("num_scan_inputs", scan::BACKWARD_SCAN_INPUTS),
        make_ints("scan_input_axes", &scan::BACKWARD_INPUT_SCAN_AXES),
        make_ints("scan_input_directions", &reverse),
        make_ints("scan_output_axes", &[scan::BACKWARD_OUTPUT_SCAN_AXIS]),
        make_ints("scan_output_directions", &reverse[..1]),
    ];
    let decay_again = crate::autodiff::remat::recomputed(graph, decay, &grad_y, step.recomputed)?;
    let outs = graph.add_selective_scan(
        "selective_scan_backward",
        SelectiveScan::backward(kind),
        &[&carry, &grad_y, readout, &decay_again],
        2,
        attrs,
    );
    let (grad_h0, grad_states) = (outs[0].clone(), outs[1].clone());
    if step.carries[scan::INPUT] {
        vjp.full(scan::INPUT, grad_states.clone());
    }
    if step.carries[scan::H0] {
        vjp.full(scan::H0, grad_h0);
    } else {
        vjp.bias = Some(per_sample_dot(
            graph,
            &grad_h0,
            h0,
            &[b, d, n],
            step.batch,
            node,
        )?);
    }
    if step.carries[scan::DECAY] || step.carries[scan::READOUT] {
        frozen_operand_gradients(graph, step, kind, &grad_states, &grad_y, &mut vjp)?;
    }
    Ok(vjp)
}

/// Cotangents of dA and C (only when the SSM rule is off): from the stored states.
fn frozen_operand_gradients(
    graph: &mut Graph,
    step: &Step,
    kind: ScanKind,
    grad_states: &str,
    grad_y: &str,
    vjp: &mut Vjp,
) -> Result<()> {
    let node = step.node;
    let (h0, decay) = (&node.input[scan::H0], &node.input[scan::DECAY]);
    let shape = graph.shape(decay)?.to_vec();
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
        let mut grad_decay = graph.op_binary("Mul", grad_states, &previous);
        if kind == ScanKind::Chunked {
            // The chunked scan reads log dA: d dA / d log dA = dA.
            let decay_values = graph.op_unary("Exp", decay);
            grad_decay = graph.op_binary("Mul", &grad_decay, &decay_values);
        }
        vjp.full(scan::DECAY, grad_decay);
    }
    if step.carries[scan::READOUT] {
        let last_axis = shape.len() as i64 - 1;
        let gy = graph.op_unsqueeze(grad_y, &[last_axis]);
        let weighted = graph.op_binary("Mul", &gy, states);
        vjp.full(scan::READOUT, graph.op_reduce_sum(&weighted, &[1], false));
    }
    Ok(())
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

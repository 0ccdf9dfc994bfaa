//! Bodies of the rolled form's forward and reverse selective-scan `Scan` nodes: each iteration
//! runs a chunk of steps one after another. The state contraction is written as Mul + ReduceSum:
//! tract hangs optimising a Scan body with a matrix-vector MatMul.
use super::body::Body;
use crate::ir::DType;
use crate::ir::Graph;
use crate::onnx::attributes::make_int;
use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::Tensor;

/// Name hint of the forward Scan nodes this pass creates (the backward pass recognises them).
pub const SELECTIVE_SCAN: &str = "selective_scan";

/// Steps per Scan iteration of the rolled form when `--chunk-len` is not given. Measured on the
/// 130M model at 512 tokens in ONNX Runtime (2 cores): forward + relevance 4.2 s with 32 steps,
/// 4.9-5.9 s with 8, 8.9-9.4 s with 1, as every iteration has a fixed cost.
pub const DEFAULT_STEPS_PER_ITERATION: u16 = 32;

/// Splits `value` `[B, D, L, N]` (or `[B, D, L]`) into its L steps along axis 2, each keeping
/// the axis.
fn steps(body: &mut Body, local: &str, value: &str, len: usize) -> Vec<String> {
    if len == 1 {
        return vec![value.to_string()];
    }
    let sizes = body.constant(
        &format!("{local}_sizes"),
        Tensor::I64(ndarray::Array1::from_elem(len, 1i64).into_dyn()),
    );
    let outputs: Vec<String> = (0..len)
        .map(|t| body.name(&format!("{local}_{t}")))
        .collect();
    body.proto.node.push(NodeProto {
        name: Some(body.name(&format!("{local}_split"))),
        op_type: Some("Split".into()),
        input: vec![value.to_string(), sizes],
        output: outputs.clone(),
        attribute: vec![make_int("axis", 2)],
        ..Default::default()
    });
    outputs
}

/// The steps' values `[B, D, 1, N]` stacked along axis 2.
fn stack(body: &mut Body, local: &str, parts: &[String]) -> String {
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match parts[..] {
        [single] => single.to_string(),
        _ => body.node("Concat", local, &parts, vec![make_int("axis", 2)]),
    }
}

/// State h `[B,D,N]`; per chunk dA, dBu `[B,D,L,N]`, C `[B,L,N]`: the L steps
/// h_t = dA_t * h_{t-1} + dBu_t one after another, then y_t = sum_n h_t[n] C_t[n] `[B,D,L]`
/// for the whole chunk (and the chunk's states `[B,D,L,N]` when `keep_states`). Several steps
/// per iteration save the Scan's per-iteration cost; the arithmetic is the exporter's.
pub fn forward_body(
    graph: &mut Graph,
    (b, d, n): (usize, usize, usize),
    len: usize,
    dtype: DType,
    keep_states: bool,
) -> GraphProto {
    let mut body = Body::new(graph, "selective_scan_body", dtype);
    let [h, a, u, c] = body.forward_inputs("decay_chunk", (b, d, len, n));
    let axis2 = body.axes("axis2", &[2]);
    let mut state = body.node("Unsqueeze", "h_prev_bd1n", &[&h, &axis2], vec![]);
    let (decays, inputs) = (
        steps(&mut body, "decay", &a, len),
        steps(&mut body, "input", &u, len),
    );
    let mut states = Vec::new();
    for t in 0..len {
        let decayed = body.node(
            "Mul",
            &format!("decayed_{t}"),
            &[&decays[t], &state],
            vec![],
        );
        state = body.node(
            "Add",
            &format!("state_{t}"),
            &[&decayed, &inputs[t]],
            vec![],
        );
        states.push(state.clone());
    }
    let chunk_states = stack(&mut body, "states", &states);
    let y = body.readout(&chunk_states, &c);
    let h_next = body.node("Squeeze", "h_next", &[&state, &axis2], vec![]);
    body.forward_outputs((&h_next, &y, &chunk_states), (b, d, len, n), keep_states);
    body.proto
}

/// Reverse time, one chunk per iteration. Carry s = dA_{next} * g_{h_next} `[B,D,N]`; per
/// chunk g_y `[B,D,L]`, C `[B,L,N]`, dA `[B,D,L,N]`: from the last step back,
/// g_{h_t} = g_y_t (x) C_t + s and s = dA_t * g_{h_t}; emits the chunk's g_h `[B,D,L,N]`.
pub fn backward_body(
    graph: &mut Graph,
    (b, d, n): (usize, usize, usize),
    len: usize,
    dtype: DType,
) -> GraphProto {
    let mut body = Body::new(graph, "selective_scan_backward_body", dtype);
    let [s, gy, c, a] = body.backward_inputs("decay_chunk", (b, d, len, n));
    let from_y = body.readout_transposed(&gy, &c);
    let (from_y, decays) = (
        steps(&mut body, "grad_from_y", &from_y, len),
        steps(&mut body, "decay", &a, len),
    );
    let axis2 = body.axes("axis2", &[2]);
    let mut carry = body.node("Unsqueeze", "carry_bd1n", &[&s, &axis2], vec![]);
    let mut grads = vec![String::new(); len];
    for t in (0..len).rev() {
        grads[t] = body.node("Add", &format!("grad_h_{t}"), &[&from_y[t], &carry], vec![]);
        carry = body.node(
            "Mul",
            &format!("carry_{t}"),
            &[&decays[t], &grads[t]],
            vec![],
        );
    }
    let chunk_grads = stack(&mut body, "grad_h_chunk", &grads);
    let grads_out = if len == 1 {
        body.node("Identity", "grad_h_chunk_out", &[&chunk_grads], vec![])
    } else {
        chunk_grads
    };
    let carry_next = body.node("Squeeze", "carry_next", &[&carry, &axis2], vec![]);
    body.output(&carry_next, &[b, d, n]);
    body.output(&grads_out, &[b, d, len, n]);
    body.proto
}

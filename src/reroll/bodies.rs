//! Bodies of the rolled form's forward and reverse selective-scan `Scan` nodes: each iteration
//! runs a chunk of steps one after another. The state contraction is written as Mul + ReduceSum:
//! tract hangs optimising a Scan body with a matrix-vector MatMul.
use crate::ir::Graph;
use crate::onnx::attributes::{make_int, make_tensor};
use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::Tensor;

/// Name hint of the forward Scan nodes this pass creates (the backward pass recognises them).
pub const SELECTIVE_SCAN: &str = "selective_scan";

/// Steps per Scan iteration of the rolled form when `--chunk-len` is not given. Measured on the
/// 130M model at 512 tokens in ONNX Runtime (2 cores): forward + relevance 4.2 s with 32 steps,
/// 4.9-5.9 s with 8, 8.9-9.4 s with 1, as every iteration has a fixed cost.
pub const DEFAULT_STEPS_PER_ITERATION: u16 = 32;

pub(super) struct Body {
    prefix: String,
    /// Element type of every body input and output (the scan runs in one float type).
    pub(super) dtype: i32,
    pub(super) proto: GraphProto,
}

impl Body {
    pub(super) fn new(graph: &mut Graph, hint: &str, dtype: i32) -> Body {
        Body {
            prefix: graph.fresh_name(hint),
            dtype,
            proto: GraphProto {
                name: Some(hint.into()),
                ..Default::default()
            },
        }
    }

    pub(super) fn name(&self, local: &str) -> String {
        format!("{}/{local}", self.prefix)
    }

    pub(super) fn input(&mut self, local: &str, shape: &[usize]) -> String {
        let name = self.name(local);
        self.proto
            .input
            .push(crate::emit::value_info(&name, self.dtype, shape));
        name
    }

    pub(super) fn output(&mut self, value: &str, shape: &[usize]) {
        self.proto
            .output
            .push(crate::emit::value_info(value, self.dtype, shape));
    }

    pub(super) fn node(
        &mut self,
        op: &str,
        local: &str,
        inputs: &[&str],
        attrs: Vec<crate::onnx::proto::AttributeProto>,
    ) -> String {
        let out = self.name(local);
        self.proto.node.push(NodeProto {
            name: Some(self.name(&format!("{local}_node"))),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    pub(super) fn axes(&mut self, local: &str, axes: &[i64]) -> String {
        self.constant(local, Tensor::I64(ndarray::arr1(axes).into_dyn()))
    }

    pub(super) fn constant(&mut self, local: &str, value: Tensor) -> String {
        let tensor = value.to_proto(&self.name(local));
        self.node("Constant", local, &[], vec![make_tensor("value", tensor)])
    }

    /// A scalar in the body's float type.
    pub(super) fn float_scalar(&mut self, local: &str, value: f32) -> String {
        let f32_value = self.constant(
            &format!("{local}_f32"),
            Tensor::F32(ndarray::arr0(value).into_dyn()),
        );
        if self.dtype == crate::onnx::proto::tensor_proto::DataType::Float as i32 {
            return f32_value;
        }
        let dtype = self.dtype as i64;
        self.node("Cast", local, &[&f32_value], vec![make_int("to", dtype)])
    }

    /// y_t = sum_n h_t[n] C_t[n] over a chunk: states `[B,D,L,N]`, C `[B,L,N]` -> `[B,D,L]`.
    pub(super) fn readout(&mut self, states: &str, c: &str) -> String {
        let axis1 = self.axes("readout_axis1", &[1]);
        let c4 = self.node("Unsqueeze", "readout_b1ln", &[c, &axis1], vec![]);
        let weighted = self.node("Mul", "weighted", &[states, &c4], vec![]);
        let axis3 = self.axes("readout_axis3", &[3]);
        self.node(
            "ReduceSum",
            "y_chunk",
            &[&weighted, &axis3],
            vec![make_int("keepdims", 0)],
        )
    }

    /// The read-out's transpose, g_y_t (x) C_t: g_y `[B,D,L]`, C `[B,L,N]` -> `[B,D,L,N]`.
    pub(super) fn readout_transposed(&mut self, gy: &str, c: &str) -> String {
        let axis3 = self.axes("grad_axis3", &[3]);
        let gy4 = self.node("Unsqueeze", "grad_y_bdl1", &[gy, &axis3], vec![]);
        let axis1 = self.axes("grad_axis1", &[1]);
        let c4 = self.node("Unsqueeze", "grad_readout_b1ln", &[c, &axis1], vec![]);
        self.node("Mul", "grad_from_y", &[&gy4, &c4], vec![])
    }

    /// Declares a forward body's outputs: the state after the chunk `[B,D,N]`, y `[B,D,L]` and,
    /// with `keep_states`, the chunk's states `[B,D,L,N]`.
    pub(super) fn forward_outputs(
        &mut self,
        (h_next, y, states): (&str, &str, &str),
        (b, d, len, n): (usize, usize, usize, usize),
        keep_states: bool,
    ) {
        self.output(h_next, &[b, d, n]);
        self.output(y, &[b, d, len]);
        if keep_states {
            // Its own value: tract mis-infers a Scan whose body output is also read inside.
            let kept = self.node("Identity", "states_out", &[states], vec![]);
            self.output(&kept, &[b, d, len, n]);
        }
    }
}

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
    dtype: i32,
    keep_states: bool,
) -> GraphProto {
    let mut body = Body::new(graph, "selective_scan_body", dtype);
    let h = body.input("h_prev", &[b, d, n]);
    let a = body.input("decay_chunk", &[b, d, len, n]);
    let u = body.input("input_chunk", &[b, d, len, n]);
    let c = body.input("readout_chunk", &[b, len, n]);
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
    dtype: i32,
) -> GraphProto {
    let mut body = Body::new(graph, "selective_scan_backward_body", dtype);
    let s = body.input("carry", &[b, d, n]);
    let gy = body.input("grad_y_chunk", &[b, d, len]);
    let c = body.input("readout_chunk", &[b, len, n]);
    let a = body.input("decay_chunk", &[b, d, len, n]);
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

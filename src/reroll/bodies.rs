//! Bodies of the forward and reverse selective-scan `Scan` nodes. The state contraction is
//! written as Mul + ReduceSum: tract hangs optimising a Scan body with a matrix-vector MatMul.
use crate::ir::Graph;
use crate::onnx::attributes::{make_int, make_tensor};
use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::Tensor;

/// Name hint of the forward Scan nodes this pass creates (the backward pass recognises them).
pub const SELECTIVE_SCAN: &str = "selective_scan";

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
}

/// State h `[B,D,N]`; per step dA_t, dBu_t `[B,D,N]`, C_t `[B,N]` ->
/// h' = dA_t * h + dBu_t, y_t = sum_n h'[.., n] C_t[n] `[B,D]` (and h' itself when `keep_states`).
pub fn forward_body(
    graph: &mut Graph,
    (b, d, n): (usize, usize, usize),
    dtype: i32,
    keep_states: bool,
) -> GraphProto {
    let mut body = Body::new(graph, "selective_scan_body", dtype);
    let h = body.input("h_prev", &[b, d, n]);
    let a = body.input("decay_t", &[b, d, n]);
    let u = body.input("input_t", &[b, d, n]);
    let c = body.input("readout_t", &[b, n]);
    let decayed = body.node("Mul", "decayed", &[&a, &h], vec![]);
    let state = body.node("Add", "state", &[&decayed, &u], vec![]);
    let axis1 = body.axes("axis1", &[1]);
    let c3 = body.node("Unsqueeze", "readout_b1n", &[&c, &axis1], vec![]);
    let weighted = body.node("Mul", "weighted", &[&state, &c3], vec![]);
    let axis2 = body.axes("axis2", &[2]);
    let y = body.node(
        "ReduceSum",
        "y_t",
        &[&weighted, &axis2],
        vec![make_int("keepdims", 0)],
    );
    let state_out = body.node("Identity", "h_next", &[&state], vec![]);
    body.output(&state_out, &[b, d, n]);
    body.output(&y, &[b, d]);
    if keep_states {
        let kept = body.node("Identity", "h_t", &[&state], vec![]);
        body.output(&kept, &[b, d, n]);
    }
    body.proto
}

/// Reverse-time cotangent recurrence. State s = dA_{t+1} * g_{h_{t+1}}; per step g_y_t `[B,D]`,
/// C_t `[B,N]`, dA_t `[B,D,N]` -> g_{h_t} = g_y_t (x) C_t + s (emitted), s' = dA_t * g_{h_t}.
pub fn backward_body(
    graph: &mut Graph,
    (b, d, n): (usize, usize, usize),
    dtype: i32,
) -> GraphProto {
    let mut body = Body::new(graph, "selective_scan_backward_body", dtype);
    let s = body.input("carry", &[b, d, n]);
    let gy = body.input("grad_y_t", &[b, d]);
    let c = body.input("readout_t", &[b, n]);
    let a = body.input("decay_t", &[b, d, n]);
    let axis2 = body.axes("axis2", &[2]);
    let gy3 = body.node("Unsqueeze", "grad_y_bd1", &[&gy, &axis2], vec![]);
    let axis1 = body.axes("axis1", &[1]);
    let c3 = body.node("Unsqueeze", "readout_b1n", &[&c, &axis1], vec![]);
    let outer = body.node("Mul", "grad_from_y", &[&gy3, &c3], vec![]);
    let gh = body.node("Add", "grad_h_t", &[&outer, &s], vec![]);
    let carry = body.node("Mul", "carry_next", &[&a, &gh], vec![]);
    let gh_out = body.node("Identity", "grad_h_t_out", &[&gh], vec![]);
    body.output(&carry, &[b, d, n]);
    body.output(&gh_out, &[b, d, n]);
    body.proto
}

//! The builder for the selective-scan `Scan` bodies of both compact forms: names local to one
//! body, constants, and the inputs, read-out and outputs the forms share.
use crate::ir::DType;
use crate::ir::Graph;
use crate::onnx::attributes::{make_int, make_tensor};
use crate::onnx::proto::{GraphProto, NodeProto};
use crate::onnx::Tensor;

pub(super) struct Body {
    prefix: String,
    /// Element type of every body input and output (the scan runs in one float type).
    dtype: DType,
    pub(super) proto: GraphProto,
}

impl Body {
    pub(super) fn new(graph: &mut Graph, hint: &str, dtype: DType) -> Body {
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
            .push(crate::onnx::value_info(&name, self.dtype, shape));
        name
    }

    pub(super) fn output(&mut self, value: &str, shape: &[usize]) {
        self.proto
            .output
            .push(crate::onnx::value_info(value, self.dtype, shape));
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
        if self.dtype == DType::Float {
            return f32_value;
        }
        let dtype = self.dtype.onnx() as i64;
        self.node("Cast", local, &[&f32_value], vec![make_int("to", dtype)])
    }

    /// The forward body's inputs, in the Scan's order: h `[B,D,N]`, then per chunk the decay
    /// (named `decay`: dA or log dA) and dBu `[B,D,L,N]`, and C `[B,L,N]`.
    pub(super) fn forward_inputs(
        &mut self,
        decay: &str,
        (b, d, len, n): (usize, usize, usize, usize),
    ) -> [String; 4] {
        [
            self.input("h_prev", &[b, d, n]),
            self.input(decay, &[b, d, len, n]),
            self.input("input_chunk", &[b, d, len, n]),
            self.input("readout_chunk", &[b, len, n]),
        ]
    }

    /// The reverse body's inputs, in the Scan's order: the carry `[B,D,N]`, then per chunk
    /// g_y `[B,D,L]`, C `[B,L,N]` and the decay (named `decay`) `[B,D,L,N]`.
    pub(super) fn backward_inputs(
        &mut self,
        decay: &str,
        (b, d, len, n): (usize, usize, usize, usize),
    ) -> [String; 4] {
        [
            self.input("carry", &[b, d, n]),
            self.input("grad_y_chunk", &[b, d, len]),
            self.input("readout_chunk", &[b, len, n]),
            self.input(decay, &[b, d, len, n]),
        ]
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

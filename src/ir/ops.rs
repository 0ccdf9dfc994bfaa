//! Builders for the small node patterns the backward pass emits.
use super::{DType, Graph};
use crate::error::{Error, Result};
use crate::onnx::attributes::{make_int, make_ints};
use crate::onnx::Tensor;

/// `op_sum_last_axis` sums by MatMul only a last axis this short (longer ones are reduced
/// well) ...
const MATMUL_SUM_MAX_AXIS: usize = 64;
/// ... of a tensor this large (small ones cost a launch either way).
const MATMUL_SUM_MIN_ELEMENTS: usize = 1 << 12;

impl Graph {
    pub fn op_unary(&mut self, op: &str, x: &str) -> String {
        self.add_node(op, &[x], vec![])
    }

    pub fn op_binary(&mut self, op: &str, a: &str, b: &str) -> String {
        self.add_node(op, &[a, b], vec![])
    }

    pub fn op_scale(&mut self, x: &str, factor: f32) -> String {
        let k = self.scalar_like(factor as f64, x);
        self.op_binary("Mul", x, &k)
    }

    /// Sum of several values (one `Sum` node, or the value itself).
    pub fn op_sum(&mut self, values: &[String]) -> String {
        match values {
            [one] => one.clone(),
            [a, b] => self.op_binary("Add", a, b),
            many => {
                let refs: Vec<&str> = many.iter().map(String::as_str).collect();
                self.add_node("Sum", &refs, vec![])
            }
        }
    }

    pub fn op_reshape(&mut self, x: &str, shape: &[usize]) -> String {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let s = self.const_i64(&dims);
        self.add_node("Reshape", &[x, &s], vec![])
    }

    pub fn op_transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.add_node("Transpose", &[x], vec![make_ints("perm", perm)])
    }

    /// Swaps the last two axes of a value of rank `rank`.
    pub fn op_transpose_last_two(&mut self, x: &str, rank: usize) -> String {
        let mut perm: Vec<i64> = (0..rank as i64).collect();
        perm.swap(rank - 2, rank - 1);
        self.op_transpose(x, &perm)
    }

    pub fn op_reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let a = self.const_i64(axes);
        self.add_node(
            "ReduceSum",
            &[x, &a],
            vec![make_int("keepdims", keepdims as i64)],
        )
    }

    /// The sum of `x` (traced shape `shape`, element type `dtype`) over its last axis. In the
    /// GPU form (`sums_by_matmul`), a large float32 tensor with a short last axis (the SSM
    /// state, N = 16) is summed by a MatMul with a column of ones: ONNX Runtime's CUDA
    /// ReduceSum over a short innermost axis is far below the memory bandwidth (it took 80 of
    /// the parallel form's 372 ms at 1x2048 on the 130M model), a matrix-vector product reads
    /// the tensor once at full speed (on the H200: 1x2048 in 358 instead of 372 ms). On this
    /// project's CPU the rolled form measured 12% slower with it (a few percent of that was
    /// the measurement's order), so only the parallel form asks for it. The order of the sum
    /// differs, not its terms.
    pub fn op_sum_last_axis(
        &mut self,
        x: &str,
        shape: &[usize],
        dtype: DType,
        keepdims: bool,
    ) -> String {
        let last = shape.last().copied().unwrap_or(0);
        let numel: usize = shape.iter().product();
        let by_matmul = self.sums_by_matmul
            && dtype == DType::Float
            && (2..=MATMUL_SUM_MAX_AXIS).contains(&last)
            && numel >= MATMUL_SUM_MIN_ELEMENTS;
        if !by_matmul {
            return self.op_reduce_sum(x, &[shape.len() as i64 - 1], keepdims);
        }
        let ones = self.add_constant(Tensor::F32(ndarray::ArrayD::ones(ndarray::IxDyn(&[
            last, 1,
        ]))));
        let summed = self.add_node("MatMul", &[x, &ones], vec![]);
        if keepdims {
            summed
        } else {
            self.op_squeeze(&summed, &[shape.len() as i64 - 1])
        }
    }

    pub fn op_unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.const_i64(axes);
        self.add_node("Unsqueeze", &[x, &a], vec![])
    }

    pub fn op_squeeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.const_i64(axes);
        self.add_node("Squeeze", &[x, &a], vec![])
    }

    pub fn op_expand(&mut self, x: &str, shape: &[usize]) -> String {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let s = self.const_i64(&dims);
        self.add_node("Expand", &[x, &s], vec![])
    }

    /// `x` as float32 (a Cast unless it already is).
    pub fn op_to_float32(&mut self, x: &str) -> String {
        if self.dtype_of(x) == DType::Float {
            x.to_string()
        } else {
            self.add_node(
                "Cast",
                &[x],
                vec![make_int("to", DType::Float.onnx() as i64)],
            )
        }
    }

    /// The runtime shape of `value` (int64 `[rank]`). Through a `Pad` with its amounts as an
    /// input it is the shape of the unpadded value plus the amounts: the backward pass asks
    /// for the shapes of forward values, and reading a large padded copy's shape there would
    /// keep the copy alive until then (runtimes order nodes their own way; ONNX Runtime's
    /// default order runs such reads late), while the unpadded value's shape is one the forward
    /// pass reads anyway (see [`Graph::merge_duplicate_shapes`]).
    pub fn op_shape_of(&mut self, value: &str) -> String {
        if let Some([a, b]) = self.padded_product(value) {
            return self.op_broadcast_shapes(&a, &b);
        }
        let padded = self.producer(value).and_then(|(_, node)| {
            let unpadded = node.op_type() == "Pad"
                && node.input.len() >= 2
                && node.input.get(3).is_none_or(|axes| axes.is_empty());
            unpadded.then(|| (node.input[0].clone(), node.input[1].clone()))
        });
        let rank = self.shape(value).map(|s| s.len() as i64);
        match (padded, rank) {
            (Some((inner, pads)), Ok(rank)) => {
                let inner = self.op_shape_of(&inner);
                let begins = self.op_slice_signed(&pads, 0, 0, rank);
                let ends = self.op_slice_signed(&pads, 0, rank, 2 * rank);
                let grown = self.op_binary("Add", &inner, &begins);
                self.op_binary("Add", &grown, &ends)
            }
            _ => self.add_node("Shape", &[value], vec![]),
        }
    }

    /// The factors of `value` when it is a product of zero-padded factors (a `Mul` whose
    /// operands are each a `Pad` output, a constant or such a product, as the parallel scan pads
    /// its operands): its shape is then read off the factors, which are small, instead of off the
    /// product, which is state-sized (see [`Graph::op_shape_of`]).
    fn padded_product(&self, value: &str) -> Option<[String; 2]> {
        let (_, node) = self.producer(value)?;
        if node.op_type() != "Mul" || node.input.len() != 2 {
            return None;
        }
        let factor_ok = |factor: &str| {
            self.is_constant(factor)
                || self
                    .producer(factor)
                    .is_some_and(|(_, n)| n.op_type() == "Pad")
                || self.padded_product(factor).is_some()
        };
        let factors = [node.input[0].clone(), node.input[1].clone()];
        factors.iter().all(|f| factor_ok(f)).then_some(factors)
    }

    /// The runtime shape of the broadcast of `a` and `b` (ONNX's rule: right-aligned, a dim of
    /// 1 takes the other's), computed from their own shapes.
    fn op_broadcast_shapes(&mut self, a: &str, b: &str) -> String {
        let rank_of = |graph: &Graph, v: &str| graph.shape(v).map_or(0, |s| s.len());
        let (rank_a, rank_b) = (rank_of(self, a), rank_of(self, b));
        let rank = rank_a.max(rank_b);
        let mut shapes = Vec::new();
        for (value, own) in [(a, rank_a), (b, rank_b)] {
            let shape = match self.constant(value).map(|t| t.shape().to_vec()) {
                Some(dims) => self.const_i64(&dims.iter().map(|&d| d as i64).collect::<Vec<_>>()),
                None => self.op_shape_of(value),
            };
            shapes.push(if own < rank {
                let ones = self.const_i64(&vec![1; rank - own]);
                self.add_node("Concat", &[&ones, &shape], vec![make_int("axis", 0)])
            } else {
                shape
            });
        }
        let one = self.const_i64(&[1]);
        let b_is_one = self.add_node("Equal", &[&shapes[1], &one], vec![]);
        self.add_node("Where", &[&b_is_one, &shapes[0], &shapes[1]], vec![])
    }

    /// `x` reshaped to the runtime shape of `like` (no static dims baked in).
    pub fn op_reshape_like(&mut self, x: &str, like: &str) -> String {
        let shape = self.op_shape_of(like);
        self.add_node("Reshape", &[x, &shape], vec![])
    }

    /// `x` broadcast to the runtime shape of `like`.
    pub fn op_expand_like(&mut self, x: &str, like: &str) -> String {
        let shape = self.op_shape_of(like);
        self.add_node("Expand", &[x, &shape], vec![])
    }

    /// Float zeros with the runtime shape of `like`.
    pub fn op_zeros_like(&mut self, like: &str) -> String {
        let zero = self.scalar_like(0.0, like);
        self.op_expand_like(&zero, like)
    }

    pub fn op_zeros(&mut self, shape: &[usize], dtype: DType) -> String {
        let zero = self.scalar_float(0.0, dtype);
        self.op_expand(&zero, shape)
    }

    /// Zero-pads `x` by `before[i]` / `after[i]` elements on each axis.
    pub fn op_pad(&mut self, x: &str, before: &[usize], after: &[usize]) -> String {
        let pads: Vec<i64> = before.iter().chain(after).map(|&p| p as i64).collect();
        let p = self.const_i64(&pads);
        self.add_node("Pad", &[x, &p], vec![])
    }

    pub fn op_slice(&mut self, x: &str, axis: usize, start: usize, end: usize) -> String {
        self.op_slice_signed(x, axis, start as i64, end as i64)
    }

    /// Slice with ONNX index semantics (negative indices count from the end).
    pub fn op_slice_signed(&mut self, x: &str, axis: usize, start: i64, end: i64) -> String {
        let (s, e, a) = (
            self.const_i64(&[start]),
            self.const_i64(&[end]),
            self.const_i64(&[axis as i64]),
        );
        self.add_node("Slice", &[x, &s, &e, &a], vec![])
    }

    pub fn op_concat(&mut self, parts: &[String], axis: usize) -> String {
        if parts.len() == 1 {
            return parts[0].clone();
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.add_node("Concat", &refs, vec![make_int("axis", axis as i64)])
    }

    /// Sums a gradient of shape `from` down to the shape `to` it was broadcast from.
    pub fn op_unbroadcast(&mut self, g: &str, from: &[usize], to: &[usize]) -> Result<String> {
        self.op_unbroadcast_as(g, from, to, None)
    }

    /// `op_unbroadcast` of a `g` of known element type, which lets a sum over the last axis
    /// alone be a MatMul (see `op_sum_last_axis`).
    pub fn op_unbroadcast_as(
        &mut self,
        g: &str,
        from: &[usize],
        to: &[usize],
        dtype: Option<DType>,
    ) -> Result<String> {
        if from == to {
            return Ok(g.to_string());
        }
        let broadcastable = from.len() >= to.len()
            && to
                .iter()
                .rev()
                .zip(from.iter().rev())
                .all(|(&t, &f)| t == f || t == 1);
        if !broadcastable {
            return Err(Error::InvalidModel(format!(
                "value of shape {to:?} cannot have been broadcast to {from:?} (inconsistent declared shapes?)"
            )));
        }
        let lead = from.len() - to.len();
        let axes: Vec<i64> = (0..from.len())
            .filter(|&i| i < lead || (to[i - lead] == 1 && from[i] != 1))
            .map(|i| i as i64)
            .collect();
        let reduced = if axes.is_empty() {
            g.to_string()
        } else if let (Some(dtype), true) = (dtype, axes == [from.len() as i64 - 1]) {
            self.op_sum_last_axis(g, from, dtype, true)
        } else {
            self.op_reduce_sum(g, &axes, true)
        };
        // Drop the leading broadcast axes; no static shape is baked in.
        let leading: Vec<i64> = (0..lead as i64).collect();
        Ok(if leading.is_empty() {
            reduced
        } else {
            self.op_squeeze(&reduced, &leading)
        })
    }
}

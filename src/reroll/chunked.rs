//! The chunked (SSD-style) form of the selective scan. The sequence is cut into chunks of `len`
//! steps; one `Scan` iteration handles a whole chunk in parallel from cumulative sums of
//! log dA (Lc = cumsum(dt·A)): the state at step t of a chunk is
//! `sum_{s<=t} exp(Lc_t - Lc_s) dBu_s + exp(Lc_t) h_in`. Every exponent is <= 0, so nothing
//! overflows; the masked (s > t) entries are set to -inf before the Exp. The reverse Scan
//! runs the same algebra backwards in time for the relevance.
use super::body::Body;
use crate::ir::DType;
use crate::ir::Graph;
use crate::onnx::attributes::make_int;
use crate::onnx::proto::GraphProto;
use crate::onnx::Tensor;

/// Name hint of the forward Scan nodes of the chunked form (the backward pass recognises them).
pub const SELECTIVE_SCAN_CHUNKED: &str = "selective_scan_chunked";

/// Steps per chunk when `--scan chunked` is given without `--chunk-len`.
pub const DEFAULT_CHUNK_LEN: u16 = 4;

/// Cumulative log decay within the chunk `[B, D, L, N]`, over the time axis.
fn cumulative(body: &mut Body, log_decay: &str) -> String {
    let axis = body.constant("time_axis", Tensor::I64(ndarray::arr0(2).into_dyn()));
    body.node(
        "CumSum",
        "cumulative_log_decay",
        &[log_decay, &axis],
        vec![],
    )
}

/// `out_t = sum_s exp(Lc_t - Lc_s) v_s` over s <= t (`causal`), or `exp(Lc_s - Lc_t) v_s`
/// over s >= t (the reverse-time recurrence). The pair axes are t = 2, s = 3.
fn segment_sum(body: &mut Body, lc: &str, v: &str, len: usize, causal: bool) -> String {
    let (ax2, ax3) = (body.axes("pair_axis2", &[2]), body.axes("pair_axis3", &[3]));
    let along_t = body.node("Unsqueeze", "lc_t", &[lc, &ax3], vec![]);
    let along_s = body.node("Unsqueeze", "lc_s", &[lc, &ax2], vec![]);
    let exponent = if causal {
        body.node("Sub", "segment_log_decay", &[&along_t, &along_s], vec![])
    } else {
        body.node("Sub", "segment_log_decay", &[&along_s, &along_t], vec![])
    };
    let mask = ndarray::Array3::from_shape_fn(
        (len, len, 1),
        |(t, s, _)| {
            if causal {
                s <= t
            } else {
                s >= t
            }
        },
    );
    let mask = body.constant("segment_mask", Tensor::Bool(mask.into_dyn()));
    let minus_inf = body.float_scalar("minus_inf", f32::NEG_INFINITY);
    let masked = body.node(
        "Where",
        "masked_log_decay",
        &[&mask, &exponent, &minus_inf],
        vec![],
    );
    let weights = body.node("Exp", "segment_decay", &[&masked], vec![]);
    let v_s = body.node("Unsqueeze", "v_s", &[v, &ax2], vec![]);
    let terms = body.node("Mul", "segment_terms", &[&weights, &v_s], vec![]);
    body.node(
        "ReduceSum",
        "segment_sum",
        &[&terms, &ax3],
        vec![make_int("keepdims", 0)],
    )
}

fn step(body: &mut Body, local: &str, value: &str, index: usize) -> String {
    let at = body.constant(
        &format!("{local}_index"),
        Tensor::I64(ndarray::arr0(index as i64).into_dyn()),
    );
    body.node("Gather", local, &[value, &at], vec![make_int("axis", 2)])
}

/// State h `[B,D,N]`; per chunk log dA, dBu `[B,D,L,N]`, C `[B,L,N]` -> the state after the
/// chunk, y `[B,D,L]` (and the chunk's states `[B,D,L,N]` when `keep_states`).
pub fn forward_body(
    graph: &mut Graph,
    (b, d, n): (usize, usize, usize),
    len: usize,
    dtype: DType,
    keep_states: bool,
) -> GraphProto {
    let mut body = Body::new(graph, "selective_scan_chunked_body", dtype);
    let [h, la, u, c] = body.forward_inputs("log_decay_chunk", (b, d, len, n));
    let lc = cumulative(&mut body, &la);
    let within = segment_sum(&mut body, &lc, &u, len, true);
    let carried_decay = body.node("Exp", "decay_from_start", &[&lc], vec![]);
    let axis2 = body.axes("axis2", &[2]);
    let h4 = body.node("Unsqueeze", "h_prev_bd1n", &[&h, &axis2], vec![]);
    let carried = body.node("Mul", "carried", &[&carried_decay, &h4], vec![]);
    let states = body.node("Add", "states", &[&within, &carried], vec![]);
    let y = body.readout(&states, &c);
    let h_next = step(&mut body, "h_next", &states, len - 1);
    body.forward_outputs((&h_next, &y, &states), (b, d, len, n), keep_states);
    body.proto
}

/// Reverse time, one chunk per iteration. Carry s = dA_{next} * g_{h_next} `[B,D,N]`; per
/// chunk g_y `[B,D,L]`, C `[B,L,N]`, log dA `[B,D,L,N]` -> the chunk's g_h (emitted) and
/// s' = dA_first * g_h_first.
pub fn backward_body(
    graph: &mut Graph,
    (b, d, n): (usize, usize, usize),
    len: usize,
    dtype: DType,
) -> GraphProto {
    let mut body = Body::new(graph, "selective_scan_chunked_backward_body", dtype);
    let [carry, gy, c, la] = body.backward_inputs("log_decay_chunk", (b, d, len, n));
    let from_y = body.readout_transposed(&gy, &c);
    let lc = cumulative(&mut body, &la);
    let within = segment_sum(&mut body, &lc, &from_y, len, false);
    let end = step(&mut body, "lc_end", &lc, len - 1);
    let axis2 = body.axes("axis2", &[2]);
    let end4 = body.node("Unsqueeze", "lc_end_bd1n", &[&end, &axis2], vec![]);
    let to_end = body.node("Sub", "log_decay_to_end", &[&end4, &lc], vec![]);
    let to_end = body.node("Exp", "decay_to_end", &[&to_end], vec![]);
    let carry4 = body.node("Unsqueeze", "carry_bd1n", &[&carry, &axis2], vec![]);
    let carried = body.node("Mul", "carried", &[&to_end, &carry4], vec![]);
    let grad_h = body.node("Add", "grad_h_chunk", &[&within, &carried], vec![]);
    let first_log = step(&mut body, "first_log_decay", &la, 0);
    let first_decay = body.node("Exp", "first_decay", &[&first_log], vec![]);
    let first_grad = step(&mut body, "first_grad_h", &grad_h, 0);
    let carry_next = body.node("Mul", "carry_next", &[&first_decay, &first_grad], vec![]);
    let grad_out = body.node("Identity", "grad_h_chunk_out", &[&grad_h], vec![]);
    body.output(&carry_next, &[b, d, n]);
    body.output(&grad_out, &[b, d, len, n]);
    body.proto
}

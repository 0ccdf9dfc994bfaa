//! The parallel form of the selective scan: no `Scan`, no loop over time, a fixed number of
//! ops per layer whatever the length, so a GPU runs each as one kernel over all tokens.
//!
//! The sequence is cut into chunks of L steps, `[B, D, K, L, N]`. Within every chunk at once,
//! with lc_t the cumulative log decay from the chunk's start and m half its total:
//! `h_t = exp(lc_t - m) * cumsum_{s<=t}(exp(m - lc_s) * dBu_s)` (zero state entering the
//! chunk). The chunks' end states E_k and total decays G_k then pass from chunk to chunk,
//! `H_k = G_k H_{k-1} + E_k`, by log-depth doubling over the K chunks (Hillis-Steele:
//! `H <- H + A * shift(H, d)`, `A <- A * shift(A, d)` for d = 1, 2, 4, ...). Finally
//! `h_t += exp(lc_t) * H_{k-1}` and `y_t = <h_t, C_t>`. Every op is linear in dBu with frozen
//! factors (dA and C are stop-gradients under the SSM rule), so the relevance pass is the
//! transpose the autodiff derives from these ops: reverse CumSums and shifts.
//!
//! Numerics. The factors exp(+-(lc_t - m)) stay within float32's range because each step's log
//! decay is clamped at -T with T = min(20, 128 / L): |lc_t - m| <= L * T / 2 <= 64, and e^64 =
//! 6e27 leaves 10 orders of magnitude for dBu. The clamp replaces a decay factor below e^-T
//! (1.1e-7 for L = 8, 2e-9 for L <= 6) by e^-T: the carried state changes by at most that
//! fraction of itself, float32's rounding. Half precision computes in float32.
use super::chain::Chain;
use super::layout;
use crate::error::{Error, Result};
use crate::ir::{is_zero_fill, DType, Graph};
use crate::onnx::attributes::make_int;

/// Steps per chunk when `--scan parallel` is given without `--chunk-len`.
pub const DEFAULT_CHUNK_LEN: usize = 8;
/// The longest chunk whose factors stay within float32's range with a clamp below eps.
pub const MAX_CHUNK_LEN: usize = 8;
/// Longest sequence a model with a symbolic length serves: the doubling steps are fixed in the
/// graph (a [1, 1536, 2^20, 16] float32 tensor alone would take 100 GB).
pub const MAX_SYMBOLIC_LENGTH: usize = 1 << 20;

/// The per-step log-decay clamp T for chunks of `len` steps (see the module doc).
pub fn log_decay_floor(len: usize) -> f32 {
    (128.0 / len as f32).min(20.0)
}

/// Doubling steps that cover `chunks` chunks.
fn doubling_steps(chunks: usize) -> usize {
    let mut steps = 0;
    while (1usize << steps) < chunks {
        steps += 1;
    }
    steps
}

/// Replaces one unrolled chain by the parallel form with chunks of `len` steps.
pub(super) fn emit(graph: &mut Graph, chain: &Chain, len: usize, symbolic: bool) -> Result<()> {
    if !(1..=MAX_CHUNK_LEN).contains(&len) {
        return Err(Error::Unsupported(format!(
            "--scan parallel takes --chunk-len 1 to {MAX_CHUNK_LEN} (got {len}): longer chunks \
             would need log-space factors beyond float32's range"
        )));
    }
    let (_, _, seq, n) = chain.dims;
    let exported = graph.dtype_of(&chain.decay);
    // Half precision has no room for exp(+-64): the scan runs in float32.
    let dtype = match exported {
        DType::Float16 | DType::BFloat16 => DType::Float,
        other => other,
    };
    let log_decay = layout::log_decay_of(graph, &chain.decay, "parallel")?;
    let (log_decay, input) = if chain.step_axis == 1 {
        (
            graph.op_transpose(&log_decay, &[0, 2, 1, 3]),
            graph.op_transpose(&chain.input, &[0, 2, 1, 3]),
        )
    } else {
        (log_decay, chain.input.clone())
    };
    let cast = |graph: &mut Graph, value: &str| {
        if graph.dtype_of(value) == dtype {
            value.to_string()
        } else {
            graph.add_node("Cast", &[value], vec![make_int("to", dtype.onnx() as i64)])
        }
    };
    let (log_decay, input, readout) = (
        cast(graph, &log_decay),
        cast(graph, &input),
        cast(graph, &chain.readout),
    );
    let floor = graph.scalar_float(-log_decay_floor(len) as f64, dtype);
    let log_decay = graph.add_node("Max", &[&log_decay, &floor], vec![]);

    // Pad the time axis to whole chunks (at run time for a symbolic length). Padded steps have
    // log decay 0 and dBu = C = 0: they change no y_t.
    let seq_value = (symbolic || !seq.is_multiple_of(len)).then(|| {
        graph.add_node(
            "Shape",
            &[&input],
            vec![make_int("start", 2), make_int("end", 3)],
        )
    });
    let to_chunks = |graph: &mut Graph, value: &str, rank: usize, shape: &[i64]| {
        let value = match &seq_value {
            Some(seq) => {
                let pad = layout::padding(graph, seq, len);
                let pads = layout::pads(graph, &pad, rank);
                graph.add_node("Pad", &[value, &pads], vec![])
            }
            None => value.to_string(),
        };
        let shape = graph.const_i64(shape);
        graph.add_node("Reshape", &[&value, &shape], vec![])
    };
    let chunked = [0, 0, -1, len as i64, n as i64];
    let log_decay = to_chunks(graph, &log_decay, 4, &chunked);
    let input = to_chunks(graph, &input, 4, &chunked);
    // C [B, S, N] -> [B, 1, K, L, N]
    let readout = to_chunks(graph, &readout, 3, &[0, 1, -1, len as i64, n as i64]);

    // Within chunks.
    let step_axis = graph.scalar_i64(3);
    let cumulative = graph.add_node("CumSum", &[&log_decay, &step_axis], vec![]);
    let total = graph.op_slice_signed(&cumulative, 3, len as i64 - 1, len as i64);
    let half = graph.scalar_float(0.5, dtype);
    let middle = graph.add_node("Mul", &[&total, &half], vec![]);
    let to_step = graph.add_node("Sub", &[&cumulative, &middle], vec![]);
    let from_step = graph.add_node("Sub", &[&middle, &cumulative], vec![]);
    let growth = graph.add_node("Exp", &[&to_step], vec![]);
    let shrink = graph.add_node("Exp", &[&from_step], vec![]);
    let scaled = graph.add_node("Mul", &[&shrink, &input], vec![]);
    let summed = graph.add_node("CumSum", &[&scaled, &step_axis], vec![]);
    let local = graph.add_node("Mul", &[&growth, &summed], vec![]);

    // Between chunks: ends E and decays G [B, D, K, 1, N].
    let mut ends = graph.op_slice_signed(&local, 3, len as i64 - 1, len as i64);
    let mut decays = graph.add_node("Exp", &[&total], vec![]);
    let initial = !is_zero_fill(graph, &chain.h0);
    let chunks = seq.div_ceil(len) + usize::from(initial);
    if initial {
        // h0 enters as a chunk of its own before the first.
        let axes = graph.const_i64(&[2, 3]);
        let h0 = cast(graph, &chain.h0);
        let h0 = graph.add_node("Unsqueeze", &[&h0, &axes], vec![]);
        ends = graph.add_node("Concat", &[&h0, &ends], vec![make_int("axis", 2)]);
        decays = shift(graph, &decays, 1);
    }
    let steps = if symbolic {
        doubling_steps(MAX_SYMBOLIC_LENGTH.div_ceil(len) + 1)
    } else {
        doubling_steps(chunks)
    };
    let (mut states, mut spans) = (ends, decays);
    for step in 0..steps {
        let d = 1 << step;
        let earlier = shift(graph, &states, d);
        let carried = graph.add_node("Mul", &[&spans, &earlier], vec![]);
        states = graph.add_node("Add", &[&states, &carried], vec![]);
        if step + 1 < steps {
            let earlier = shift(graph, &spans, d);
            spans = graph.add_node("Mul", &[&spans, &earlier], vec![]);
        }
    }
    // The state entering each chunk.
    let entering = if initial {
        graph.op_slice_signed(&states, 2, 0, -1)
    } else {
        shift(graph, &states, 1)
    };
    let from_start = graph.add_node("Exp", &[&cumulative], vec![]);
    let carried = graph.add_node("Mul", &[&from_start, &entering], vec![]);
    let h = graph.add_node("Add", &[&local, &carried], vec![]);
    let products = graph.add_node("Mul", &[&h, &readout], vec![]);
    let state_axis = graph.const_i64(&[4]);
    let y = graph.add_node(
        "ReduceSum",
        &[&products, &state_axis],
        vec![make_int("keepdims", 0)],
    );
    let flat = graph.const_i64(&[0, 0, -1]);
    let mut y = graph.add_node("Reshape", &[&y, &flat], vec![]);
    if let Some(seq) = &seq_value {
        let (start, axis) = (graph.const_i64(&[0]), graph.const_i64(&[2]));
        y = graph.add_node("Slice", &[&y, &start, seq, &axis], vec![]);
    }
    layout::finish(graph, chain, y, dtype)
}

/// `value` moved `by` chunks later along the chunk axis 2 of a rank-5 value, zeros entering.
fn shift(graph: &mut Graph, value: &str, by: usize) -> String {
    let mut before = [0; 5];
    before[2] = by;
    let padded = graph.op_pad(value, &before, &[0; 5]);
    graph.op_slice_signed(&padded, 2, 0, -(by as i64))
}

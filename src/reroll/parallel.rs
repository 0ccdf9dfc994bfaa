//! The parallel form of the selective scan: no `Scan`, no loop over time, a fixed number of
//! ops per layer whatever the length, so a GPU runs each as one kernel over all tokens.
//!
//! The linear recurrence `h_t = a_t h_{t-1} + u_t` (a = dA, u = dBu, `[B, D, T, N]`) is solved
//! in chunks of L steps, `[B, D, K, L, N]`, all chunks at once. Within a chunk, with lc_t the
//! cumulative log decay from the chunk's start (`CumSum`), m half the chunk's total and
//! g_t = exp(lc_t - m): `h_t = g_t * cumsum_{s<=t}(u_s / g_s)` (zero state entering it): O(T*D*N)
//! work, no [L, L] intermediates. The chunks' end states E_k = exp(m) * cumsum_{s<L}(u_s / g_s)
//! (g at the last step is exp(m)) and total decays G_k obey the same recurrence one level up,
//! `H_k = G_k H_{k-1} + E_k`, over K = T/L elements: solved the same way, recursively, until one
//! chunk holds everything (ceil(log_L T) levels for a fixed length; with a symbolic one, enough
//! for the longest length the model serves, `--max-seq-len`, and a longer input stops the run at
//! the top level's `Reshape`, which then has more than one chunk to hold). The state entering a
//! chunk decays by exp(lc_t) = g_t * exp(m), so each level adds it inside the bracket:
//! `h_t = g_t * (cumsum_{s<=t}(u_s / g_s) + exp(m) * H_{k-1})`, where exp(m) * H_{k-1} is one
//! value per chunk, not per step. Finally `y_t = <h_t, C_t>`. Every op is
//! linear in u with frozen factors (dA and C are stop-gradients under the SSM rule), so the
//! relevance pass is the transpose the autodiff derives from these ops: reverse CumSums, slices
//! and pads. Per level that is 3 ops over every step for the factors (`CumSum`, `Sub`, `Exp`) and
//! 5 for the states (the quotient `Div`, `CumSum`, the chunk sums' `ReduceSum`, the carry's
//! `Add`, `Mul`). After differentiation the chunk sums, and their transposes' sums in the
//! relevance pass, are read off the cumulative sums as one step of them
//! (`emit::read_sums_off_prefix_sums`), so neither pass reads a state-sized tensor only to sum
//! it. The input `dt * B * u` is multiplied as `(dt * u) * B`
//! ([`regroup_product`]): one state-sized product, and one in its transpose.
//!
//! Numerics. The factors g_t^{+-1} = exp(+-(lc_t - m)) stay within float32's range because every
//! log decay entering a level (a step's, or a chunk's total one level up) is clamped at -T with
//! T = min(20, 128 / L): |lc_t - m| <= L * T / 2 <= 64, and e^64 = 6e27 leaves 10 orders of
//! magnitude for u; exp(m) lies in [e^-64, 1], a normal float32. The clamp replaces a decay
//! factor below e^-T (1.1e-7 for L = 8, 2e-9 for L <= 6) by e^-T: the carried state changes by at
//! most that fraction of itself, float32's rounding. Half precision computes in float32.
use super::chain::Chain;
use super::layout;
use crate::error::{Error, Result};
use crate::ir::{is_zero_fill, DType, Graph};
use crate::onnx::attributes::make_int;

/// Steps per chunk when `--scan parallel` is given without `--chunk-len`.
pub const DEFAULT_CHUNK_LEN: usize = 8;
/// Chunk lengths the form takes: at least 2 (each level must shrink the problem), at most the
/// longest whose factors stay within float32's range with a clamp below eps.
pub const CHUNK_LENS: std::ops::RangeInclusive<usize> = 2..=8;
/// The longest sequence a model with a symbolic length serves when `--max-seq-len` is not
/// given. The number of levels is fixed in the graph, and every level costs a few dozen small
/// kernels per layer at any length, so this is no longer than needed: the form's working set is
/// about 3.8 MB per token for the 130M model (159 KB per token and layer on an H200), so 2^18
/// tokens would need about 1 TB of device memory.
pub const DEFAULT_MAX_SYMBOLIC_LENGTH: usize = 1 << 18;

/// The longest length a symbolic-length model asked to serve `longest` steps in chunks of `len`
/// serves: what the top level's one chunk covers, `len^(levels + 1)`, at least `longest`.
pub fn served_length(longest: usize, len: usize) -> usize {
    (0..=levels_for(longest, len)).fold(1usize, |covered, _| covered.saturating_mul(len))
}

/// The per-step log-decay clamp T for chunks of `len` steps (see the module doc).
pub fn log_decay_floor(len: usize) -> f32 {
    (128.0 / len as f32).min(20.0)
}

/// What every level shares.
struct Form {
    len: usize,
    n: usize,
    dtype: DType,
    /// With a symbolic length, the longest length served (see [`served_length`]).
    longest: Option<usize>,
    floor: String,
}

/// Replaces one unrolled chain by the parallel form with chunks of `len` steps; `longest`, for a
/// symbolic length, is the longest length to serve.
pub(super) fn emit(
    graph: &mut Graph,
    chain: &Chain,
    len: usize,
    longest: Option<usize>,
) -> Result<()> {
    if !CHUNK_LENS.contains(&len) {
        return Err(Error::Unsupported(format!(
            "--scan parallel takes --chunk-len {} to {} (got {len}): shorter chunks would not \
             shrink the problem, longer ones would need factors beyond float32's range",
            CHUNK_LENS.start(),
            CHUNK_LENS.end()
        )));
    }
    let (_, _, seq, n) = chain.dims;
    if let Some(longest) = longest.filter(|&longest| longest < seq) {
        return Err(Error::Unsupported(format!(
            "--max-seq-len {longest} is shorter than the length the model was traced at ({seq}), \
             at which it is verified"
        )));
    }
    let levels = levels_for(longest.unwrap_or(seq), len);
    // Half precision has no room for exp(+-64): the scan runs in float32.
    let dtype = match graph.dtype_of(&chain.decay) {
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
        (log_decay, regroup_product(graph, &chain.input))
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
    let form = Form {
        len,
        n,
        dtype,
        longest: longest.map(|longest| served_length(longest, len)),
        floor,
    };
    let chunked = solve(graph, &form, &log_decay, &input, seq, levels);
    // y_t = <h_t, C_t>, read out in the chunk layout, so that no [B, D, T, N] copy is made to
    // un-chunk the states (nor kept for the relevance pass to read its shape):
    // C [B, T, N] -> [B, 1, K, L, N], y [B, D, K, L] -> [B, D, T].
    let readout_chunks = {
        let padded = match &chunked.runtime {
            Some((_, pad)) => {
                let pads = layout::pads(graph, pad, 3);
                graph.add_node("Pad", &[&readout, &pads], vec![])
            }
            None => readout.clone(),
        };
        let shape = graph.const_i64(&[0, -1, len as i64, n as i64]);
        let chunks = graph.add_node("Reshape", &[&padded, &shape], vec![]);
        graph.op_unsqueeze(&chunks, &[1])
    };
    let products = graph.add_node("Mul", &[&chunked.states, &readout_chunks], vec![]);
    let (batch, channels, _, _) = chain.dims;
    let products_shape = [batch, channels, seq.div_ceil(len), len, n];
    let y = graph.op_sum_last_axis(&products, &products_shape, dtype, false);
    let flat = graph.const_i64(&[0, 0, -1]);
    let y = graph.add_node("Reshape", &[&y, &flat], vec![]);
    // The trim reads the products' shape here, in the forward pass: a read of it by the
    // relevance pass merges with this one instead of keeping the products alive (see `trim`).
    let mut y = trim(graph, &y, &chunked, (&products, len));
    if !is_zero_fill(graph, &chain.h0) {
        // h0 decays from the first step on: exp(cumsum(log a)) h0 (every exponent <= 0).
        let time = graph.scalar_i64(2);
        let log_decay = graph.add_node("Max", &[&log_decay, &form.floor], vec![]);
        let decayed = graph.add_node("CumSum", &[&log_decay, &time], vec![]);
        let decayed = graph.add_node("Exp", &[&decayed], vec![]);
        let h0 = cast(graph, &chain.h0);
        let h0 = graph.op_unsqueeze(&h0, &[2]);
        let from_h0 = graph.add_node("Mul", &[&decayed, &h0], vec![]);
        let readout = graph.op_unsqueeze(&readout, &[1]);
        let products = graph.add_node("Mul", &[&from_h0, &readout], vec![]);
        let y_h0 = graph.op_reduce_sum(&products, &[3], false);
        y = graph.add_node("Add", &[&y, &y_h0], vec![]);
    }
    layout::finish(graph, chain, y, dtype)
}

/// Levels (after the first) that reduce `seq` steps to one chunk of `len`.
fn levels_for(seq: usize, len: usize) -> usize {
    let (mut levels, mut covered) = (0, len);
    while covered < seq {
        covered = covered.saturating_mul(len);
        levels += 1;
    }
    levels
}

/// One level's states, still in chunks: `[B, D, K, L, N]` over the time axis padded to whole
/// chunks.
struct Chunked {
    states: String,
    /// The runtime length and the steps padded after it (`None`: a fixed length of whole
    /// chunks, nothing padded).
    runtime: Option<(String, String)>,
}

/// `[B, D, K, L, N]` -> `[B, D, K * L, N]`, to a target built from the runtime shape of
/// `chunks`: the relevance pass reshapes back to that shape, and so reads the forward's copy
/// (`Graph::merge_duplicate_shapes`) instead of keeping `chunks` alive to read it late.
fn flatten_chunks(graph: &mut Graph, chunks: &str, n: i64) -> String {
    let shape = graph.add_node("Shape", &[chunks], vec![]);
    let lead = graph.op_slice_signed(&shape, 0, 0, 2);
    let rest = graph.const_i64(&[-1, n]);
    let target = graph.add_node("Concat", &[&lead, &rest], vec![make_int("axis", 0)]);
    graph.add_node("Reshape", &[chunks, &target], vec![])
}

/// `value` `[B, D, K * L, ..]`, trimmed to the runtime length of `chunked` along axis 2. The
/// end is written `min(length, K * L)` (the length), with K read off the shape of `chunks`
/// `[B, D, K, ..]` and `per_chunk` = L (`value` itself, flat, with L = 1): reading that shape
/// here merges with the relevance pass's read of it (`Graph::merge_duplicate_shapes`), which
/// would otherwise keep `chunks` alive until the relevance pass.
fn trim(
    graph: &mut Graph,
    value: &str,
    chunked: &Chunked,
    (chunks, per_chunk): (&str, usize),
) -> String {
    let Some((seq, _)) = &chunked.runtime else {
        return value.to_string();
    };
    let mut padded = layout::runtime_length(graph, chunks);
    if per_chunk > 1 {
        let per_chunk = graph.const_i64(&[per_chunk as i64]);
        padded = graph.add_node("Mul", &[&padded, &per_chunk], vec![]);
    }
    let end = graph.add_node("Min", &[seq, &padded], vec![]);
    layout::first_steps(graph, value, &end)
}

/// The states of `h_t = exp(log_decay_t) h_{t-1} + input_t` from a zero state, in chunks
/// (see [`Chunked`]); T traced at `seq`, with `levels` more levels above this one.
fn solve(
    graph: &mut Graph,
    form: &Form,
    log_decay: &str,
    input: &str,
    seq: usize,
    levels: usize,
) -> Chunked {
    let (len, n) = (form.len, form.n as i64);
    let symbolic = form.longest.is_some();
    // Pad the time axis to whole chunks (at run time for a symbolic length). Padded steps have
    // log decay 0 and input 0: they change no state before them.
    let runtime = (symbolic || !seq.is_multiple_of(len)).then(|| {
        // Read off a small factor of the input (see `pad_steps`): a read of the input's own
        // shape would keep the state-sized product alive once its padded copy replaces it.
        let (carrier, rank) = time_carrier(graph, input, seq > 1);
        let shape = graph.add_node("Shape", &[&carrier], vec![]);
        let seq = graph.op_slice_signed(&shape, 0, rank as i64 - 2, rank as i64 - 1);
        let pad = layout::padding(graph, &seq, len);
        (seq, pad)
    });
    // The top level of a symbolic length holds exactly one chunk: an input longer than the
    // levels serve fails here, in a node whose name says why, instead of running without the
    // carry between the top level's chunks.
    let guard = match form.longest {
        Some(longest) if levels == 0 => Some(format!("max_seq_len_{longest}_exceeded")),
        _ => None,
    };
    let chunks_dim = if guard.is_some() { 1 } else { -1 };
    let chunk_shape = graph.const_i64(&[0, 0, chunks_dim, len as i64, n]);
    let to_chunks = |graph: &mut Graph, value: &str| {
        let value = match &runtime {
            Some((_, pad)) => pad_steps(graph, value, pad, seq > 1),
            None => value.to_string(),
        };
        let hint = guard.as_deref().unwrap_or("Reshape");
        let reshaped = graph.add_node_named(hint, "Reshape", &[&value, &chunk_shape], 1, vec![]);
        reshaped.into_iter().next().expect("one output")
    };
    // Every log decay entering a level is clamped (see the module doc); padded steps have log
    // decay 0, above the floor.
    let log_decay = to_chunks(graph, log_decay);
    let log_decay = graph.add_node("Max", &[&log_decay, &form.floor], vec![]);
    let input = to_chunks(graph, input);

    // Within chunks: `states = growth * cumsum(u / growth)` with growth = exp(lc - m). The
    // quotient's transpose divides by a recomputed growth (`remat`), so growth is not kept.
    let step_axis = graph.scalar_i64(3);
    let cumulative = graph.add_node("CumSum", &[&log_decay, &step_axis], vec![]);
    let total = graph.op_slice_signed(&cumulative, 3, len as i64 - 1, len as i64);
    let half = graph.scalar_float(0.5, form.dtype);
    let middle = graph.add_node("Mul", &[&total, &half], vec![]);
    let to_step = graph.add_node("Sub", &[&cumulative, &middle], vec![]);
    let growth = graph.add_node("Exp", &[&to_step], vec![]);
    let scaled = graph.add_node("Div", &[&input, &growth], vec![]);
    let mut summed = graph.add_node("CumSum", &[&scaled, &step_axis], vec![]);

    // Between chunks: the same recurrence over the chunks' ends, one level up.
    let chunks = seq.div_ceil(len);
    if levels > 0 && (symbolic || chunks > 1) {
        // growth at a chunk's last step is exp(total - m) = exp(m) (m = total / 2, exactly), so
        // the chunk's end state from its own inputs is exp(m) * summed at that step: [.., K, 1, N]
        // values.
        let at_middle = graph.add_node("Exp", &[&middle], vec![]);
        // The cumulative sum at the chunk's last step is the sum over the chunk, taken here as a
        // `ReduceSum`: its transpose is a broadcast (`Contribution::Spread`). Read as a slice
        // of `summed`, its transpose was a state-sized `Pad` that ONNX Runtime's CUDA kernel
        // runs at 4.7 ms ([1, 1536, 256, 8, 16] on an H200, against 0.34 ms for the sum).
        // Once the relevance pass is derived, the sum itself becomes that slice
        // (`emit::read_sums_off_prefix_sums`).
        let last = graph.op_reduce_sum(&scaled, &[3], true);
        let ends = graph.add_node("Mul", &[&at_middle, &last], vec![]);
        // The relevance pass reads no shape of these values: Squeeze's transpose needs none,
        // and the flattening Reshape takes its target from the shape the forward reads.
        let ends = graph.op_squeeze(&ends, &[3]);
        let spans = graph.op_squeeze(&total, &[3]);
        let above = solve(graph, form, &spans, &ends, chunks, levels - 1);
        let after = flatten_chunks(graph, &above.states, n);
        let after = trim(graph, &after, &above, (&after, 1));
        // The state entering chunk k is the one after chunk k - 1 (zero for the first): shifted
        // by one and cut to the length of `after`, read off its shape (which the relevance
        // pass reads too: the reads merge, so `after` is not kept for it).
        let shifted = graph.op_pad(&after, &[0, 0, 1, 0], &[0; 4]);
        let count = layout::runtime_length(graph, &after);
        let entering = layout::first_steps(graph, &shifted, &count);
        let entering = graph.op_unsqueeze(&entering, &[3]);
        // It decays by exp(lc_t) = growth * exp(m): inside the bracket, as exp(m) * H_{k-1}
        // ([.., K, 1, N]; exp(m) >= e^-64, a normal float32).
        let carried = graph.add_node("Mul", &[&at_middle, &entering], vec![]);
        summed = graph.add_node("Add", &[&summed, &carried], vec![]);
    }
    let states = graph.add_node("Mul", &[&growth, &summed], vec![]);
    Chunked { states, runtime }
}

/// The operands of `value` when it is a broadcasting product: a two-operand `Mul` of known
/// shapes whose result is larger than one of them (`dt * B`, not `x * sigmoid(x)`).
fn broadcast_factors(graph: &Graph, value: &str) -> Option<[String; 2]> {
    let (_, node) = graph.producer(value)?;
    if node.op_type() != "Mul" || node.input.len() != 2 {
        return None;
    }
    let size = |value: &str| graph.shape(value).ok().map(|s| s.iter().product::<usize>());
    let (a, b, product) = (size(&node.input[0])?, size(&node.input[1])?, size(value)?);
    (a < product || b < product).then(|| [node.input[0].clone(), node.input[1].clone()])
}

/// `value`, a product of broadcast factors, multiplied again so that factors spanning the same
/// axes meet first: `(dt * B) * u` becomes `(dt * u) * B`. That is one `[B, D, T, N]` product
/// instead of two, and one fewer in the relevance pass too, which multiplies the cotangent by
/// the other operand of each product on the way to u.
fn regroup_product(graph: &mut Graph, value: &str) -> String {
    let mut leaves = Vec::new();
    let mut pending = vec![value.to_string()];
    while let Some(current) = pending.pop() {
        match broadcast_factors(graph, &current) {
            Some(operands) => pending.extend(operands.into_iter().rev()),
            None => leaves.push(current),
        }
    }
    let Ok(rank) = graph.shape(value).map(|s| s.len()) else {
        return value.to_string();
    };
    // The axes each factor spans, right-aligned as broadcasting aligns them.
    let spans = |graph: &Graph, leaf: &str| {
        let shape = graph.shape(leaf).unwrap_or_default();
        let mut span = vec![false; rank.saturating_sub(shape.len())];
        span.extend(shape.iter().map(|&dim| dim > 1));
        span
    };
    let mut groups: Vec<(Vec<bool>, Vec<String>)> = Vec::new();
    for leaf in leaves {
        let span = spans(graph, &leaf);
        match groups.iter_mut().find(|(key, _)| *key == span) {
            Some((_, members)) => members.push(leaf),
            None => groups.push((span, vec![leaf])),
        }
    }
    if groups.iter().all(|(_, members)| members.len() == 1) {
        return value.to_string();
    }
    let mut products: Vec<String> = groups
        .into_iter()
        .map(|(_, members)| {
            let mut members = members.into_iter();
            let first = members.next().expect("a group has a member");
            members.fold(first, |acc, leaf| {
                graph.add_node("Mul", &[&acc, &leaf], vec![])
            })
        })
        .collect();
    // The smallest groups first, so that only the last product has the full size.
    let size = |graph: &Graph, value: &str| {
        graph
            .shape(value)
            .map_or(usize::MAX, |s| s.iter().product())
    };
    products.sort_by_key(|p| size(graph, p));
    let mut products = products.into_iter();
    let first = products.next().expect("at least one group");
    products.fold(first, |acc, group| {
        graph.add_node("Mul", &[&acc, &group], vec![])
    })
}

/// The two factors of `value` when `pad_steps` splits it (a broadcasting product; never when
/// `split` is false), each with whether it carries the time axis (the one before last, longer
/// than 1; a shorter one is broadcast along it).
fn time_factors(graph: &Graph, value: &str, split: bool) -> Option<[(String, bool); 2]> {
    if !split {
        return None;
    }
    let factor = |operand: String| {
        let shape = graph.shape(&operand).ok()?;
        let carries = shape.len() >= 2 && shape[shape.len() - 2] > 1;
        Some((operand, carries))
    };
    let [a, b] = broadcast_factors(graph, value)?;
    Some([factor(a)?, factor(b)?])
}

/// The factor of `value` that `pad_steps` pads with the fewest elements, and its rank (its time
/// axis is the one before last, as long as `value`'s).
fn time_carrier(graph: &Graph, value: &str, split: bool) -> (String, usize) {
    let size = |value: &str| {
        graph
            .shape(value)
            .map_or(usize::MAX, |s| s.iter().product())
    };
    let mut best = value.to_string();
    let mut pending = vec![value.to_string()];
    while let Some(current) = pending.pop() {
        if size(&current) < size(&best) {
            best = current.clone();
        }
        for (factor, carries) in time_factors(graph, &current, split).into_iter().flatten() {
            if carries {
                pending.push(factor);
            }
        }
    }
    let rank = graph.shape(&best).map_or(4, |s| s.len());
    (best, rank)
}

/// `value` (rank 4, time axis 2) with `pad` zero steps appended to its time axis. A `Pad` copies
/// its whole input, and here that is a state-sized tensor, so when `value` is a broadcasting
/// product (`dt * A` for the log decay, `(dt * u) * B` for the input) the factors that carry
/// the time axis are padded instead, recursively, and multiplied again: zeros times the finite
/// factors that do not carry it are zeros, so the product of the padded factors is the padded
/// product, and the pads fall on `[B, D, T, 1]` and `[B, 1, T, N]` operands. `split` is false
/// when a time axis of size 1 cannot be told from a broadcast one (a length of 1).
fn pad_steps(graph: &mut Graph, value: &str, pad: &str, split: bool) -> String {
    match time_factors(graph, value, split) {
        Some(factors) => {
            let [a, b] = factors.map(|(factor, carries)| {
                if carries {
                    pad_steps(graph, &factor, pad, split)
                } else {
                    factor
                }
            });
            graph.add_node("Mul", &[&a, &b], vec![])
        }
        None => {
            let rank = graph.shape(value).map_or(4, |shape| shape.len());
            let pads = layout::pads(graph, pad, rank);
            graph.add_node("Pad", &[value, &pads], vec![])
        }
    }
}

//! The layout both compact forms share: the time axis padded at run time to whole chunks of L
//! steps, operands reshaped to `[.., K chunks, L steps, ..]`, one `Scan` iteration per chunk,
//! and the stacked y trimmed back to the runtime length. So one graph serves every length, and
//! the relevance pass differentiates the pad, reshape and trim like any other op.
use super::chain::Chain;
use super::{bodies, chunked, ScanKind, SELECTIVE_SCAN, SELECTIVE_SCAN_CHUNKED};
use crate::error::{Error, Result};
use crate::ir::scan::{self, SelectiveScan};
use crate::ir::{skip_noops, DType, Graph};
use crate::onnx::attributes::{make_graph, make_int, make_ints};

/// Replaces one unrolled chain by a Scan over chunks of `len` steps of the given kind: the
/// chain's Concat goes, and the new stacked y takes over its output's name, so its readers need
/// no rewiring.
pub(super) fn emit(
    graph: &mut Graph,
    chain: &Chain,
    kind: ScanKind,
    len: usize,
    keep_states: bool,
    pad_at_runtime: bool,
) -> Result<()> {
    let (b, d, _, n) = chain.dims;
    // Stepwise chunks multiply by dA; parallel ones sum its logarithm.
    let decay = match kind {
        ScanKind::Stepwise => chain.decay.clone(),
        ScanKind::Chunked => log_decay_of(graph, &chain.decay, "chunked")?,
    };
    let dtype = graph.dtype_of(&chain.decay);
    // Time-first dA and dB*u `[B, S, D, N]` go to the Scan's `[B, D, S, N]`.
    let (decay, chain_input) = if chain.step_axis == 1 {
        (
            graph.op_transpose(&decay, &[0, 2, 1, 3]),
            graph.op_transpose(&chain.input, &[0, 2, 1, 3]),
        )
    } else {
        (decay, chain.input.clone())
    };
    let mut operands = Vec::new();
    // In the Scan's operand order (scan::H0, DECAY, INPUT, READOUT).
    for value in [&chain.h0, &decay, &chain_input, &chain.readout] {
        operands.push(if graph.dtype_of(value) == dtype {
            value.clone()
        } else {
            graph.add_node("Cast", &[value], vec![make_int("to", dtype.onnx() as i64)])
        });
    }
    let [h0, decay, input, readout] = &operands[..] else {
        unreachable!("four operands")
    };
    let per_chunk4 = graph.const_i64(&[0, 0, -1, len as i64, n as i64]);
    let per_chunk3 = graph.const_i64(&[0, -1, len as i64, n as i64]);
    let chunked = |graph: &mut Graph, value: &str, pads: Option<&str>, shape: &str| {
        let value = match pads {
            Some(pads) => graph.add_node("Pad", &[value, pads], vec![]),
            None => value.to_string(),
        };
        graph.add_node("Reshape", &[&value, shape], vec![])
    };
    // With a symbolic length the time axis is padded at run time up to whole chunks, so the
    // same graph serves any length. Padded steps come after the real ones and have dBu = C = 0:
    // they leave every y_t and every relevance unchanged. (Zero fills keep the pads linear; the
    // Scan's final state, which no exported graph reads, then ends at zero.) A fixed length
    // gets a chunk length dividing it and no pad: padding copies every operand.
    let seq = pad_at_runtime.then(|| runtime_length(graph, input));
    let (pads4, pads3) = match &seq {
        Some(seq) => {
            let pad = padding(graph, seq, len);
            (Some(pads(graph, &pad, 4)), Some(pads(graph, &pad, 3)))
        }
        None => (None, None),
    };
    let decay = chunked(graph, decay, pads4.as_deref(), &per_chunk4);
    let input = chunked(graph, input, pads4.as_deref(), &per_chunk4);
    let readout = chunked(graph, readout, pads3.as_deref(), &per_chunk3);

    let produced = selective_scan(
        graph,
        kind,
        [h0, &decay, &input, &readout],
        (b, d, n),
        len,
        keep_states,
    );
    let flat = graph.const_i64(&[0, 0, -1]);
    let mut y = graph.add_node("Reshape", &[&produced[scan::Y], &flat], vec![]);
    if let Some(seq) = &seq {
        y = first_steps(graph, &y, seq);
    }
    finish(graph, chain, y, dtype)
}

/// Puts the re-rolled y `[B, D, S]` (of `dtype`) in place of the chain's stack: in its layout and dtype,
/// under its name, so its readers need no rewiring.
pub(super) fn finish(graph: &mut Graph, chain: &Chain, mut y: String, dtype: DType) -> Result<()> {
    if chain.stacked_axis == 1 {
        y = graph.op_transpose(&y, &[0, 2, 1]);
    }
    let stacked_dtype = graph.dtype_of(&chain.stacked);
    if dtype != stacked_dtype {
        y = graph.add_node(
            "Cast",
            &[&y],
            vec![make_int("to", stacked_dtype.onnx() as i64)],
        );
    }
    // The Concat gives up the stacked name (it is dead now; the caller's sweep removes it).
    let retired = graph.fresh_name("unrolled_stack");
    graph.rename_output(&chain.stacked, &retired);
    graph.rename_output(&y, &chain.stacked);
    Ok(())
}

/// The runtime length (int64 `[1]`) of `value`'s time axis, axis 2. Sliced from its whole
/// shape, which the relevance pass reads too: the two reads merge into one the forward pass
/// makes (see `Graph::merge_duplicate_shapes`).
pub(super) fn runtime_length(graph: &mut Graph, value: &str) -> String {
    let shape = graph.add_node("Shape", &[value], vec![]);
    graph.op_slice_signed(&shape, 0, 2, 3)
}

/// The first `end` (int64 `[1]`, computed at run time) steps of `value` along its time axis, 2.
pub(super) fn first_steps(graph: &mut Graph, value: &str, end: &str) -> String {
    let (start, axis) = (graph.const_i64(&[0]), graph.const_i64(&[2]));
    graph.add_node("Slice", &[value, &start, end, &axis], vec![])
}

/// How many steps pad the runtime length `seq` up to whole chunks of `len`.
pub(super) fn padding(graph: &mut Graph, seq: &str, len: usize) -> String {
    let (short, chunk) = (
        graph.const_i64(&[len as i64 - 1]),
        graph.const_i64(&[len as i64]),
    );
    let rounded_up = graph.add_node("Add", &[seq, &short], vec![]);
    let chunks = graph.add_node("Div", &[&rounded_up, &chunk], vec![]);
    let padded = graph.add_node("Mul", &[&chunks, &chunk], vec![]);
    graph.add_node("Sub", &[&padded, seq], vec![])
}

/// Pad amounts `[begins..., ends...]` for a rank-`rank` operand whose time axis is the one
/// before last: `pad` steps at its end.
pub(super) fn pads(graph: &mut Graph, pad: &str, rank: usize) -> String {
    let (before, after) = (
        graph.const_i64(&vec![0; 2 * rank - 2]),
        graph.const_i64(&[0]),
    );
    graph.add_node("Concat", &[&before, pad, &after], vec![make_int("axis", 0)])
}

/// The chunk length a fixed sequence length `seq` runs at: the largest divisor of `seq` not
/// above `len`, so no padding is needed.
pub(super) fn dividing_chunk_len(seq: usize, len: usize) -> usize {
    (1..=len.min(seq).max(1))
        .rev()
        .find(|&l| seq.is_multiple_of(l))
        .unwrap_or(1)
}

/// log dA: the exporters compute dA = Exp(A * dt), and the chunked and parallel forms (`form`)
/// need the exponent (Log(dA) would turn underflowed decays into -inf).
pub(super) fn log_decay_of(graph: &Graph, decay: &str, form: &str) -> Result<String> {
    match graph.producer(skip_noops(graph, decay)) {
        Some((_, node)) if node.op_type() == "Exp" => Ok(node.input[0].clone()),
        found => Err(Error::Unsupported(format!(
            "--scan {form} needs the decay '{decay}' computed as Exp(dt * A), but it is {}; use --scan rolled",
            match found {
                Some((_, node)) => format!("the output of {} '{}'", node.op_type(), node.name()),
                None => "a graph input or initializer".into(),
            }
        ))),
    }
}

/// Appends a forward selective-scan `Scan` of the given kind over operands already laid out in
/// chunks of `len` steps (the contract of `ir::scan`), records it, and returns its outputs.
pub fn selective_scan(
    graph: &mut Graph,
    kind: ScanKind,
    [h0, decay, input, readout]: [&str; 4],
    (b, d, n): (usize, usize, usize),
    len: usize,
    keep_states: bool,
) -> Vec<String> {
    let dtype = graph.dtype_of(decay);
    let (body, hint) = match kind {
        ScanKind::Stepwise => (
            bodies::forward_body(graph, (b, d, n), len, dtype, keep_states),
            SELECTIVE_SCAN,
        ),
        ScanKind::Chunked => (
            chunked::forward_body(graph, (b, d, n), len, dtype, keep_states),
            SELECTIVE_SCAN_CHUNKED,
        ),
    };
    let attrs = vec![
        make_graph("body", body),
        make_int("num_scan_inputs", scan::FORWARD_SCAN_INPUTS),
        make_ints("scan_input_axes", &scan::FORWARD_INPUT_SCAN_AXES),
        make_ints(
            "scan_output_axes",
            &vec![scan::FORWARD_OUTPUT_SCAN_AXIS; if keep_states { 2 } else { 1 }],
        ),
    ];
    graph.add_selective_scan(
        hint,
        SelectiveScan::forward(kind),
        &[h0, decay, input, readout],
        if keep_states {
            scan::STATES + 1
        } else {
            scan::Y + 1
        },
        attrs,
    )
}

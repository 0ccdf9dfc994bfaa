//! Recognising one unrolled selective-scan chain by what it computes, whatever the exporter or
//! the implementation: S steps `h_t = a_t * h_{t-1} + u_t`, `y_t = <h_t, c_t>` (over the state
//! axis), where a_t, u_t and c_t are the t-th time slices of dA, dBu and C, and the y_t are
//! stacked along a time axis. A time slice may be a `Gather` of a constant index or one output
//! of a `Split` into single steps, squeezed; the readout a `MatMul` with C as a column, or an
//! `Einsum` `bdn,bn->bd`; dA and dBu may be laid out `[B, D, S, N]` (Hugging Face) or
//! `[B, S, D, N]` (time first, as einsum implementations write them), the stack `[B, D, S]` or
//! `[B, S, D]`.
use crate::error::Result;
use crate::ir::{skip_noops, Graph};
use crate::onnx::proto::NodeProto;
use crate::ops::{normalize_axis, Attrs};

/// One layer's unrolled recurrence.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The Concat stacking the y_t, and its output.
    pub concat_node: String,
    pub stacked: String,
    /// Initial state h_{-1} `[B, D, N]`.
    pub h0: String,
    /// dA and dB*u (rank 4, time axis [`Chain::step_axis`]) and C `[B, S, N]`.
    pub decay: String,
    pub input: String,
    pub readout: String,
    /// Time axis of dA and dB*u: 2 for `[B, D, S, N]`, 1 for `[B, S, D, N]`.
    pub step_axis: usize,
    /// Time axis of the stacked y: 2 for `[B, D, S]`, 1 for `[B, S, D]`.
    pub stacked_axis: usize,
    /// (B, D, S, N)
    pub dims: (usize, usize, usize, usize),
}

pub fn find_all(graph: &Graph) -> Result<Vec<Chain>> {
    let mut chains = Vec::new();
    for node in graph.nodes().iter().filter(|n| n.op_type() == "Concat") {
        if let Some(chain) = match_chain(graph, node) {
            chains.push(chain);
        }
    }
    Ok(chains)
}

/// A constant integer scalar (or one-element) operand.
fn constant_index(graph: &Graph, value: &str) -> Option<i64> {
    let t = graph.constant(value)?;
    (t.shape().iter().product::<usize>() == 1).then(|| t.to_i64_vec()[0])
}

/// The axes a Squeeze or Unsqueeze node names (attribute or constant input), normalised
/// against `rank`.
fn squeeze_axes(graph: &Graph, index: usize, rank: usize) -> Option<Vec<usize>> {
    let node = graph.node(index);
    let axes = match graph.op(index).attrs() {
        Attrs::Axes(Some(axes)) => axes.clone(),
        _ => graph.constant(node.input.get(1)?)?.to_i64_vec(),
    };
    axes.iter()
        .map(|&a| normalize_axis(a, rank, node).ok())
        .collect()
}

/// `value` = the `t`-th slice of `source` along `axis`, that axis dropped: `Gather` of a
/// constant scalar index, or the `t`-th output of a `Split` into single steps, squeezed.
/// Returns (source, axis, t).
fn time_slice<'g>(graph: &'g Graph, value: &str) -> Option<(&'g str, usize, usize)> {
    let (index, node) = graph.producer(skip_noops(graph, value))?;
    match node.op_type() {
        "Gather" => {
            let rank = graph.value_type(&node.input[0]).ok()?.rank();
            let Attrs::Axis(axis) = graph.op(index).attrs() else {
                return None;
            };
            let axis = normalize_axis(*axis, rank, node).ok()?;
            graph
                .constant(&node.input[1])
                .filter(|t| t.shape().is_empty())?;
            let t = constant_index(graph, &node.input[1])?;
            let dim = graph.shape(&node.input[0]).ok()?[axis] as i64;
            let t = if t < 0 { t + dim } else { t };
            Some((node.input[0].as_str(), axis, usize::try_from(t).ok()?))
        }
        "Squeeze" => {
            let (split_index, split) = graph.producer(&node.input[0])?;
            if split.op_type() != "Split" {
                return None;
            }
            let rank = graph.value_type(&split.input[0]).ok()?.rank();
            let Attrs::Split(spec) = graph.op(split_index).attrs() else {
                return None;
            };
            let axis = normalize_axis(spec.axis, rank, split).ok()?;
            let single_steps = split
                .output
                .iter()
                .all(|o| graph.shape(o).ok().is_some_and(|s| s[axis] == 1));
            let t = split.output.iter().position(|o| *o == node.input[0])?;
            (single_steps && squeeze_axes(graph, index, rank)? == [axis]).then_some((
                split.input[0].as_str(),
                axis,
                t,
            ))
        }
        _ => None,
    }
}

fn producer<'g>(graph: &'g Graph, value: &str, op: &str) -> Option<&'g NodeProto> {
    graph
        .producer(skip_noops(graph, value))
        .filter(|(_, n)| n.op_type() == op)
        .map(|(_, n)| n)
}

/// `y_t = <h_t, c_t>` over the state axis: (h_t, c_t).
fn readout<'g>(graph: &'g Graph, y: &str) -> Option<(&'g str, &'g str)> {
    let (index, node) = graph.producer(skip_noops(graph, y))?;
    match node.op_type() {
        // y = MatMul(h [B, D, N], c [B, N, 1]) [B, D, 1], with the last axis dropped.
        "Gather" | "Squeeze" => {
            let column = match node.op_type() {
                "Gather" => {
                    let (column, axis, zero) = time_slice(graph, y)?;
                    (axis == 2 && zero == 0).then_some(column)?
                }
                _ => (squeeze_axes(graph, index, 3)? == [2]).then_some(node.input[0].as_str())?,
            };
            let matmul = producer(graph, column, "MatMul")?;
            let unsqueezed = producer(graph, &matmul.input[1], "Unsqueeze")?;
            Some((
                skip_noops(graph, &matmul.input[0]),
                unsqueezed.input[0].as_str(),
            ))
        }
        // y = Einsum("bdn,bn->bd", h, c), in any letters.
        "Einsum" => {
            let Attrs::Einsum(spec) = graph.op(index).attrs() else {
                return None;
            };
            let (h, c) = (&spec.operands[0], &spec.operands[1]);
            let contracts = spec.operands.len() == 2
                && h.len() == 3
                && *c == [h[0], h[2]]
                && spec.output == [h[0], h[1]];
            contracts.then(|| (skip_noops(graph, &node.input[0]), node.input[1].as_str()))
        }
        _ => None,
    }
}

/// One step: from y_t (before the stacking Unsqueeze) to the state and the slices it reads.
struct Step<'g> {
    h: &'g str,
    h_prev: &'g str,
    decay: &'g str,
    input: &'g str,
    readout: &'g str,
    step_axis: usize,
    t: usize,
}

fn match_step<'g>(graph: &'g Graph, y: &str) -> Option<Step<'g>> {
    let (h, c_t) = readout(graph, y)?;
    let (readout, readout_axis, t_c) = time_slice(graph, c_t)?;
    let add = producer(graph, h, "Add")?;
    let (mul, input_step) = [(0, 1), (1, 0)].into_iter().find_map(|(m, g)| {
        let mul = producer(graph, &add.input[m], "Mul")?;
        Some((mul, time_slice(graph, &add.input[g])?))
    })?;
    let ((decay, a_axis, t_a), h_prev) = [(0, 1), (1, 0)].into_iter().find_map(|(a, p)| {
        Some((
            time_slice(graph, &mul.input[a])?,
            skip_noops(graph, &mul.input[p]),
        ))
    })?;
    let (input, u_axis, t_u) = input_step;
    let aligned = t_a == t_u && t_u == t_c && a_axis == u_axis && readout_axis == 1;
    aligned.then_some(Step {
        h,
        h_prev,
        decay,
        input,
        readout,
        step_axis: a_axis,
        t: t_a,
    })
}

/// (B, D, S, N) of dA laid out with its time axis at `step_axis`.
fn decay_dims(shape: &[usize], step_axis: usize) -> Option<(usize, usize, usize, usize)> {
    match (shape, step_axis) {
        (&[b, d, s, n], 2) => Some((b, d, s, n)),
        (&[b, s, d, n], 1) => Some((b, d, s, n)),
        _ => None,
    }
}

fn match_chain(graph: &Graph, concat: &NodeProto) -> Option<Chain> {
    let index = graph.producer(concat.output.first()?)?.0;
    let out = graph.value_type(&concat.output[0]).ok()?;
    let Attrs::Axis(axis) = graph.op(index).attrs() else {
        return None;
    };
    let stacked_axis = normalize_axis(*axis, out.rank(), concat).ok()?;
    if out.rank() != 3 || stacked_axis == 0 || concat.input.is_empty() {
        return None;
    }
    let mut steps = Vec::new();
    for stacked in &concat.input {
        let unsqueeze = producer(graph, stacked, "Unsqueeze")?;
        steps.push(match_step(graph, &unsqueeze.input[0])?);
    }
    let first = &steps[0];
    let (decay, input, readout, step_axis) =
        (first.decay, first.input, first.readout, first.step_axis);
    let s = steps.len();
    for (t, step) in steps.iter().enumerate() {
        let linked = t == 0 || step.h_prev == steps[t - 1].h;
        if step.t != t
            || step.decay != decay
            || step.input != input
            || step.readout != readout
            || step.step_axis != step_axis
            || !linked
        {
            return None;
        }
    }
    let decay_shape = graph.shape(decay).ok()?;
    let (b, d, len, n) = decay_dims(decay_shape, step_axis)?;
    let stacked_shape = if stacked_axis == 2 {
        [b, d, s]
    } else {
        [b, s, d]
    };
    let h0 = first.h_prev;
    let consistent = len == s
        && graph.shape(input).ok()? == decay_shape
        && graph.shape(readout).ok()? == [b, len, n]
        && graph.shape(h0).ok()? == [b, d, n]
        && out.shape == stacked_shape;
    consistent.then(|| Chain {
        concat_node: concat.name().to_string(),
        stacked: concat.output[0].clone(),
        h0: h0.to_string(),
        decay: decay.to_string(),
        input: input.to_string(),
        readout: readout.to_string(),
        step_axis,
        stacked_axis,
        dims: (b, d, s, n),
    })
}

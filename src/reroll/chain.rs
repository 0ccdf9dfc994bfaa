//! Recognising one unrolled selective-scan chain, on dataflow meaning (both exporters).
use crate::error::Result;
use crate::ir::{skip_noops, Graph};
use crate::onnx::attributes;
use crate::onnx::proto::NodeProto;

/// One layer's unrolled recurrence.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The Concat stacking y_t into `[B, D, S]`, and its output.
    pub concat_node: String,
    pub stacked: String,
    /// Initial state h_{-1} `[B, D, N]`.
    pub h0: String,
    /// dA `[B, D, S, N]`, dB*u `[B, D, S, N]` and C `[B, S, N]`.
    pub decay: String,
    pub input: String,
    pub readout: String,
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

/// `Gather(data, t, axis)` with a constant scalar index: (data, t).
fn gather_step<'g>(graph: &'g Graph, value: &str, axis: usize) -> Option<(&'g str, usize)> {
    let (_, node) = graph
        .producer(skip_noops(graph, value))
        .filter(|(_, n)| n.op_type() == "Gather")?;
    let rank = graph.value_type(&node.input[0]).ok()?.rank() as i64;
    let a = attributes::int(node, "axis").unwrap_or(0);
    if (if a < 0 { a + rank } else { a }) != axis as i64 {
        return None;
    }
    let index = graph
        .constant(&node.input[1])
        .filter(|t| t.shape().is_empty())?
        .to_i64_vec()[0];
    Some((node.input[0].as_str(), usize::try_from(index).ok()?))
}

fn producer<'g>(graph: &'g Graph, value: &str, op: &str) -> Option<&'g NodeProto> {
    graph
        .producer(skip_noops(graph, value))
        .filter(|(_, n)| n.op_type() == op)
        .map(|(_, n)| n)
}

/// One step: from y_t (before the stacking Unsqueeze) to (h_t, h_{t-1}, dA, dBu, C, t).
struct Step<'g> {
    h: &'g str,
    h_prev: &'g str,
    decay: &'g str,
    input: &'g str,
    readout: &'g str,
    t: usize,
}

fn match_step<'g>(graph: &'g Graph, y: &str) -> Option<Step<'g>> {
    let (column, zero) = gather_step(graph, y, 2)?;
    if zero != 0 {
        return None;
    }
    let matmul = producer(graph, column, "MatMul")?;
    let h = skip_noops(graph, &matmul.input[0]);
    let unsqueezed = producer(graph, &matmul.input[1], "Unsqueeze")?;
    let (readout, t_c) = gather_step(graph, &unsqueezed.input[0], 1)?;
    let add = producer(graph, h, "Add")?;
    let (mul, input_step) = [(0, 1), (1, 0)].into_iter().find_map(|(m, g)| {
        let mul = producer(graph, &add.input[m], "Mul")?;
        Some((mul, gather_step(graph, &add.input[g], 2)?))
    })?;
    let ((decay, t_a), h_prev) = [(0, 1), (1, 0)].into_iter().find_map(|(a, p)| {
        Some((
            gather_step(graph, &mul.input[a], 2)?,
            skip_noops(graph, &mul.input[p]),
        ))
    })?;
    let (input, t_b) = input_step;
    (t_a == t_b && t_b == t_c).then_some(Step {
        h,
        h_prev,
        decay,
        input,
        readout,
        t: t_a,
    })
}

fn match_chain(graph: &Graph, concat: &NodeProto) -> Option<Chain> {
    let out = graph.value_type(&concat.output[0]).ok()?;
    let axis = attributes::int(concat, "axis")?;
    if out.rank() != 3 || !(axis == 2 || axis == -1) || concat.input.is_empty() {
        return None;
    }
    let mut steps = Vec::new();
    for stacked in &concat.input {
        let unsqueeze = producer(graph, stacked, "Unsqueeze")?;
        steps.push(match_step(graph, &unsqueeze.input[0])?);
    }
    let first = &steps[0];
    let (decay, input, readout) = (first.decay, first.input, first.readout);
    let s = steps.len();
    for (t, step) in steps.iter().enumerate() {
        let linked = t == 0 || step.h_prev == steps[t - 1].h;
        if step.t != t
            || step.decay != decay
            || step.input != input
            || step.readout != readout
            || !linked
        {
            return None;
        }
    }
    let decay_shape = graph.shape(decay).ok()?;
    let [b, d, len, n] = decay_shape[..] else {
        return None;
    };
    let readout_ok = graph.shape(readout).ok()? == [b, len, n];
    let h0 = first.h_prev;
    if len != s
        || graph.shape(input).ok()? != decay_shape
        || !readout_ok
        || graph.shape(h0).ok()? != [b, d, n]
    {
        return None;
    }
    Some(Chain {
        concat_node: concat.name().to_string(),
        stacked: concat.output[0].clone(),
        h0: h0.to_string(),
        decay: decay.to_string(),
        input: input.to_string(),
        readout: readout.to_string(),
        dims: (b, d, s, n),
    })
}

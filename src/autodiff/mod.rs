//! Reverse-mode differentiation emitted as ONNX nodes: from seeds on the explained output back to
//! the embeddings, only over nodes on the relevance path, reusing the forward values. Rule sites
//! act here: stop-gradient edges carry nothing back, half-gradient products halve their input.
mod linearity;
mod path;
pub(crate) mod remat;

use std::collections::{BTreeMap, HashMap, HashSet};

pub use path::{input_dependent, still_dependent};

use crate::error::{Error, Result};
use crate::ir::{node_key, Edge, Graph};
use crate::onnx::proto::NodeProto;
use crate::ops::{Step, Vjp};

/// How the relevance pass treats the graph.
#[derive(Debug, Clone, Default)]
pub struct Modifiers {
    /// Input edges through which no gradient flows.
    pub stop_edges: HashSet<Edge>,
    /// Product nodes (by first output) whose incoming gradient is halved.
    pub half_nodes: HashSet<String>,
    /// SiLU products `x * sigmoid(x)` (by output) whose multiplier on x is the official
    /// stabilized `silu(x) / st(x)` rather than the sigmoid (which their stopped edge already
    /// freezes).
    pub stabilized_silu: HashSet<String>,
    /// Convs (by output) whose relevance follows the LRP-gamma rule with this gamma: the
    /// patch embedding of an image model.
    pub gamma_convs: HashMap<String, f32>,
    /// Reject any non-linear op or unruled product on the relevance path.
    pub prove_linear: bool,
    /// Keep the large forward values the relevance pass multiplies by instead of recomputing
    /// them (see `remat`).
    pub keep_forward_values: bool,
}

impl Modifiers {
    /// True when no gradient flows into input `slot` of `node`.
    pub fn stops(&self, node: &NodeProto, slot: usize) -> bool {
        !self.stop_edges.is_empty() && self.stop_edges.contains(&Edge::of(node, slot))
    }
}

/// A gradient contribution to one value from one consumer.
#[derive(Debug, Clone)]
pub enum Contribution {
    Full(String),
    /// A gradient whose shape broadcasts to the value's (the transpose of a sum, its reduced
    /// axes kept as 1): added to the value's other gradients by broadcasting, so the spread
    /// copy is made only when nothing else reaches the value. `axes` are the value's axes
    /// along which `value` has size 1 and is broadcast (the reduced axes): a product reading
    /// the value's cotangent takes it unexpanded along them (see
    /// [`Gradients::cotangent_unexpanded`]), which in the GPU form saves one state-sized write
    /// per layer (the transpose of the readout's sum over N, `MatMul(g, ones[1, N])`).
    Spread {
        value: String,
        axes: Vec<usize>,
    },
    /// The gradient of the slice `value[.., index, ..]` (axis `axis`), from a scalar-index Gather.
    Piece {
        axis: usize,
        index: usize,
        value: String,
    },
}

pub struct Gradients {
    cotangents: HashMap<String, String>,
    /// Cotangents handed out unexpanded (see [`Gradients::cotangent_unexpanded`]): the small
    /// tensor and the axes along which it is to be broadcast to the value's shape. Kept apart
    /// from `cotangents`, which hold full-size tensors only.
    spread_cotangents: HashMap<String, (String, Vec<usize>)>,
    pending: HashMap<String, Vec<Contribution>>,
    /// Per-sample relevance absorbed by constant or frozen additive terms, each `[batch]`.
    pub bias_terms: Vec<String>,
    pub path_nodes: usize,
}

/// Emits the backward pass for `seeds` (value, cotangent) down to `source`.
pub fn differentiate(
    graph: &mut Graph,
    source: &str,
    seeds: &[(String, String)],
    modifiers: &Modifiers,
) -> Result<Gradients> {
    let carrying = path::carrying_values(graph, source, modifiers)?;
    let seed_names: Vec<String> = seeds.iter().map(|(v, _)| v.clone()).collect();
    let path_nodes = path::path_nodes(graph, &carrying, &seed_names, modifiers)?;
    if modifiers.prove_linear {
        for &index in &path_nodes {
            linearity::check(graph, index, &carrying, modifiers)?;
        }
    }
    let mut grads = Gradients {
        cotangents: HashMap::new(),
        spread_cotangents: HashMap::new(),
        pending: HashMap::new(),
        bias_terms: vec![],
        path_nodes: path_nodes.len(),
    };
    for (value, cotangent) in seeds {
        grads
            .pending
            .entry(value.clone())
            .or_default()
            .push(Contribution::Full(cotangent.clone()));
    }
    let batch = graph.shape(source)?.first().copied().unwrap_or(1);
    let mut recomputed = remat::Remat::new(modifiers.keep_forward_values);
    for &index in path_nodes.iter().rev() {
        let node = graph.node(index).clone();
        crate::ir::shapes::check_node_types(graph, index)?;
        let op = graph.op(index).clone();
        // A plain product takes its cotangent unexpanded when it is only the broadcast of
        // sums' cotangents (`product_back` multiplies the small tensor directly); every other
        // node gets full-size cotangents.
        let takes_spread = op.def().is_some_and(|def| def.op_type == "Mul")
            && node.output.len() == 1
            && !modifiers.stabilized_silu.contains(node_key(&node));
        let (out_grads, out_spread): (Vec<Option<String>>, Vec<usize>) = if takes_spread {
            match grads.cotangent_unexpanded(graph, &node.output[0])? {
                Some((g, axes)) => (vec![Some(g)], axes),
                None => (vec![None], vec![]),
            }
        } else {
            let out_grads = node
                .output
                .iter()
                .map(|o| grads.cotangent(graph, o))
                .collect::<Result<_>>()?;
            (out_grads, vec![])
        };
        if out_grads.iter().all(Option::is_none) {
            continue;
        }
        let carries: Vec<bool> = node
            .input
            .iter()
            .enumerate()
            .map(|(slot, name)| carrying.contains(name) && !modifiers.stops(&node, slot))
            .collect();
        let rule = op
            .def()
            .and_then(|def| def.vjp)
            .ok_or_else(|| Error::NoVjp {
                node: node.name().to_string(),
                op: node.op_type().to_string(),
                detail: String::new(),
            })?;
        let mut step = Step {
            node: &node,
            attrs: op.attrs(),
            carries: &carries,
            out_grads: &out_grads,
            out_spread,
            half: modifiers.half_nodes.contains(node_key(&node)),
            stabilized_silu: modifiers.stabilized_silu.contains(node_key(&node)),
            gamma: modifiers.gamma_convs.get(node_key(&node)).copied(),
            batch,
            recomputed: &mut recomputed,
        };
        let Vjp {
            contributions,
            bias,
        } = rule(graph, &mut step)?;
        for (slot, contribution) in contributions {
            grads
                .pending
                .entry(node.input[slot].clone())
                .or_default()
                .push(contribution);
        }
        grads.bias_terms.extend(bias);
    }
    Ok(grads)
}

impl Gradients {
    /// The total cotangent of `value` (None when nothing reaches it), emitting the accumulation
    /// the first time it is asked for.
    pub fn cotangent(&mut self, graph: &mut Graph, value: &str) -> Result<Option<String>> {
        if let Some(done) = self.cotangents.get(value) {
            return Ok(Some(done.clone()));
        }
        if let Some((small, _)) = self.spread_cotangents.get(value) {
            let total = graph.op_expand_like(small, value);
            self.cotangents.insert(value.to_string(), total.clone());
            return Ok(Some(total));
        }
        let Some(parts) = self.pending.remove(value) else {
            return Ok(None);
        };
        let (mut full, mut spread) = (Vec::new(), Vec::new());
        let mut pieces: BTreeMap<usize, BTreeMap<usize, Vec<String>>> = BTreeMap::new();
        for part in parts {
            match part {
                Contribution::Full(v) => full.push(v),
                Contribution::Spread { value, .. } => spread.push(value),
                Contribution::Piece { axis, index, value } => pieces
                    .entry(axis)
                    .or_default()
                    .entry(index)
                    .or_default()
                    .push(value),
            }
        }
        if !pieces.is_empty() {
            let shape = graph.shape(value)?.to_vec();
            for (axis, by_index) in pieces {
                full.push(assemble_pieces(graph, value, &shape, axis, by_index)?);
            }
        }
        if full.is_empty() {
            let first = spread.remove(0);
            full.push(graph.op_expand_like(&first, value));
        }
        // Full-size terms first: each Add then has the value's shape.
        full.extend(spread);
        let total = graph.op_sum(&full);
        self.cotangents.insert(value.to_string(), total.clone());
        Ok(Some(total))
    }

    /// The total cotangent of `value` left unexpanded when only sums' transposes reach it
    /// (every contribution a [`Contribution::Spread`]): their broadcast sum, with the axes along
    /// which it has size 1 and stands for its broadcast (those all of them spread along). A
    /// product multiplies it by its other operand directly, broadcasting once, instead of
    /// reading a full-size copy: in the GPU form the readout `y = sum_N(h * C)` is summed by
    /// a MatMul with ones, whose transpose would otherwise write a state-sized tensor per
    /// layer before the product writes another. When anything else reaches the value, the
    /// full cotangent (as [`Gradients::cotangent`]) with no axes. A later `cotangent` of the
    /// same value expands the small tensor then.
    pub fn cotangent_unexpanded(
        &mut self,
        graph: &mut Graph,
        value: &str,
    ) -> Result<Option<(String, Vec<usize>)>> {
        if let Some(done) = self.spread_cotangents.get(value) {
            return Ok(Some(done.clone()));
        }
        let all_spread = self.pending.get(value).is_some_and(|parts| {
            !parts.is_empty()
                && parts
                    .iter()
                    .all(|part| matches!(part, Contribution::Spread { .. }))
        });
        if !all_spread || self.cotangents.contains_key(value) {
            return Ok(self.cotangent(graph, value)?.map(|full| (full, vec![])));
        }
        let parts = self.pending.remove(value).unwrap_or_default();
        let mut values = Vec::new();
        let mut common: Option<Vec<usize>> = None;
        for part in parts {
            if let Contribution::Spread { value, axes } = part {
                values.push(value);
                common = Some(match common {
                    None => axes,
                    Some(kept) => kept.into_iter().filter(|a| axes.contains(a)).collect(),
                });
            }
        }
        let mut axes = common.unwrap_or_default();
        axes.sort_unstable();
        axes.dedup();
        // Each term has the value's size on the axes it does not spread along, so their sum
        // has it everywhere but on the axes all of them spread along.
        let total = graph.op_sum(&values);
        if axes.is_empty() {
            self.cotangents.insert(value.to_string(), total.clone());
        } else {
            self.spread_cotangents
                .insert(value.to_string(), (total.clone(), axes.clone()));
        }
        Ok(Some((total, axes)))
    }
}

/// Stacks per-index slice gradients back into a gradient of `value`, filling the indices
/// nobody read with zeros: one Concat instead of one padded tensor per time step. The zeros
/// take their shape from slices of `value` at run time, so no batch size is baked in.
fn assemble_pieces(
    graph: &mut Graph,
    value: &str,
    shape: &[usize],
    axis: usize,
    by_index: BTreeMap<usize, Vec<String>>,
) -> Result<String> {
    let dim = *shape
        .get(axis)
        .ok_or_else(|| Error::InvalidModel(format!("axis {axis} beyond rank {}", shape.len())))?;
    let mut parts = Vec::new();
    let mut next = 0;
    let rank = shape.len();
    let dtype = graph.dtype_of(value);
    let zero_run = |graph: &mut Graph, start: usize, end: usize| {
        // value's runtime shape with `end - start` at `axis`.
        let full = graph.op_shape_of(value);
        let mut dims = Vec::new();
        if axis > 0 {
            dims.push(graph.op_slice(&full, 0, 0, axis));
        }
        dims.push(graph.const_i64(&[(end - start) as i64]));
        if axis + 1 < rank {
            dims.push(graph.op_slice(&full, 0, axis + 1, rank));
        }
        let dims = graph.op_concat(&dims, 0);
        let zero = graph.scalar_float(0.0, dtype);
        graph.add_node("Expand", &[&zero, &dims], vec![])
    };
    for (index, values) in by_index {
        if index >= dim {
            return Err(Error::InvalidModel(format!(
                "gather index {index} beyond dimension {dim}"
            )));
        }
        if index > next {
            parts.push(zero_run(graph, next, index));
        }
        let slice = graph.op_sum(&values);
        parts.push(graph.op_unsqueeze(&slice, &[axis as i64]));
        next = index + 1;
    }
    if next < dim {
        parts.push(zero_run(graph, next, dim));
    }
    Ok(graph.op_concat(&parts, axis))
}

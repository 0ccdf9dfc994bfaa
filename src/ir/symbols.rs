//! Exports with dynamic axes (`dynamic_axes` / `dynamic_shapes`, the usual way to export for
//! serving) declare symbolic dims (`batch`, `seq`, `s72`) on their inputs, while the graph
//! inside was traced at one size: the exporters unroll the selective scan at the traced length.
//! Analysis needs static shapes, so each input symbol gets the size the graph was traced at:
//! for a sequence axis the length the unrolled scan stacks (or an output declares), for a batch
//! axis any size the graph accepts. A size is accepted when every graph output then has a type.
//! The declarations are rewritten to those sizes, and the symbols are recorded, so the compiled
//! model gets its symbolic axes back (`--dynamic-batch` / `--dynamic-seq` turn on by
//! themselves).
use std::collections::{BTreeSet, HashMap};

use super::graph::Graph;
use crate::error::Result;
use crate::onnx::proto::{tensor_shape_proto::dimension, type_proto, ValueInfoProto};

/// A symbolic input dim of the export and the size analysis gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedAxis {
    pub symbol: String,
    /// Its axis in the inputs that declare it (0: batch, 1: sequence).
    pub axis: usize,
    pub traced: usize,
}

/// Batch sizes tried, in order: 2 before 1, so no axis of size 1 broadcasts by accident.
const BATCH_CANDIDATES: [usize; 3] = [2, 1, 3];

/// Gives every unresolved symbolic input dim a traced size (see the module doc) and infers the
/// graph's types with it. Returns the symbols resolved; the graph's types are inferred either
/// way.
pub(super) fn infer_with_traced_sizes(graph: &mut Graph) -> Result<Vec<ExportedAxis>> {
    let symbols = input_symbols(graph);
    if symbols.is_empty() {
        super::shapes::infer(graph)?;
        return Ok(vec![]);
    }
    let candidates: Vec<Vec<usize>> = symbols
        .iter()
        .map(|(_, axis)| match axis {
            0 => BATCH_CANDIDATES.to_vec(),
            _ => sequence_candidates(graph),
        })
        .collect();
    let saved = (
        graph.types.clone(),
        graph.constants.clone(),
        graph.constant_expressions.clone(),
        graph.symbolic_dims.clone(),
    );
    for sizes in assignments(&candidates) {
        for ((symbol, _), &size) in symbols.iter().zip(&sizes) {
            graph.symbolic_dims.insert(symbol.clone(), size);
        }
        if super::shapes::infer(graph).is_ok() && outputs_typed(graph) {
            let resolved: Vec<ExportedAxis> = symbols
                .iter()
                .zip(&sizes)
                .map(|((symbol, axis), &traced)| ExportedAxis {
                    symbol: symbol.clone(),
                    axis: *axis,
                    traced,
                })
                .collect();
            declare_static(graph);
            return Ok(resolved);
        }
        (
            graph.types,
            graph.constants,
            graph.constant_expressions,
            graph.symbolic_dims,
        ) = saved.clone();
    }
    // No size fits: analyse as declared, so the error names what is missing.
    super::shapes::infer(graph)?;
    Ok(vec![])
}

/// The symbolic dims of the graph inputs (not yet given a size), with their axis.
fn input_symbols(graph: &Graph) -> Vec<(String, usize)> {
    let mut found: Vec<(String, usize)> = Vec::new();
    for input in graph
        .proto
        .input
        .iter()
        .filter(|i| !graph.is_initializer(i.name()))
    {
        for (axis, dim) in dims(input).into_iter().enumerate() {
            if let Some(dimension::Value::DimParam(symbol)) = dim {
                let known = graph.symbolic_dims.contains_key(&symbol)
                    || found.iter().any(|(s, _)| *s == symbol);
                if !known {
                    found.push((symbol, axis));
                }
            }
        }
    }
    found
}

fn dims(vi: &ValueInfoProto) -> Vec<Option<dimension::Value>> {
    match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| s.dim.iter().map(|d| d.value.clone()).collect())
            .unwrap_or_default(),
        _ => vec![],
    }
}

/// Lengths the graph may have been traced at: how many steps the unrolled scans stack (a
/// Concat of Unsqueezed steps), then static sequence dims the outputs declare.
fn sequence_candidates(graph: &Graph) -> Vec<usize> {
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for node in graph.nodes().iter().filter(|n| n.op_type() == "Concat") {
        let stacked = node.input.len() >= 2
            && node.input.iter().all(|i| {
                graph
                    .producer(super::skip_noops(graph, i))
                    .is_some_and(|(_, p)| p.op_type() == "Unsqueeze")
            });
        if stacked {
            *counts.entry(node.input.len()).or_default() += 1;
        }
    }
    let mut by_frequency: Vec<(usize, usize)> = counts.into_iter().collect();
    by_frequency.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut candidates: Vec<usize> = by_frequency.into_iter().map(|(len, _)| len).collect();
    let declared: BTreeSet<usize> = graph
        .proto
        .output
        .iter()
        .filter_map(|o| match dims(o).get(1) {
            Some(Some(dimension::Value::DimValue(v))) if *v > 0 => Some(*v as usize),
            _ => None,
        })
        .collect();
    for length in declared {
        if !candidates.contains(&length) {
            candidates.push(length);
        }
    }
    candidates
}

/// Every combination of one candidate per symbol, the first candidates first.
fn assignments(candidates: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut all = vec![vec![]];
    for options in candidates {
        all = all
            .into_iter()
            .flat_map(|prefix: Vec<usize>| {
                options.iter().map(move |&size| {
                    let mut next = prefix.clone();
                    next.push(size);
                    next
                })
            })
            .collect();
    }
    all
}

fn outputs_typed(graph: &Graph) -> bool {
    graph
        .proto
        .output
        .iter()
        .all(|o| graph.types.contains_key(o.name()))
}

/// Writes the inferred static sizes into the input and output declarations.
fn declare_static(graph: &mut Graph) {
    let types = &graph.types;
    for vi in graph
        .proto
        .input
        .iter_mut()
        .chain(graph.proto.output.iter_mut())
    {
        let Some(shape) = types.get(vi.name()).map(|t| t.shape.clone()) else {
            continue;
        };
        if let Some(type_proto::Value::TensorType(t)) =
            vi.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(declared) = t.shape.as_mut() {
                for (dim, size) in declared.dim.iter_mut().zip(shape) {
                    dim.value = Some(dimension::Value::DimValue(size as i64));
                }
            }
        }
    }
}

//! Which values carry relevance and which nodes the backward pass must visit.
use std::collections::HashSet;

use super::Modifiers;
use crate::error::Result;
use crate::ir::{topo, Edge, Graph};
use crate::onnx::proto::NodeProto;

/// Float values carry relevance; a value of unknown type is assumed to, so that a gap in type
/// inference surfaces as an error naming it rather than as a silently empty path. A shape
/// (`Shape`, `Size`) never does, whatever its input.
fn is_float(graph: &Graph, value: &str) -> bool {
    let shape_read = graph
        .producer(value)
        .is_some_and(|(_, node)| matches!(node.op_type(), "Shape" | "Size"));
    !shape_read && graph.value_type(value).map_or(true, |t| t.dtype.is_float())
}

/// Values computed from `source` along edges that are not stopped.
pub fn carrying_values(
    graph: &Graph,
    source: &str,
    modifiers: &Modifiers,
) -> Result<HashSet<String>> {
    reached_from(
        graph,
        HashSet::from([source.to_string()]),
        |node, slot| !modifiers.stops(node, slot),
        |output| is_float(graph, output),
    )
}

/// Values that depend on `source` at all (no rule applied): what the matchers call data.
pub fn input_dependent(graph: &Graph, source: &str) -> Result<HashSet<String>> {
    carrying_values(graph, source, &Modifiers::default())
}

/// The values of `dependent` (everything computed from the explained input) that still depend
/// on it when nothing flows along `stops`: the SSM rule's frozen dt, B and C, and the products
/// of them alone, drop out.
pub fn still_dependent(
    graph: &Graph,
    dependent: &HashSet<String>,
    stops: &HashSet<Edge>,
) -> Result<HashSet<String>> {
    // The input itself: a dependent value whose producer (if any) reads nothing dependent.
    let roots = dependent
        .iter()
        .filter(|v| {
            graph
                .producer(v)
                .is_none_or(|(_, node)| !node.input.iter().any(|i| dependent.contains(i)))
        })
        .cloned()
        .collect();
    reached_from(
        graph,
        roots,
        |node, slot| !stops.contains(&Edge::of(node, slot)),
        |output| dependent.contains(output),
    )
}

/// `start` and the outputs (those `keep` takes) of every node that reads a value already
/// reached through an input slot that `open` lets through, in topological order.
fn reached_from(
    graph: &Graph,
    mut reached: HashSet<String>,
    open: impl Fn(&NodeProto, usize) -> bool,
    keep: impl Fn(&str) -> bool,
) -> Result<HashSet<String>> {
    for index in topo::order(graph)? {
        let node = graph.node(index);
        let fed = node
            .input
            .iter()
            .enumerate()
            .any(|(slot, i)| reached.contains(i) && open(node, slot));
        if fed {
            let outputs: Vec<String> = node.output.iter().filter(|o| keep(o)).cloned().collect();
            reached.extend(outputs);
        }
    }
    Ok(reached)
}

/// Nodes, in topological order, that lie between the source and the seeds: some output is needed
/// by a seed and some input carries relevance along an open edge.
pub fn path_nodes(
    graph: &Graph,
    carrying: &HashSet<String>,
    seeds: &[String],
    modifiers: &Modifiers,
) -> Result<Vec<usize>> {
    let order = topo::order(graph)?;
    let mut needed: HashSet<&str> = seeds.iter().map(String::as_str).collect();
    let mut on_path = Vec::new();
    for &index in order.iter().rev() {
        let node = graph.node(index);
        if !node.output.iter().any(|o| needed.contains(o.as_str())) {
            continue;
        }
        let mut open = false;
        for (slot, input) in node.input.iter().enumerate() {
            if carrying.contains(input) && !modifiers.stops(node, slot) {
                needed.insert(input);
                open = true;
            }
        }
        if open {
            on_path.push(index);
        }
    }
    on_path.reverse();
    Ok(on_path)
}

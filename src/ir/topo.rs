//! Topological order and dead-code removal, run explicitly after edits.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use super::Graph;
use crate::error::{Error, Result};
use crate::onnx::proto::NodeProto;

/// Node indices in an order where every node comes after the producers of its inputs.
pub fn order(graph: &Graph) -> Result<Vec<usize>> {
    let nodes = graph.nodes();
    let producer: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let mut pending = vec![0usize; nodes.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        for input in node.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producer.get(input.as_str()) {
                pending[i] += 1;
                dependents[p].push(i);
            }
        }
    }
    // Lowest index first, so an already sorted graph keeps its order.
    let mut ready: BinaryHeap<Reverse<usize>> = (0..nodes.len())
        .filter(|&i| pending[i] == 0)
        .map(Reverse)
        .collect();
    let mut sorted = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        sorted.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    if sorted.len() != nodes.len() {
        let stuck = (0..nodes.len())
            .find(|&i| pending[i] > 0)
            .map(|i| nodes[i].name().to_string())
            .unwrap_or_default();
        return Err(Error::InvalidModel(format!(
            "the graph has a cycle (through node '{stuck}')"
        )));
    }
    Ok(sorted)
}

/// Names a node reads, including those its subgraphs (Scan, Loop, If bodies) read from the
/// enclosing scope.
fn reads(node: &NodeProto, into: &mut HashSet<String>) {
    into.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
    for attribute in &node.attribute {
        for body in attribute.g.iter().chain(&attribute.graphs) {
            body.node.iter().for_each(|n| reads(n, into));
        }
    }
}

/// Removes nodes whose outputs nobody reads, among those `removable` allows: one backward sweep
/// in topological order, so a dead chain of any length goes at once.
pub fn remove_dead_nodes(graph: &mut Graph, removable: impl Fn(&NodeProto) -> bool) -> Result<()> {
    let live = live_nodes(graph, removable)?;
    let mut index = 0;
    graph.retain_nodes(|_| {
        index += 1;
        live[index - 1]
    });
    Ok(())
}

/// Removes the nodes the compiler created whose outputs nobody reads.
pub fn remove_dead_minted_nodes(graph: &mut Graph) -> Result<()> {
    let live = live_nodes(graph, |node| graph.is_minted_node(node))?;
    let mut index = 0;
    graph.retain_nodes(|_| {
        index += 1;
        live[index - 1]
    });
    Ok(())
}

/// Per node: is some output read (by a graph output or a live node), or may it not be removed?
fn live_nodes(graph: &Graph, removable: impl Fn(&NodeProto) -> bool) -> Result<Vec<bool>> {
    let order = order(graph)?;
    let mut needed: HashSet<String> = graph.output_names().map(str::to_string).collect();
    let mut live = vec![false; graph.nodes().len()];
    for &index in order.iter().rev() {
        let node = graph.node(index);
        if !removable(node) || node.output.iter().any(|o| needed.contains(o)) {
            live[index] = true;
            reads(node, &mut needed);
        }
    }
    Ok(live)
}

/// Reorders the nodes topologically (a rewrite may have appended a producer after its readers).
pub fn sort_nodes(graph: &mut Graph) -> Result<()> {
    let order = order(graph)?;
    graph.permute_nodes(&order);
    Ok(())
}

//! Small dataflow helpers of the matchers (the ones other passes share live in `ir`).
use crate::ir::Graph;
pub use crate::ir::{is_constant_equal, produced_by, skip_noops};

/// Consumers of `value`, looking through no-op `Identity`/`Cast` nodes to the real readers.
pub fn consumers_through_noops(graph: &Graph, value: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for &(index, slot) in graph.consumers(value) {
        let node = graph.node(index);
        let passes_through = matches!(node.op_type(), "Identity" | "Cast")
            && skip_noops(graph, &node.output[0]) != node.output[0].as_str();
        if passes_through {
            found.extend(consumers_through_noops(graph, &node.output[0]));
        } else {
            found.push((index, slot));
        }
    }
    found
}

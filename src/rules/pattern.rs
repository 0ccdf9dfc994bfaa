//! Small dataflow helpers of the matchers (the ones other passes share live in `ir`).
use crate::ir::Graph;
pub use crate::ir::{produced_by, skip_noops};

/// True when `value` is a compile-time constant whose elements all equal `expected`.
pub fn is_constant_equal(graph: &Graph, value: &str, expected: f64) -> bool {
    let value = skip_noops(graph, value);
    graph.constant(value).is_some_and(|t| {
        let v = t.to_f64_vec();
        !v.is_empty() && v.iter().all(|&x| (x - expected).abs() < 1e-6)
    })
}

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

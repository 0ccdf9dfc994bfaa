//! Small dataflow helpers shared by the passes (matchers, re-roller, emitters).
use super::Graph;
use crate::onnx::proto::NodeProto;

/// Follows a value up through `Identity` and float-to-float `Cast` nodes: they keep the value
/// (up to rounding). The TorchScript exporter scatters `Cast(to=FLOAT)` on float tensors
/// everywhere, and float16 models cast to float32 and back around norms and the scan.
pub fn skip_noops<'g>(graph: &'g Graph, mut value: &'g str) -> &'g str {
    while let Some((_, node)) = graph.producer(value) {
        let passes = match node.op_type() {
            "Identity" => true,
            "Cast" => {
                let is_float = |v: &str| graph.value_type(v).is_ok_and(|t| t.dtype.is_float());
                is_float(&node.input[0]) && is_float(value)
            }
            _ => false,
        };
        if !passes {
            break;
        }
        value = &node.input[0];
    }
    value
}

/// The node producing `value` (after no-ops) if its op is `op`.
pub fn produced_by<'g>(
    graph: &'g Graph,
    value: &'g str,
    op: &str,
) -> Option<(usize, &'g NodeProto)> {
    graph
        .producer(skip_noops(graph, value))
        .filter(|(_, n)| n.op_type() == op)
}

/// True when `value` is a compile-time constant whose elements all equal `expected`.
pub fn is_constant_equal(graph: &Graph, value: &str, expected: f64) -> bool {
    let value = skip_noops(graph, value);
    graph.constant(value).is_some_and(|t| {
        let v = t.to_f64_vec();
        !v.is_empty() && v.iter().all(|&x| (x - expected).abs() < 1e-6)
    })
}

/// Follows a value up through no-ops and layout changes (Transpose, Reshape, Squeeze,
/// Unsqueeze, Flatten): the same elements in another arrangement. ONNX Runtime's optimiser
/// moves Transposes across elementwise products, between a SiLU and the gate that reads it.
pub fn skip_layout<'g>(graph: &'g Graph, value: &'g str) -> &'g str {
    let mut value = skip_noops(graph, value);
    while let Some((_, node)) = graph.producer(value) {
        let moves_only = matches!(
            node.op_type(),
            "Transpose" | "Reshape" | "Squeeze" | "Unsqueeze" | "Flatten"
        ) && node
            .input
            .iter()
            .skip(1)
            .all(|i| i.is_empty() || graph.is_constant(i));
        if !moves_only {
            break;
        }
        value = skip_noops(graph, &node.input[0]);
    }
    value
}

/// True when `value` is all zeros whatever the input: a zero constant, or zeros made at run time
/// in a runtime shape (`ConstantOfShape` with a zero or no value, `Expand` of a zero), as
/// exports with a dynamic batch make the initial SSM state.
pub fn is_zero_fill(graph: &Graph, value: &str) -> bool {
    let value = skip_noops(graph, value);
    if let Some(t) = graph.constant(value) {
        return t.to_f64_vec().iter().all(|&v| v == 0.0);
    }
    match graph.producer(value) {
        Some((_, node)) if node.op_type() == "ConstantOfShape" => {
            crate::onnx::attributes::find(node, "value")
                .and_then(|a| a.t.as_ref())
                .and_then(|t| crate::onnx::tensor::tensor_from_proto(t).ok().flatten())
                .is_none_or(|t| t.to_f64_vec().iter().all(|&v| v == 0.0))
        }
        Some((_, node)) if node.op_type() == "Expand" => is_zero_fill(graph, &node.input[0]),
        _ => false,
    }
}

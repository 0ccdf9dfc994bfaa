//! Static type inference over the whole graph, in topological order: each node's types come
//! from its op's registration (`crate::ops`), then its compile-time value, if any, is folded
//! (the TorchScript exporter computes chunk bounds from `Shape`).
use super::graph::{Graph, ValueType};
use super::DType;
use crate::error::{Error, Result};
use crate::onnx::proto::{type_proto, ValueInfoProto};

pub(super) fn infer(graph: &mut Graph) -> Result<()> {
    let declared: Vec<ValueInfoProto> = graph
        .proto
        .input
        .iter()
        .chain(&graph.proto.value_info)
        .chain(&graph.proto.output)
        .cloned()
        .collect();
    let mut hints = std::collections::HashMap::new();
    for vi in &declared {
        if let Some(t) = static_type_with(vi, &graph.symbolic_dims) {
            hints.insert(vi.name().to_string(), t);
        }
    }
    for input in &graph.proto.input {
        if let Some(t) = hints.get(input.name()) {
            check_size(input.name(), &t.shape)?;
            graph
                .types
                .entry(input.name().to_string())
                .or_insert_with(|| t.clone());
        }
    }
    for index in super::topo::order(graph)? {
        let node = graph.node(index).clone();
        match graph.op(index).infer(graph, &node) {
            Ok(types) => {
                for (name, t) in node.output.iter().zip(types) {
                    if let Some(t) = t {
                        check_size(name, &t.shape)?;
                        graph.types.insert(name.clone(), t);
                    }
                }
            }
            // Ops we cannot infer keep the exporter's declaration, if any; a value whose shape
            // is needed later and unknown is reported then, naming it.
            Err(_) => {
                for name in &node.output {
                    if let Some(t) = hints.get(name) {
                        graph.types.insert(name.clone(), t.clone());
                    }
                }
            }
        }
        if let Some(value) = graph.op(index).fold(graph, &node)? {
            graph.constants.insert(node.output[0].clone(), value);
        }
        graph.note_constant_expression(index);
    }
    Ok(())
}

/// The static type declared by a `ValueInfoProto`, if it is a tensor with fixed dims.
pub fn static_type(vi: &ValueInfoProto) -> Option<ValueType> {
    static_type_with(vi, &std::collections::HashMap::new())
}

/// Element type and dims of a declared tensor type; unknown dims are `None`.
pub(crate) fn declared_dims(
    vi: &ValueInfoProto,
    symbols: &std::collections::HashMap<String, usize>,
) -> Option<(DType, Vec<Option<usize>>)> {
    use crate::onnx::proto::tensor_shape_proto::dimension::Value;
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = t.shape.as_ref()?.dim.iter().map(|d| match &d.value {
        Some(Value::DimValue(v)) if *v >= 0 => Some(*v as usize),
        Some(Value::DimParam(name)) => symbols.get(name).copied(),
        _ => None,
    });
    Some((DType::from_onnx(t.elem_type()), dims.collect()))
}

/// Like [`static_type`], reading named (symbolic) dims from `symbols`.
pub fn static_type_with(
    vi: &ValueInfoProto,
    symbols: &std::collections::HashMap<String, usize>,
) -> Option<ValueType> {
    let (dtype, dims) = declared_dims(vi, symbols)?;
    Some(ValueType {
        dtype,
        shape: dims.into_iter().collect::<Option<Vec<_>>>()?,
    })
}

/// Largest tensor the compiler accepts (2^40 elements): beyond that a file's dims are absurd.
const MAX_ELEMENTS: usize = 1 << 40;

pub fn check_size(name: &str, shape: &[usize]) -> Result<()> {
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match count {
        Some(n) if n <= MAX_ELEMENTS => Ok(()),
        _ => Err(Error::tensor(
            name,
            format!("absurd shape {shape:?} (more than 2^40 elements)"),
        )),
    }
}

/// Re-infers a node's output types from its inputs and checks they match the recorded ones.
/// The backward pass calls this for every node it differentiates, so that a file whose declared
/// shapes contradict its ops is refused instead of confusing a vector-Jacobian rule.
pub fn check_node_types(graph: &Graph, index: usize) -> Result<()> {
    let node = graph.node(index);
    let inferred = graph.op(index).infer(graph, node)?;
    for (name, t) in node.output.iter().zip(inferred) {
        if let (Some(t), Ok(recorded)) = (t, graph.value_type(name)) {
            if &t != recorded {
                return Err(Error::node(
                    node,
                    format!("output '{name}' is declared {recorded:?} but the op computes {t:?}"),
                ));
            }
        }
    }
    Ok(())
}

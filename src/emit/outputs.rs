//! The relevance outputs of the compiled model (DESIGN.md §3) and its metadata.
use crate::ir::Graph;
use crate::onnx::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, ModelProto, StringStringEntryProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

pub const RELEVANCE: &str = "relevance";
pub const RELEVANCE_TARGET_LOGIT: &str = "relevance_target_logit";
pub const RELEVANCE_BIAS: &str = "relevance_bias";
pub const RELEVANCE_EMBEDDING: &str = "relevance_embedding";
pub const RELEVANCE_LAYERS: &str = "relevance_layers";

pub fn value_info(name: &str, elem_type: i32, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: Some(elem_type),
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Exposes `value` as graph output `name` (float32 of the given shape) through an Identity, so the
/// output name is ours whatever node computes it.
pub fn add_output(graph: &mut Graph, value: &str, name: &str, shape: &[usize]) {
    let node = crate::onnx::proto::NodeProto {
        name: Some(format!("mambalrp/output/{name}")),
        op_type: Some("Identity".into()),
        input: vec![value.to_string()],
        output: vec![name.to_string()],
        ..Default::default()
    };
    graph.proto.node.push(node);
    graph.proto.output.push(value_info(name, 1, shape));
}

/// Metadata key: the number of Mamba blocks (verification's depth scales with it).
pub const BLOCKS_KEY: &str = "mambalrp.blocks";
/// Metadata key: the SiLU identity rule's form (`stabilized` or `exact`).
pub const SILU_RULE_KEY: &str = "mambalrp.silu_rule";

pub fn add_metadata(model: &mut ModelProto, entries: &[(&str, String)]) {
    for (key, value) in entries {
        model.metadata_props.retain(|p| p.key() != *key);
        model.metadata_props.push(StringStringEntryProto {
            key: Some(key.to_string()),
            value: Some(value.clone()),
        });
    }
}

//! The relevance outputs of the compiled model (DESIGN.md §3) and its metadata.
pub use crate::ir::value_info;
use crate::ir::Graph;
use crate::onnx::proto::{ModelProto, StringStringEntryProto};

pub const RELEVANCE: &str = "relevance";
pub const RELEVANCE_TARGET_LOGIT: &str = "relevance_target_logit";
pub const RELEVANCE_BIAS: &str = "relevance_bias";
pub const RELEVANCE_EMBEDDING: &str = "relevance_embedding";
pub const RELEVANCE_LAYERS: &str = "relevance_layers";

/// Exposes `value` as graph output `name` (float32 of the given shape) through an Identity, so the
/// output name is ours whatever node computes it.
pub fn add_output(graph: &mut Graph, value: &str, name: &str, shape: &[usize]) {
    graph.add_output(value, name, 1, shape);
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

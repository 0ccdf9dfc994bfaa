//! The relevance outputs of the compiled model (DESIGN.md §3).
pub use super::metadata::{add_metadata, BLOCKS_KEY, SILU_RULE_KEY};
use crate::ir::Graph;
pub use crate::onnx::value_info;

pub const RELEVANCE: &str = "relevance";
pub const RELEVANCE_TARGET_LOGIT: &str = "relevance_target_logit";
pub const RELEVANCE_BIAS: &str = "relevance_bias";
pub const RELEVANCE_EMBEDDING: &str = "relevance_embedding";
pub const RELEVANCE_LAYERS: &str = "relevance_layers";
/// Image models: relevance per token entering the first block (class token included).
pub const RELEVANCE_TOKENS: &str = "relevance_tokens";
/// Image models: relevance per patch at the patch embedding's output.
pub const RELEVANCE_PATCHES: &str = "relevance_patches";

/// Exposes `value` as graph output `name` (float32 of the given shape) through an Identity, so the
/// output name is ours whatever node computes it.
pub fn add_output(graph: &mut Graph, value: &str, name: &str, shape: &[usize]) {
    graph.add_output(value, name, crate::ir::DType::Float, shape);
}

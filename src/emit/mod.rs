//! Everything the compiled model adds around the backward pass: which logit is explained, the
//! seed cotangent, the relevance outputs and the metadata.
mod dynamic_axes;
pub mod micro_batch;
pub use crate::onnx::metadata;
mod outputs;
mod prefix_sums;
mod source;
mod target;

pub use dynamic_axes::{make_batch_symbolic, make_sequence_symbolic};
pub use outputs::{
    add_metadata, add_output, value_info, BLOCKS_KEY, RELEVANCE, RELEVANCE_BIAS,
    RELEVANCE_EMBEDDING, RELEVANCE_LAYERS, RELEVANCE_PATCHES, RELEVANCE_TARGET_LOGIT,
    RELEVANCE_TOKENS, SILU_RULE_KEY,
};
pub use prefix_sums::read_sums_off_prefix_sums;
pub use source::{find_source, ImageSource, Source};
pub use target::{explain_target, Explained, TargetMode, TARGET_INPUT};

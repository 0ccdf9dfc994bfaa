//! Every `metadata_props` key the compiler writes, in one place (readers in `ir`, `verify` and
//! the CLI use these too), and the helper that writes them. Part of the compiled model's
//! contract (DESIGN.md §3); kept at the file layer so every pass can read it.
use super::proto::{ModelProto, StringStringEntryProto};

/// The compiler version that wrote the model.
pub const VERSION_KEY: &str = "mambalrp.version";
/// The scan form (`rolled`, `chunked`, `parallel`, `unrolled`) and the tokens per chunk.
pub const SCAN_KEY: &str = "mambalrp.scan";
/// The rule set (`mambalrp`, `gi` or a list).
pub const RULES_KEY: &str = "mambalrp.rules";
/// The SiLU identity rule's form (`stabilized` or `exact`).
pub const SILU_RULE_KEY: &str = "mambalrp.silu_rule";
/// The number of Mamba blocks (verification's depth scales with it).
pub const BLOCKS_KEY: &str = "mambalrp.blocks";
/// The explained target (`argmax` or `input`) and position.
pub const TARGET_KEY: &str = "mambalrp.target";
/// Image models: the patch-embedding rule (`gamma:G` or `zero`).
pub const PATCH_RULE_KEY: &str = "mambalrp.patch_rule";
/// What the model explains: `tokens` (token ids or embeddings) or `image`.
pub const SOURCE_KEY: &str = "mambalrp.source";
/// The float type the model computes in (`float32`, `float16`, ...).
pub const FLOAT_TYPE_KEY: &str = "mambalrp.float_type";
/// The float type a `--precision float32` model was exported in (its weights' rounding).
pub const EXPORTED_FLOAT_TYPE_KEY: &str = "mambalrp.exported_float_type";
/// Every rule site, one per line.
pub const SITES_KEY: &str = "mambalrp.sites";
/// Rule sites per rule, as a JSON object.
pub const SITE_COUNTS_KEY: &str = "mambalrp.site_counts";
/// The symbolic axes (`batch`, `sequence`), comma separated.
pub const DYNAMIC_AXES_KEY: &str = "mambalrp.dynamic_axes";
/// The sequence length a `--dynamic-seq` model was traced at.
pub const SEQUENCE_LENGTH_KEY: &str = "mambalrp.traced_sequence_length";
/// The batch size a `--dynamic-batch` model was traced at.
pub const BATCH_SIZE_KEY: &str = "mambalrp.traced_batch_size";
/// Samples per iteration of a `--micro-batch` model's outer Scan.
pub const MICRO_BATCH_KEY: &str = "mambalrp.micro_batch";
/// The longest sequence a parallel-form model with a symbolic length serves (longer inputs fail
/// at a node named `max_seq_len_N_exceeded`).
pub const MAX_SEQUENCE_LENGTH_KEY: &str = "mambalrp.max_sequence_length";

/// The value recorded under `key`, if any.
pub fn value<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    model
        .metadata_props
        .iter()
        .find(|p| p.key() == key)
        .map(|p| p.value())
}

/// Sets each `(key, value)`, replacing an earlier entry of the same key.
pub fn add_metadata(model: &mut ModelProto, entries: &[(&str, String)]) {
    for (key, value) in entries {
        model.metadata_props.retain(|p| p.key() != *key);
        model.metadata_props.push(StringStringEntryProto {
            key: Some(key.to_string()),
            value: Some(value.clone()),
        });
    }
}

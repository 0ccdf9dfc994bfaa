//! examples/triton: the Triton model configuration matches the model the compiler emits for
//! the bundled trained model (every input and output it names exists with the same type and
//! dims, the relevance outputs are all served, and batching is along a symbolic axis).
mod common;

use common::*;
use mambalrp::onnx::proto::{tensor_shape_proto::dimension, type_proto, ValueInfoProto};
use mambalrp::{compile, Options};

/// One `input` or `output` entry of a config.pbtxt.
#[derive(Debug, Default)]
struct Entry {
    name: String,
    data_type: String,
    dims: Vec<i64>,
    /// `reshape: { shape: [...] }`: the dims the model itself has.
    reshape: Option<Vec<i64>>,
}

fn numbers(text: &str) -> Vec<i64> {
    let inside = text
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .map_or("", |(inside, _)| inside);
    inside
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// The inputs, outputs and max_batch_size of a config.pbtxt (the subset of the text format the
/// example uses: one field per line).
fn parse_config(text: &str) -> (Vec<Entry>, Vec<Entry>, i64) {
    let (mut inputs, mut outputs, mut max_batch) = (Vec::new(), Vec::new(), 0);
    let mut section: Option<&str> = None;
    let mut entry = Entry::default();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if let Some(value) = line.strip_prefix("max_batch_size:") {
            max_batch = value.trim().parse().unwrap();
        } else if line.starts_with("input [") {
            section = Some("input");
        } else if line.starts_with("output [") {
            section = Some("output");
        } else if line == "]" {
            section = None;
        } else if let Some(value) = line.strip_prefix("name:").filter(|_| section.is_some()) {
            entry.name = value.trim().trim_matches('"').to_string();
        } else if let Some(value) = line.strip_prefix("data_type:") {
            entry.data_type = value.trim().to_string();
        } else if line.starts_with("dims:") {
            entry.dims = numbers(line);
        } else if line.starts_with("reshape:") {
            entry.reshape = Some(numbers(line));
        } else if line.starts_with('}') && !entry.name.is_empty() {
            let done = std::mem::take(&mut entry);
            match section {
                Some("input") => inputs.push(done),
                Some("output") => outputs.push(done),
                _ => {}
            }
        }
    }
    (inputs, outputs, max_batch)
}

/// (element type, dims with symbolic ones as -1) of a declaration.
fn declared(vi: &ValueInfoProto) -> (i32, Vec<i64>) {
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        panic!("{} is not a tensor", vi.name())
    };
    let dims = t
        .shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| match d.value {
            Some(dimension::Value::DimValue(v)) => v,
            _ => -1,
        })
        .collect();
    (t.elem_type(), dims)
}

fn triton_type(elem_type: i32) -> &'static str {
    match mambalrp::ir::DType::from_onnx(elem_type) {
        mambalrp::ir::DType::Float => "TYPE_FP32",
        mambalrp::ir::DType::Int64 => "TYPE_INT64",
        other => panic!("no Triton type written for {other}"),
    }
}

#[test]
fn the_triton_config_matches_the_compiled_model() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(
        root.join("examples/triton/model_repository/mambalrp_keys/config.pbtxt"),
    )
    .unwrap();
    let (inputs, outputs, max_batch) = parse_config(&config);
    assert!(
        max_batch > 0 && !inputs.is_empty() && outputs.len() >= 3,
        "{config}"
    );

    // The model the example's README compiles: the plain command on the trained model.
    let model = mambalrp::onnx::load_model(&fixtures_dir().join("keys/keys_model.onnx")).unwrap();
    let compiled = compile(&model, &Options::default()).unwrap().model;
    let graph = compiled.graph.as_ref().unwrap();
    for (entries, declarations) in [(&inputs, &graph.input), (&outputs, &graph.output)] {
        for entry in entries {
            let vi = declarations
                .iter()
                .find(|v| v.name() == entry.name)
                .unwrap_or_else(|| panic!("the compiled model has no '{}'", entry.name));
            let (elem_type, dims) = declared(vi);
            assert_eq!(entry.data_type, triton_type(elem_type), "{}", entry.name);
            // Triton batches along the first axis, which must be symbolic.
            assert_eq!(
                dims[0], -1,
                "{}: the batch axis is not symbolic",
                entry.name
            );
            let served = entry.reshape.as_ref().unwrap_or(&entry.dims);
            assert_eq!(&dims[1..], served.as_slice(), "{}: dims", entry.name);
        }
    }
    for relevance in ["relevance", "relevance_target_logit", "relevance_bias"] {
        assert!(
            outputs.iter().any(|o| o.name == relevance),
            "the config does not serve '{relevance}'"
        );
    }
}

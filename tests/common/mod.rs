//! Shared helpers for the integration tests: fixture paths, references and comparisons.
#![allow(dead_code)]
use std::path::PathBuf;

use mambalrp::onnx::{self, proto::ModelProto, Tensor};
pub use mambalrp::reroll::ScanForm;
pub use mambalrp::rules::SiluRule;
use mambalrp::{compile, Options};
use ndarray::ArrayD;

pub const FIXTURES: [&str; 6] = [
    "tiny_convbias",
    "tiny_zerobias",
    "small_untied",
    "tiny_bigxproj",
    "tiny_smallsilu",
    "mid_biglogits",
];
pub const EXPORTERS: [&str; 2] = ["", "_dynamo"];

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

pub fn model_path(fixture: &str, exporter: &str) -> PathBuf {
    fixtures_dir().join(format!("{fixture}{exporter}.onnx"))
}

pub fn load(fixture: &str, exporter: &str) -> ModelProto {
    onnx::load_model(&model_path(fixture, exporter)).expect("fixture loads")
}

/// Reference arrays computed in PyTorch by models/make_fixtures.py.
pub struct Reference {
    arrays: Vec<(String, Tensor)>,
}

impl Reference {
    pub fn load(fixture: &str) -> Reference {
        let path = fixtures_dir().join(format!("{fixture}.ref.npz"));
        Reference {
            arrays: mambalrp::verify::load_npz(&path).expect("reference loads"),
        }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        &self
            .arrays
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("reference has no '{name}'"))
            .1
    }

    pub fn f32(&self, name: &str) -> ArrayD<f32> {
        match self.get(name) {
            Tensor::F32(a) => a.clone(),
            other => panic!("'{name}' is not float32: {other:?}"),
        }
    }

    pub fn inputs(&self) -> Vec<(String, Tensor)> {
        vec![("input_ids".to_string(), self.get("input_ids").clone())]
    }
}

/// Compiles with the default (rolled) scan form.
pub fn compile_with(model: &ModelProto, rules: &str, emit: bool) -> ModelProto {
    compile_form(model, rules, emit, ScanForm::Rolled)
}

pub fn compile_form(model: &ModelProto, rules: &str, emit: bool, scan: ScanForm) -> ModelProto {
    compile_silu(model, rules, emit, scan, SiluRule::default())
}

/// Compiles with a chosen form of the SiLU identity rule.
pub fn compile_silu(
    model: &ModelProto,
    rules: &str,
    emit: bool,
    scan: ScanForm,
    silu_rule: SiluRule,
) -> ModelProto {
    let options = Options {
        rules: rules.parse().unwrap(),
        silu_rule,
        emit_embedding: emit,
        emit_layers: emit,
        scan,
        ..Options::default()
    };
    compile(model, &options)
        .unwrap_or_else(|e| panic!("compile failed: {e}"))
        .model
}

pub fn run(model: &ModelProto, inputs: &[(String, Tensor)]) -> Vec<(String, ArrayD<f32>)> {
    mambalrp::verify::run_tract(model, inputs).expect("tract runs the model")
}

pub fn output<'a>(outputs: &'a [(String, ArrayD<f32>)], name: &str) -> &'a ArrayD<f32> {
    &outputs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no output '{name}'"))
        .1
}

pub fn max_abs(a: &ArrayD<f32>) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

pub fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// max |a - b| / max |b|
pub fn relative_error(a: &ArrayD<f32>, reference: &ArrayD<f32>) -> f32 {
    max_abs_diff(a, reference) / max_abs(reference)
}

/// Runs the `mambalrp-compile` binary.
pub fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mambalrp-compile"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// Everything a command printed.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The Python with `onnx` that the README's test command installs (.venv-test), or
/// MAMBALRP_PYTHON.
pub fn python() -> PathBuf {
    std::env::var_os("MAMBALRP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python"))
}

/// The value `model` records under metadata `key`.
pub fn metadata(model: &ModelProto, key: &str) -> Option<String> {
    mambalrp::onnx::metadata::value(model, key).map(str::to_string)
}

/// Every output after the original logits (the relevance outputs) is declared float32,
/// whatever the model's float type.
pub fn assert_relevance_outputs_are_float32(compiled: &ModelProto) {
    use mambalrp::onnx::proto::type_proto;
    for output in &compiled.graph.as_ref().unwrap().output[1..] {
        let Some(type_proto::Value::TensorType(t)) =
            output.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            panic!("{} has no tensor type", output.name())
        };
        assert_eq!(t.elem_type(), 1, "{} is float32", output.name());
    }
}

/// A word-level tokenizer.json for the tiny fixtures' 64-token vocabulary: words `w0`..`w63`.
pub fn write_word_tokenizer(dir: &std::path::Path) -> PathBuf {
    let vocab: Vec<String> = (0..64).map(|i| format!("\"w{i}\": {i}")).collect();
    let json = format!(
        "{{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": [], \
         \"normalizer\": null, \"pre_tokenizer\": {{\"type\": \"Whitespace\"}}, \"post_processor\": null, \
         \"decoder\": null, \"model\": {{\"type\": \"WordLevel\", \"vocab\": {{{}}}, \"unk_token\": \"w0\"}}}}",
        vocab.join(", ")
    );
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    path
}

//! Runs original and compiled models and checks the contract: original outputs unchanged, and
//! relevance conserved (sum(relevance) + relevance_bias = explained logit).
mod check;
mod conservation;
mod inputs;
mod ort_runner;
mod tract_runner;

pub use check::{check, CheckReport, CheckRow};
pub use conservation::{conservation, SampleCheck};
pub use inputs::{generated_inputs, load_npz, validate_inputs};
pub use ort_runner::{ort_library_path, run_ort, OrtModel};
pub use tract_runner::run_tract;

use ndarray::ArrayD;

use crate::error::Result;
use crate::onnx::proto::ModelProto;
use crate::onnx::Tensor;

/// Which runtime executes a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// tract, embedded: needs nothing installed.
    #[default]
    Tract,
    /// ONNX Runtime CPU through `ort`, all graph optimizations on.
    Ort,
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Runtime::Tract => "tract",
            Runtime::Ort => "onnxruntime",
        })
    }
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(Runtime::Tract),
            "ort" | "onnxruntime" => Ok(Runtime::Ort),
            other => Err(format!("unknown runtime '{other}': expected tract or ort")),
        }
    }
}

/// Runs `model` once in `runtime` and returns its float32 outputs by name, in graph order.
pub fn run_model(
    runtime: Runtime,
    model: &ModelProto,
    inputs: &[(String, Tensor)],
) -> Result<Vec<(String, ArrayD<f32>)>> {
    match runtime {
        Runtime::Tract => run_tract(model, inputs),
        Runtime::Ort => run_ort(model, inputs),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub runtime: Runtime,
    /// Largest |compiled - original| over each original output.
    pub original_outputs_max_abs_diff: Vec<(String, f32)>,
    pub samples: Vec<SampleCheck>,
    pub max_relative_residual: f32,
}

/// Runs both models on `inputs` (the compiled model's extra `lrp_target` input, if any, is only
/// fed to the compiled model).
pub fn verify(
    runtime: Runtime,
    original: &ModelProto,
    compiled: &ModelProto,
    inputs: &[(String, Tensor)],
) -> Result<VerifyReport> {
    let original_names: Vec<String> = original
        .graph
        .as_ref()
        .map(|g| g.input.iter().map(|i| i.name().to_string()).collect())
        .unwrap_or_default();
    let original_inputs: Vec<(String, Tensor)> = inputs
        .iter()
        .filter(|(n, _)| original_names.contains(n))
        .cloned()
        .collect();
    let reference = run_model(runtime, original, &original_inputs)?;
    let outputs = run_model(runtime, compiled, inputs)?;
    let mut diffs = Vec::new();
    for (name, expected) in &reference {
        let got = outputs.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let diff = match got {
            Some(got) if got.shape() == expected.shape() => got
                .iter()
                .zip(expected.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max),
            _ => f32::INFINITY,
        };
        diffs.push((name.clone(), diff));
    }
    let samples = conservation(&outputs)?;
    let max_relative_residual = samples
        .iter()
        .map(|s| s.relative_residual)
        .fold(0.0f32, f32::max);
    Ok(VerifyReport {
        runtime,
        original_outputs_max_abs_diff: diffs,
        samples,
        max_relative_residual,
    })
}

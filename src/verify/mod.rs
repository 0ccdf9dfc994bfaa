//! Runs original and compiled models and checks the contract: original outputs unchanged, and
//! relevance conserved (sum(relevance) + relevance_bias = explained logit).
mod conservation;
mod inputs;
mod tract_runner;

pub use conservation::{conservation, SampleCheck};
pub use inputs::{generated_inputs, load_npz};
pub use tract_runner::run_tract;

use crate::error::Result;
use crate::onnx::proto::ModelProto;
use crate::onnx::Tensor;

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub runtime: String,
    /// Largest |compiled - original| over each original output.
    pub original_outputs_max_abs_diff: Vec<(String, f32)>,
    pub samples: Vec<SampleCheck>,
    pub max_relative_residual: f32,
}

/// Runs both models in tract on `inputs` (the compiled model's extra `lrp_target` input, if any,
/// is only fed to the compiled model).
pub fn verify(
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
    let reference = run_tract(original, &original_inputs)?;
    let outputs = run_tract(compiled, inputs)?;
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
        runtime: "tract".into(),
        original_outputs_max_abs_diff: diffs,
        samples,
        max_relative_residual,
    })
}

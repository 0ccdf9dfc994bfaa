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

/// Refuses models no runtime here can execute: bfloat16 exports (tract has no bfloat16, and
/// ONNX Runtime's CPU provider no bfloat16 Conv).
pub fn ensure_runnable(model: &ModelProto) -> Result<()> {
    let graph = model.graph.as_ref();
    match graph.and_then(|g| g.initializer.iter().find(|t| t.data_type() == 16)) {
        Some(t) => Err(crate::error::Error::Unsupported(format!(
            "bfloat16 weights ('{}'): neither tract nor ONNX Runtime's CPU provider runs bfloat16 \
             models (no bfloat16 Conv), so they cannot be verified or checked here; compile \
             with --no-verify and run the compiled model where bfloat16 runs (e.g. a GPU provider)",
            t.name()
        ))),
        None => Ok(()),
    }
}

/// Runs `model` once in `runtime` and returns its float32 outputs by name, in graph order.
pub fn run_model(
    runtime: Runtime,
    model: &ModelProto,
    inputs: &[(String, Tensor)],
) -> Result<Vec<(String, ArrayD<f32>)>> {
    ensure_runnable(model)?;
    match runtime {
        Runtime::Tract => run_tract(model, inputs),
        Runtime::Ort => run_ort(model, inputs),
    }
}

/// Metadata key naming the float type a compiled model computes in (`float32`, `float16`, ...).
pub const FLOAT_TYPE_KEY: &str = "mambalrp.float_type";

pub fn float_type_name(dtype: i32) -> &'static str {
    match dtype {
        10 => "float16",
        16 => "bfloat16",
        11 => "float64",
        _ => "float32",
    }
}

pub fn float_type_from_name(name: &str) -> i32 {
    match name {
        "float16" => 10,
        "bfloat16" => 16,
        "float64" => 11,
        _ => 1,
    }
}

/// Default largest relative conservation residual: what the model's float type can resolve.
pub fn default_conservation_tolerance(dtype: i32) -> f32 {
    match dtype {
        10 => 1e-3,
        16 => 1e-2,
        _ => 1e-4,
    }
}

/// Largest change of an original output still called "unchanged": 1e-5 in float32; in half
/// precision a few units of rounding of the output's magnitude (runtimes may round differently
/// in the two graphs).
pub fn unchanged_tolerance(dtype: i32, magnitude: f32) -> f32 {
    let epsilon = match dtype {
        10 => 9.77e-4,
        16 => 7.81e-3,
        _ => return 1e-5,
    };
    4.0 * epsilon * magnitude.max(1.0)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub runtime: Runtime,
    /// Largest |compiled - original| over each original output.
    pub original_outputs_max_abs_diff: Vec<(String, f32)>,
    /// Whether every difference is within [`unchanged_tolerance`] of the model's float type.
    pub original_outputs_unchanged: bool,
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
    float_type: i32,
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
    let mut unchanged = true;
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
        let magnitude = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        unchanged &= diff <= unchanged_tolerance(float_type, magnitude);
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
        original_outputs_unchanged: unchanged,
        samples,
        max_relative_residual,
    })
}

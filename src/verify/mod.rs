//! Runs original and compiled models and checks the contract: original outputs unchanged, and
//! relevance conserved (sum(relevance) + relevance_bias = explained logit).
mod check;
mod conservation;
mod contract;
mod inputs;
mod ort_runner;
mod staging;
mod tolerance;
mod tract_runner;

pub use check::{argmax, check, CheckReport, CheckRow, Original};
pub use conservation::{conservation, SampleCheck};
pub use contract::{
    changed_output, compare_outputs, not_conserved, verify, FailedCheck, OutputCheck, VerifyReport,
    VerifySettings,
};
pub use inputs::{generated_inputs, load_npz, validate_inputs};
pub use ort_runner::{ort_library_path, run_ort, OrtModel};
pub use staging::StagingFolder;
pub use tolerance::{
    default_conservation_tolerance, default_output_tolerance, epsilon, output_bound,
};
pub use tract_runner::run_tract;

use crate::ir::DType;
use std::path::Path;

use ndarray::ArrayD;

use crate::error::Result;
use crate::onnx::proto::ModelProto;
use crate::onnx::Tensor;

/// Which runtime executes a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// tract, embedded: needs nothing installed.
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

/// The runtime asked for on the command line: `auto` prefers ONNX Runtime when its library
/// can be found and loaded (it builds a 130M model's session in seconds, where tract takes
/// minutes) and falls back to the embedded tract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeChoice {
    #[default]
    Auto,
    Only(Runtime),
}

impl std::str::FromStr for RuntimeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(RuntimeChoice::Auto),
            other => other
                .parse()
                .map(RuntimeChoice::Only)
                .map_err(|_| format!("unknown runtime '{other}': expected auto, ort or tract")),
        }
    }
}

/// The runtime to use, and why it was chosen (printed and reported).
pub fn resolve_runtime(choice: RuntimeChoice) -> (Runtime, String) {
    match choice {
        RuntimeChoice::Only(Runtime::Ort) => (Runtime::Ort, "asked for".into()),
        RuntimeChoice::Only(Runtime::Tract) => (Runtime::Tract, "asked for".into()),
        RuntimeChoice::Auto => match ort_runner::load() {
            Ok(path) => (Runtime::Ort, format!("found {}", path.display())),
            Err(e) => (
                Runtime::Tract,
                format!("ONNX Runtime unavailable: {}", runtime_message(&e)),
            ),
        },
    }
}

fn runtime_message(error: &crate::error::Error) -> String {
    match error {
        crate::error::Error::Runtime { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Refuses models no runtime here can execute: bfloat16 exports (tract has no bfloat16, and
/// ONNX Runtime's CPU provider no bfloat16 Conv).
pub fn ensure_runnable(model: &ModelProto) -> Result<()> {
    let graph = model.graph.as_ref();
    match graph.and_then(|g| {
        g.initializer
            .iter()
            .find(|t| DType::from_onnx(t.data_type()) == DType::BFloat16)
    }) {
        Some(t) => Err(crate::error::Error::Unsupported(format!(
            "bfloat16 weights ('{}'): neither tract nor ONNX Runtime's CPU provider runs bfloat16 \
             models (no bfloat16 Conv), so they cannot be verified or checked here; compile \
             with --no-verify and run the compiled model where bfloat16 runs (e.g. a GPU provider), \
             or add --precision float32: the compiled model is then float32 and runs anywhere",
            t.name()
        ))),
        None => Ok(()),
    }
}

/// A model to run: decoded in memory, or a file (read by the runtime itself, with any
/// external data next to it, so a large model is not held twice).
#[derive(Clone, Copy)]
pub enum ModelSource<'a> {
    Proto(&'a ModelProto),
    File(&'a Path),
    /// A compiled model's file: ONNX Runtime then folds no constants, as folding would store a
    /// transposed copy of every weight the relevance pass multiplies by (1.8x instead of 1.2x
    /// the weights on the 130M model); the original keeps folding, without which its unrolled
    /// graph's session takes ~9x longer to build.
    CompiledFile(&'a Path),
}

/// Runs `model` once in `runtime` and returns its float32 outputs by name, in graph order.
pub fn run_model(
    runtime: Runtime,
    model: &ModelProto,
    inputs: &[(String, Tensor)],
) -> Result<Vec<(String, ArrayD<f32>)>> {
    run_source(runtime, ModelSource::Proto(model), inputs)
}

/// Runs a model, given in memory or as a file, once in `runtime`.
pub fn run_source(
    runtime: Runtime,
    model: ModelSource,
    inputs: &[(String, Tensor)],
) -> Result<Vec<(String, ArrayD<f32>)>> {
    run_source_at(runtime, model, inputs, true)
}

/// [`run_source`], with ONNX Runtime's graph optimizations on or off for a model file.
pub fn run_source_at(
    runtime: Runtime,
    model: ModelSource,
    inputs: &[(String, Tensor)],
    optimize: bool,
) -> Result<Vec<(String, ArrayD<f32>)>> {
    match (runtime, model) {
        (Runtime::Ort, ModelSource::Proto(proto)) => {
            ensure_runnable(proto)?;
            run_ort(proto, inputs)
        }
        (Runtime::Ort, ModelSource::File(path)) => {
            OrtModel::from_file_for_one_run(path, true, optimize)?.run(inputs)
        }
        (Runtime::Ort, ModelSource::CompiledFile(path)) => {
            OrtModel::from_file_for_one_run(path, false, optimize)?.run(inputs)
        }
        (Runtime::Tract, ModelSource::Proto(proto)) => {
            ensure_runnable(proto)?;
            run_tract(proto, inputs)
        }
        (Runtime::Tract, ModelSource::File(path) | ModelSource::CompiledFile(path)) => {
            let proto = crate::onnx::load_model(path)?;
            ensure_runnable(&proto)?;
            run_tract(&proto, inputs)
        }
    }
}

/// Metadata key naming the float type a compiled model computes in (`float32`, `float16`, ...).
pub use crate::onnx::metadata::FLOAT_TYPE_KEY;

/// The name recorded under [`FLOAT_TYPE_KEY`]: float32 unless the model computes in another
/// float type.
pub fn float_type_name(dtype: DType) -> &'static str {
    match dtype {
        DType::Float16 | DType::BFloat16 | DType::Double => dtype.name(),
        _ => DType::Float.name(),
    }
}

pub fn float_type_from_name(name: &str) -> DType {
    [DType::Float16, DType::BFloat16, DType::Double]
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or(DType::Float)
}

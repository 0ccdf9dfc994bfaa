//! The compiled-model contract, checked by running both models: every original output
//! unchanged (within a bound that scales with the float type, the output's magnitude and the
//! model's depth), and, under the full MambaLRP rules, relevance conserved. A failed check
//! says what was measured, what was allowed, and which flag changes the allowance.
use ndarray::ArrayD;

use super::{
    conservation, default_conservation_tolerance, default_output_tolerance, output_bound,
    run_source, run_source_at, ModelSource, Runtime, SampleCheck,
};
use crate::error::Result;
use crate::ir::DType;
use crate::onnx::Tensor;

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifySettings {
    pub runtime: Runtime,
    /// The float type the compiled model computes in: what conservation can resolve.
    pub float_type: DType,
    /// The float type the original model computes in: its outputs' rounding, which the
    /// comparison of the original outputs allows for (the same as `float_type` unless the
    /// compiler widened a half-precision export to float32).
    pub original_float_type: DType,
    /// Relative bound on original outputs; `None`: [`default_output_tolerance`].
    pub output_tolerance: Option<f32>,
    /// Largest relative conservation residual; `None`: [`default_conservation_tolerance`].
    pub conservation_tolerance: Option<f32>,
    /// Whether the rule set promises conservation (all four MambaLRP rules).
    pub expect_conservation: bool,
    /// Traced sequence length times (blocks + 1): how many reordered sums feed an output.
    pub depth: usize,
}

/// One original output compared between the two models.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutputCheck {
    pub name: String,
    /// Largest |compiled - original| (infinite when the compiled model lacks the output or
    /// gives it another shape).
    pub max_abs_diff: f32,
    /// Largest |original|.
    pub magnitude: f32,
    /// The absolute bound applied: relative tolerance x max(magnitude, 1).
    pub bound: f32,
    pub unchanged: bool,
}

/// A check that did not pass: what it measured, what it allowed, and how to change that.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedCheck {
    pub check: String,
    pub measured: f32,
    pub tolerance: f32,
    pub flag: &'static str,
    pub advice: String,
}

impl std::fmt::Display for FailedCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: measured {:.3e} > tolerance {:.3e} ({}); {}",
            self.check, self.measured, self.tolerance, self.flag, self.advice
        )
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub runtime: Runtime,
    /// The relative tolerance on original outputs (see [`default_output_tolerance`]).
    pub output_tolerance: f32,
    pub outputs: Vec<OutputCheck>,
    pub original_outputs_unchanged: bool,
    pub samples: Vec<SampleCheck>,
    pub max_relative_residual: f32,
    pub conservation_tolerance: f32,
    /// `None` when the rule set does not promise conservation (e.g. `gi`).
    pub conserved: Option<bool>,
    pub failed: Vec<FailedCheck>,
    /// The outputs differed with ONNX Runtime's graph optimizations on, and these results come
    /// from running both models again with them off.
    pub unoptimized_rerun: bool,
    /// Then: how far those optimizations moved the original's own outputs, relative to their
    /// magnitude; the default output bound is at least this.
    pub rounding_sensitivity: Option<f32>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Runs the original and then the compiled model on `inputs` (the compiled model's extra
/// `lrp_target` input, if any, is fed to it alone), one session at a time (so the weights are
/// in the runtime's memory once), and checks the
/// contract. `progress` hears which step is running.
pub fn verify(
    original: ModelSource,
    compiled: ModelSource,
    inputs: &[(String, Tensor)],
    settings: &VerifySettings,
    progress: &dyn Fn(&str),
) -> Result<VerifyReport> {
    let runtime = settings.runtime;
    // Both runners feed a model only the inputs it declares.
    progress(&format!("verifying: running the original in {runtime}"));
    let reference = run_source(runtime, original, inputs)?;
    progress(&format!(
        "verifying: running the compiled model in {runtime}"
    ));
    let outputs = run_source(runtime, compiled, inputs)?;
    let report = judge(&reference, &outputs, settings)?;
    let files =
        !matches!(original, ModelSource::Proto(_)) && !matches!(compiled, ModelSource::Proto(_));
    if report.original_outputs_unchanged || runtime != Runtime::Ort || !files {
        return Ok(report);
    }
    // ONNX Runtime's graph optimizations fuse ops of the original that the compiled model's
    // relevance pass also reads (so stay unfused there): each graph then rounds differently,
    // and a deep model can carry that past the bound. Run both as written to tell that apart
    // from a real change.
    progress(&format!(
        "verifying: outputs differ; running both again in {runtime} without graph optimizations"
    ));
    let as_written = run_source_at(runtime, original, inputs, false)?;
    let outputs = run_source_at(runtime, compiled, inputs, false)?;
    // How far the runtime's own reordering moved the original: a compiled model within that
    // cannot be told apart from rounding, so the default bound rises to it (an explicit
    // --output-tolerance stays as given).
    let sensitivity = compare_outputs(&reference, &as_written, 0.0)
        .iter()
        .map(|c| c.max_abs_diff / c.magnitude.max(1.0))
        .fold(0.0f32, max_or_nan);
    let mut settings = settings.clone();
    if settings.output_tolerance.is_none() {
        let default = default_output_tolerance(settings.original_float_type, settings.depth);
        settings.output_tolerance = Some(default.max(sensitivity));
    }
    let mut again = judge(&as_written, &outputs, &settings)?;
    again.unoptimized_rerun = true;
    again.rounding_sensitivity = Some(sensitivity);
    Ok(again)
}

/// Compares the outputs of both runs and checks conservation.
pub fn judge(
    reference: &[(String, ArrayD<f32>)],
    outputs: &[(String, ArrayD<f32>)],
    settings: &VerifySettings,
) -> Result<VerifyReport> {
    let output_tolerance = settings
        .output_tolerance
        .unwrap_or_else(|| default_output_tolerance(settings.original_float_type, settings.depth));
    let checks = compare_outputs(reference, outputs, output_tolerance);
    let mut failed: Vec<FailedCheck> = checks
        .iter()
        .filter(|c| !c.unchanged)
        .map(|c| changed_output(c, output_tolerance))
        .collect();
    let samples = conservation(outputs)?;
    let max_relative_residual = samples
        .iter()
        .map(|s| s.relative_residual)
        .fold(0.0f32, max_or_nan);
    let conservation_tolerance = settings
        .conservation_tolerance
        .unwrap_or_else(|| default_conservation_tolerance(settings.float_type));
    // NaN residuals fail too.
    let conserved = settings
        .expect_conservation
        .then_some(max_relative_residual <= conservation_tolerance);
    if conserved == Some(false) {
        failed.push(not_conserved(max_relative_residual, conservation_tolerance));
    }
    Ok(VerifyReport {
        runtime: settings.runtime,
        output_tolerance,
        original_outputs_unchanged: checks.iter().all(|c| c.unchanged),
        outputs: checks,
        samples,
        max_relative_residual,
        conservation_tolerance,
        conserved,
        failed,
        unoptimized_rerun: false,
        rounding_sensitivity: None,
    })
}

/// Compares every output of the original run with the compiled run's output of that name.
pub fn compare_outputs(
    reference: &[(String, ArrayD<f32>)],
    outputs: &[(String, ArrayD<f32>)],
    relative: f32,
) -> Vec<OutputCheck> {
    reference
        .iter()
        .map(|(name, expected)| compare_output(name, expected, outputs, relative))
        .collect()
}

/// The refusal for an original output the compiled model changed.
pub fn changed_output(check: &OutputCheck, relative: f32) -> FailedCheck {
    FailedCheck {
        check: format!("original output '{}' unchanged", check.name),
        measured: check.max_abs_diff,
        tolerance: check.bound,
        flag: "--output-tolerance",
        advice: format!(
            "the bound is {relative:.1e} x max(|{}|, 1) = {relative:.1e} x {:.3}; a difference \
             far above it means the compiled graph computes something else (please report it); \
             one just above it may be rounding: raise --output-tolerance",
            check.name,
            check.magnitude.max(1.0)
        ),
    }
}

/// The refusal for relevance that does not sum to the explained logit.
pub fn not_conserved(max_relative_residual: f32, tolerance: f32) -> FailedCheck {
    FailedCheck {
        check: "relevance conservation |sum(relevance) + relevance_bias - logit| / |logit|".into(),
        measured: max_relative_residual,
        tolerance,
        flag: "--tolerance",
        advice: "the MambaLRP rules make relevance sum to the logit up to rounding; a larger \
                 residual means an op on the relevance path is not handled (please report it), \
                 or the model's precision needs a looser --tolerance"
            .into(),
    }
}

fn compare_output(
    name: &str,
    expected: &ArrayD<f32>,
    outputs: &[(String, ArrayD<f32>)],
    relative: f32,
) -> OutputCheck {
    let got = outputs.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let max_abs_diff = match got {
        Some(got) if got.shape() == expected.shape() => got
            .iter()
            .zip(expected.iter())
            .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
            .fold(0.0f32, max_or_nan),
        _ => f32::INFINITY,
    };
    let magnitude = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let bound = output_bound(relative, magnitude);
    OutputCheck {
        name: name.to_string(),
        max_abs_diff,
        magnitude,
        bound,
        // NaN differences fail too.
        unchanged: max_abs_diff <= bound,
    }
}

/// The larger of two values, NaN if either is (f32::max would drop a NaN).
pub(super) fn max_or_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

//! `mambalrp-compile check`: the conservation gate for users' CI. Runs a compiled model and
//! reports, per sample, the explained logit, the relevance sum, the bias share and the residual.
use ndarray::{ArrayD, Axis};

use super::{
    changed_output, compare_outputs, conservation, default_output_tolerance, not_conserved,
    run_source, FailedCheck, ModelSource, OutputCheck, Runtime,
};
use crate::emit::TARGET_INPUT;
use crate::error::Result;
use crate::ir::DType;
use crate::onnx::proto::ModelProto;
use crate::onnx::Tensor;

#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckRow {
    pub sample: usize,
    /// The explained class (from `lrp_target`, or the argmax at the last position).
    pub target: Option<i64>,
    pub explained_logit: f32,
    pub relevance_sum: f32,
    pub relevance_bias: f32,
    /// relevance_bias / explained logit.
    pub bias_share: f32,
    pub relative_residual: f32,
    pub passed: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub runtime: Runtime,
    pub tolerance: f32,
    pub samples: Vec<CheckRow>,
    /// With an original model: the relative bound on its outputs, and each output compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tolerance: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputCheck>,
    pub failed: Vec<FailedCheck>,
    pub passed: bool,
}

/// The model a compiled model was compiled from, to check that its outputs are unchanged.
pub struct Original<'a> {
    pub model: ModelSource<'a>,
    /// Relative bound on the outputs; `None`: the default for `float_type` and `depth`.
    pub output_tolerance: Option<f32>,
    pub float_type: DType,
    /// Sequence length times (blocks + 1) (see `default_output_tolerance`).
    pub depth: usize,
}

/// Runs the compiled `model` (read by the runtime from `source`: its file, or itself) and
/// checks conservation, and with `original` that the original outputs are unchanged.
pub fn check(
    model: &ModelProto,
    source: ModelSource,
    inputs: &[(String, Tensor)],
    runtime: Runtime,
    tolerance: f32,
    original: Option<&Original>,
) -> Result<CheckReport> {
    super::ensure_runnable(model)?;
    // One session at a time: the original's is gone before the compiled model's is built.
    let reference = match original {
        Some(original) => Some(run_source(runtime, original.model, inputs)?),
        None => None,
    };
    let outputs = run_source(runtime, source, inputs)?;
    let (output_tolerance, output_checks) = match (original, &reference) {
        (Some(original), Some(reference)) => {
            let relative = original
                .output_tolerance
                .unwrap_or_else(|| default_output_tolerance(original.float_type, original.depth));
            (
                Some(relative),
                compare_outputs(reference, &outputs, relative),
            )
        }
        _ => (None, vec![]),
    };
    let targets = explained_targets(model, inputs, &outputs);
    let samples: Vec<CheckRow> = conservation(&outputs)?
        .into_iter()
        .map(|s| CheckRow {
            sample: s.sample,
            target: targets.as_ref().and_then(|t| t.get(s.sample).copied()),
            explained_logit: s.explained_logit,
            relevance_sum: s.relevance_sum,
            relevance_bias: s.relevance_bias,
            bias_share: s.relevance_bias / s.explained_logit,
            relative_residual: s.relative_residual,
            // NaN residuals fail too.
            passed: s.relative_residual <= tolerance,
        })
        .collect();
    let mut failed: Vec<FailedCheck> = output_checks
        .iter()
        .filter(|c| !c.unchanged)
        .filter_map(|c| output_tolerance.map(|relative| changed_output(c, relative)))
        .collect();
    if !samples.iter().all(|s| s.passed) {
        let worst = samples
            .iter()
            .map(|s| s.relative_residual)
            .fold(0.0f32, super::contract::max_or_nan);
        failed.push(not_conserved(worst, tolerance));
    }
    Ok(CheckReport {
        runtime,
        tolerance,
        samples,
        output_tolerance,
        outputs: output_checks,
        passed: failed.is_empty(),
        failed,
    })
}

fn explained_targets(
    model: &ModelProto,
    inputs: &[(String, Tensor)],
    outputs: &[(String, ArrayD<f32>)],
) -> Option<Vec<i64>> {
    if let Some((_, Tensor::I64(t))) = inputs.iter().find(|(n, _)| n == TARGET_INPUT) {
        return Some(t.iter().copied().collect());
    }
    let first = model.graph.as_ref()?.output.first()?.name();
    let logits = &outputs.iter().find(|(n, _)| n == first)?.1;
    let last = match logits.ndim() {
        3 => logits
            .index_axis(Axis(1), logits.shape()[1] - 1)
            .to_owned()
            .into_dyn(),
        2 => logits.clone(),
        _ => return None,
    };
    Some(
        last.outer_iter()
            .map(|row| argmax(row.iter()) as i64)
            .collect(),
    )
}

/// The index of the largest value (the first on ties; NaNs never win): the explained token
/// when a model takes no `lrp_target`.
pub fn argmax<'a>(values: impl IntoIterator<Item = &'a f32>) -> usize {
    values
        .into_iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

//! `mambalrp-compile check`: the conservation gate for users' CI. Runs a compiled model and
//! reports, per sample, the explained logit, the relevance sum, the bias share and the residual.
use ndarray::{ArrayD, Axis};

use super::{conservation, run_model, Runtime};
use crate::emit::TARGET_INPUT;
use crate::error::Result;
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
    pub passed: bool,
}

pub fn check(
    model: &ModelProto,
    inputs: &[(String, Tensor)],
    runtime: Runtime,
    tolerance: f32,
) -> Result<CheckReport> {
    let outputs = run_model(runtime, model, inputs)?;
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
    let passed = samples.iter().all(|s| s.passed);
    Ok(CheckReport {
        runtime,
        tolerance,
        samples,
        passed,
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
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 {
                            (i, v)
                        } else {
                            best
                        }
                    })
                    .0 as i64
            })
            .collect(),
    )
}

//! Relevance conservation per sample.
use ndarray::ArrayD;

use crate::emit::{RELEVANCE, RELEVANCE_BIAS, RELEVANCE_TARGET_LOGIT};
use crate::error::{Error, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleCheck {
    pub sample: usize,
    pub explained_logit: f32,
    pub relevance_sum: f32,
    pub relevance_bias: f32,
    /// |relevance_sum + relevance_bias - explained_logit| / |explained_logit|.
    pub relative_residual: f32,
}

fn output<'a>(outputs: &'a [(String, ArrayD<f32>)], name: &str) -> Result<&'a ArrayD<f32>> {
    outputs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .ok_or_else(|| {
            Error::Verify(format!(
                "the model has no output '{name}': was it compiled by mambalrp-compile?"
            ))
        })
}

pub fn conservation(outputs: &[(String, ArrayD<f32>)]) -> Result<Vec<SampleCheck>> {
    let relevance = output(outputs, RELEVANCE)?;
    let logit = output(outputs, RELEVANCE_TARGET_LOGIT)?;
    let bias = output(outputs, RELEVANCE_BIAS)?;
    let batch = logit.len();
    if relevance.ndim() < 2 || relevance.shape()[0] != batch || bias.len() != batch {
        return Err(Error::Verify(format!(
            "relevance outputs disagree in shape: relevance {:?}, target logit {:?}, bias {:?}",
            relevance.shape(),
            logit.shape(),
            bias.shape()
        )));
    }
    Ok((0..batch)
        .map(|b| {
            let sum: f64 = relevance
                .index_axis(ndarray::Axis(0), b)
                .iter()
                .map(|&v| v as f64)
                .sum();
            let (f, bias) = (
                logit
                    .as_slice_memory_order()
                    .map(|s| s[b])
                    .unwrap_or(f32::NAN),
                bias.iter().nth(b).copied().unwrap_or(f32::NAN),
            );
            let residual =
                ((sum + bias as f64 - f as f64).abs() / (f as f64).abs().max(1e-12)) as f32;
            SampleCheck {
                sample: b,
                explained_logit: f,
                relevance_sum: sum as f32,
                relevance_bias: bias,
                relative_residual: residual,
            }
        })
        .collect())
}

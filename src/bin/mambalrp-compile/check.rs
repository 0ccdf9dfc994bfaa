//! `mambalrp-compile check MODEL_LRP`: runs a compiled model and gates on conservation.
use std::path::PathBuf;

use anyhow::Context;
use mambalrp::ir::DType;
use mambalrp::onnx;
use mambalrp::onnx::proto::ModelProto;
use mambalrp::onnx::Tensor;
use mambalrp::verify::{self, ModelSource, Runtime};

use crate::Outcome;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// A model compiled by mambalrp-compile.
    model: PathBuf,
    /// Inputs (.npz keyed by input name); default: deterministic generated tokens.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Runtime that executes the model: ort (ONNX Runtime) or tract.
    #[arg(long, default_value = "ort")]
    runtime: Runtime,
    /// Largest relative residual |sum(relevance) + bias - logit| / |logit| accepted.
    /// (default 1e-4 for float32 models, 1e-3 for float16, 1e-2 for bfloat16).
    #[arg(long)]
    tolerance: Option<f32>,
    /// Write the table as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// The model MODEL_LRP was compiled from: also check that its outputs are unchanged.
    #[arg(long)]
    original: Option<PathBuf>,
    /// With --original: largest |compiled - original| accepted, relative to the output's
    /// largest magnitude (at least 1); default as for compiling.
    #[arg(long, requires = "original")]
    output_tolerance: Option<f32>,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<Outcome> {
    let model = onnx::load_model(&args.model)?;
    let inputs = crate::model_inputs(&model, args.input.as_deref())?;
    let float_type = mambalrp::onnx::metadata::value(&model, verify::FLOAT_TYPE_KEY)
        .map_or(DType::Float, verify::float_type_from_name);
    let tolerance = args
        .tolerance
        .unwrap_or_else(|| verify::default_conservation_tolerance(float_type));
    let original = args.original.as_deref().map(|path| verify::Original {
        model: ModelSource::File(path),
        output_tolerance: args.output_tolerance,
        float_type,
        depth: traced_depth(&model, &inputs),
    });
    let report = verify::check(
        &model,
        ModelSource::CompiledFile(&args.model),
        &inputs,
        args.runtime,
        tolerance,
        original.as_ref(),
    )
    .with_context(|| format!("cannot check {}", args.model.display()))?;
    println!(
        "{} ({}, tolerance {:.0e})",
        args.model.display(),
        report.runtime,
        report.tolerance
    );
    println!(
        "{:>6} {:>8} {:>14} {:>14} {:>12} {:>10} {:>10}  ",
        "sample", "target", "logit", "sum(R)", "bias", "bias share", "residual"
    );
    for row in &report.samples {
        let target = row.target.map_or("-".to_string(), |t| t.to_string());
        println!(
            "{:>6} {:>8} {:>14.6} {:>14.6} {:>12.6} {:>10.2e} {:>10.2e}  {}",
            row.sample,
            target,
            row.explained_logit,
            row.relevance_sum,
            row.relevance_bias,
            row.bias_share,
            row.relative_residual,
            if row.passed { "ok" } else { "FAIL" }
        );
    }
    if let Some(relative) = report.output_tolerance {
        for output in &report.outputs {
            println!(
                "original output '{}': max |compiled - original| = {:.2e} (bound {:.2e} = {relative:.1e} x {:.3}) {}",
                output.name,
                output.max_abs_diff,
                output.bound,
                output.magnitude.max(1.0),
                if output.unchanged { "OK" } else { "CHANGED" }
            );
        }
    }
    let failed = report.samples.iter().filter(|r| !r.passed).count();
    if failed == 0 {
        println!("conservation holds on all {} samples", report.samples.len());
    } else {
        println!(
            "conservation FAILS on {failed} of {} samples",
            report.samples.len()
        );
    }
    for check in &report.failed {
        println!("FAILED {check}");
    }
    if let Some(path) = &args.report {
        onnx::io::write_atomically(path, &serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(if report.passed {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}

/// Sequence length x (blocks + 1) of the checked inputs: the depth the default output
/// tolerance scales with.
fn traced_depth(model: &ModelProto, inputs: &[(String, Tensor)]) -> usize {
    let blocks = mambalrp::onnx::metadata::value(model, mambalrp::emit::BLOCKS_KEY)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1);
    let sequence = inputs
        .iter()
        .filter_map(|(_, t)| t.shape().get(1).copied())
        .max()
        .unwrap_or(1);
    sequence * (blocks + 1)
}

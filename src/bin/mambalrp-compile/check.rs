//! `mambalrp-compile check MODEL_LRP`: runs a compiled model and gates on conservation.
use std::path::PathBuf;

use anyhow::Context;
use mambalrp::onnx;
use mambalrp::verify::{self, Runtime};

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
}

pub fn run(args: &CheckArgs) -> anyhow::Result<Outcome> {
    let model = onnx::load_model(&args.model)?;
    let inputs = crate::model_inputs(&model, args.input.as_deref())?;
    let float_type = model
        .metadata_props
        .iter()
        .find(|p| p.key() == verify::FLOAT_TYPE_KEY)
        .map_or(1, |p| verify::float_type_from_name(p.value()));
    let tolerance = args
        .tolerance
        .unwrap_or_else(|| verify::default_conservation_tolerance(float_type));
    let report = verify::check(&model, &inputs, args.runtime, tolerance)
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
    let failed = report.samples.iter().filter(|r| !r.passed).count();
    if report.passed {
        println!("conservation holds on all {} samples", report.samples.len());
    } else {
        println!(
            "conservation FAILS on {failed} of {} samples",
            report.samples.len()
        );
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

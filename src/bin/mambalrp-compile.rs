//! `mambalrp-compile`: the command-line front end. Exit codes: 0 success, 1 verification failed
//! (original outputs changed or relevance not conserved), 2 bad input, usage or compile error.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use mambalrp::emit::TargetMode;
use mambalrp::rules::RuleSet;
use mambalrp::verify::{self, VerifyReport};
use mambalrp::{compile, onnx, CompileReport, Options};

#[derive(Parser, Debug)]
#[command(
    name = "mambalrp-compile",
    version,
    about = "Compile a Mamba ONNX model into one that also outputs MambaLRP relevances"
)]
struct Cli {
    /// The exported Mamba model (.onnx).
    model: PathBuf,
    /// Where to write the compiled model.
    #[arg(short, long)]
    output: PathBuf,
    /// Rule set: `mambalrp` (all four), `gi` (plain gradient x input), or a list of silu,norm,ssm,gate.
    #[arg(long, default_value = "mambalrp")]
    rules: RuleSet,
    /// Optional outputs: embedding (relevance_embedding), layers (relevance_layers).
    #[arg(long, value_delimiter = ',')]
    emit: Vec<Emit>,
    /// Which class is explained: the argmax, or a new int64 input `lrp_target` [batch].
    #[arg(long, value_enum, default_value = "argmax")]
    target: Target,
    /// Skip running the original and compiled models in tract after compiling.
    #[arg(long)]
    no_verify: bool,
    /// Inputs for verification (.npz keyed by input name); default: deterministic generated tokens.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Largest relative conservation residual accepted under the MambaLRP rules.
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f32,
    /// Write the compile and verification summary as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print every rule site found and every rejected candidate with the reason.
    #[arg(long)]
    explain_matches: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Emit {
    Embedding,
    Layers,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Target {
    Argmax,
    Input,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    model: &'a Path,
    output: &'a Path,
    compile: &'a CompileReport,
    verification: Option<&'a VerifyReport>,
    conserved: Option<bool>,
}

enum Outcome {
    Ok,
    VerificationFailed,
}

fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    if same_file(&cli.model, &cli.output) {
        bail!(
            "refusing to overwrite the input model {} with the output",
            cli.model.display()
        );
    }
    let model = onnx::load_model(&cli.model)?;
    let options = Options {
        rules: cli.rules.clone(),
        target: match cli.target {
            Target::Argmax => TargetMode::Argmax,
            Target::Input => TargetMode::Input,
        },
        emit_embedding: cli.emit.contains(&Emit::Embedding),
        emit_layers: cli.emit.contains(&Emit::Layers),
    };
    let compiled = compile(&model, &options)
        .with_context(|| format!("cannot compile {}", cli.model.display()))?;
    let report = &compiled.report;
    if cli.explain_matches {
        println!("rule sites ({}):", report.sites.len());
        report.sites.iter().for_each(|s| println!("  + {s}"));
        println!(
            "rejected candidates ({}):",
            report.rejected_candidates.len()
        );
        report
            .rejected_candidates
            .iter()
            .for_each(|s| println!("  - {s}"));
    }

    let verification = if cli.no_verify {
        None
    } else {
        let graph = mambalrp::ir::Graph::from_model(&compiled.model)?;
        let inputs = match &cli.input {
            Some(path) => verify::load_npz(path)?,
            None => verify::generated_inputs(&graph)?,
        };
        Some(
            verify::verify(&model, &compiled.model, &inputs)
                .context("verification could not run")?,
        )
    };
    let conserved = verification
        .as_ref()
        .filter(|_| options.rules.is_complete())
        .map(|v| v.max_relative_residual <= cli.tolerance);
    let unchanged = verification.as_ref().is_none_or(|v| {
        v.original_outputs_max_abs_diff
            .iter()
            .all(|(_, d)| *d <= 1e-5)
    });

    println!(
        "compiled {} -> {} (rules {}, {} nodes -> {}, relevance path {} nodes, sites: {})",
        cli.model.display(),
        cli.output.display(),
        report.rules,
        report.nodes_original,
        report.nodes_compiled,
        report.relevance_path_nodes,
        serde_json::to_string(&report.site_counts)?
    );
    if let Some(v) = &verification {
        for (name, diff) in &v.original_outputs_max_abs_diff {
            println!("  original output '{name}': max |compiled - original| = {diff:.2e}");
        }
        for s in &v.samples {
            println!(
                "  sample {}: logit {:.6}  sum(relevance) {:.6}  bias {:.6}  residual {:.2e}",
                s.sample, s.explained_logit, s.relevance_sum, s.relevance_bias, s.relative_residual
            );
        }
        match conserved {
            Some(true) => println!(
                "  conservation: OK (max residual {:.2e} <= {:.0e})",
                v.max_relative_residual, cli.tolerance
            ),
            Some(false) => println!(
                "  conservation: FAILED (max residual {:.2e} > {:.0e})",
                v.max_relative_residual, cli.tolerance
            ),
            None => println!(
                "  conservation: not checked (rules '{}' do not conserve relevance)",
                report.rules
            ),
        }
    }
    let passed = unchanged && conserved != Some(false);
    if passed {
        onnx::save_model_atomically(&compiled.model, &cli.output)?;
    } else {
        println!("  nothing written: verification failed");
    }
    if let Some(path) = &cli.report {
        let json = serde_json::to_vec_pretty(&Report {
            model: &cli.model,
            output: &cli.output,
            compile: report,
            verification: verification.as_ref(),
            conserved,
        })?;
        onnx::io::write_atomically(path, &json)?;
    }
    Ok(if passed {
        Outcome::Ok
    } else {
        Outcome::VerificationFailed
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::VerificationFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

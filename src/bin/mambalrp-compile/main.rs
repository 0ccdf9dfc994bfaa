//! `mambalrp-compile`: the command-line front end.
//!
//! Exit codes: 0 success; 1 verification or conservation check failed; 2 bad input, usage error,
//! or a model the compiler cannot handle.
mod check;
mod compile;
mod evaluate;
mod explain;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mambalrp-compile",
    version,
    about = "Compile a Mamba ONNX model into one that also outputs MambaLRP relevances",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    compile: compile::CompileArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check relevance conservation of a compiled model (for CI gates).
    Check(check::CheckArgs),
    /// Explain texts with a compiled model: token relevance as a heatmap, HTML or JSON.
    Explain(explain::ExplainArgs),
    /// Token-flipping faithfulness (MoRF / LeRF areas, dA^F) of compiled models.
    Evaluate(evaluate::EvaluateArgs),
}

/// What a command found, beyond errors.
pub enum Outcome {
    Passed,
    Failed,
}

/// Reads `--input` arrays, or generates deterministic ones, and checks them against the model.
pub fn model_inputs(
    model: &mambalrp::onnx::proto::ModelProto,
    input: Option<&Path>,
) -> anyhow::Result<Vec<(String, mambalrp::onnx::Tensor)>> {
    let graph = mambalrp::ir::Graph::from_model(model)?;
    match input {
        Some(path) => {
            let arrays = mambalrp::verify::load_npz(path)?;
            mambalrp::verify::validate_inputs(&graph, &arrays, &path.display().to_string())?;
            Ok(arrays)
        }
        None => Ok(mambalrp::verify::generated_inputs(&graph)?),
    }
}

fn main() -> ExitCode {
    // A closed stdout (`| head`) ends the process quietly, as with other command-line tools,
    // instead of a panic in println.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Check(args)) => check::run(args),
        Some(Command::Explain(args)) => explain::run(args),
        Some(Command::Evaluate(args)) => evaluate::run(args),
        None => compile::run(&cli.compile),
    };
    match result {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

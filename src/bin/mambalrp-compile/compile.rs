//! `mambalrp-compile MODEL -o OUT`: compile, verify, write.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use anyhow::{bail, Context};
use mambalrp::emit::TargetMode;
use mambalrp::reroll::ScanForm;
use mambalrp::rules::{PatchRule, RuleSet, SiluRule};
use mambalrp::verify::{
    self, FailedCheck, ModelSource, Runtime, RuntimeChoice, StagingFolder, VerifyReport,
};
use mambalrp::{compile_owned, onnx, CompileReport, Options, Precision};

use crate::Outcome;

#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// The exported Mamba model (.onnx).
    #[arg(required = true)]
    model: Option<PathBuf>,
    /// Where to write the compiled model.
    #[arg(short, long, required = true)]
    output: Option<PathBuf>,
    /// Rule set: `mambalrp` (all four), `gi` (plain gradient x input), or a list of silu,norm,ssm,gate.
    #[arg(long, default_value = "mambalrp")]
    rules: RuleSet,
    /// SiLU identity rule: stabilized (the official MambaLRP code's silu(x)/(x +- 1e-6)
    /// multiplier) or exact (sigmoid(x)); they differ only where |x| < ~1e-5.
    #[arg(long, value_enum, default_value_t = SiluRule::Stabilized)]
    silu_rule: SiluRule,
    /// Image models: how relevance crosses the patch embedding to the pixels: gamma:G
    /// (LRP-gamma, the official MambaLRP code's gamma:0.25) or zero (the plain gradient).
    #[arg(long, default_value = "gamma:0.25")]
    patch_rule: PatchRule,
    /// Optional outputs: embedding (relevance_embedding), layers (relevance_layers).
    #[arg(long, value_delimiter = ',')]
    emit: Vec<Emit>,
    /// Which class is explained: the argmax, or a new int64 input `lrp_target` [batch].
    #[arg(long, value_enum, default_value_t = TargetMode::Argmax)]
    target: TargetMode,
    /// Skip running the original and compiled models after compiling.
    #[arg(long)]
    no_verify: bool,
    /// Runtime for the verification: auto (ONNX Runtime when its library is found, else
    /// tract), ort (ONNX Runtime) or tract (embedded, much slower on large models).
    #[arg(long, default_value = "auto")]
    verify_runtime: RuntimeChoice,
    /// Inputs for verification (.npz keyed by input name); default: deterministic generated tokens.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Largest relative conservation residual accepted under the MambaLRP rules (default 1e-4
    /// for float32 models, 1e-3 for float16, 1e-2 for bfloat16).
    #[arg(long)]
    tolerance: Option<f32>,
    /// Largest |compiled - original| accepted on an original output, relative to the output's
    /// largest magnitude (at least 1). Default: 2 x epsilon x sqrt(sequence length x
    /// (blocks + 1)), e.g. 6.7e-6 for a float32 24-block model at 32 tokens.
    #[arg(long)]
    output_tolerance: Option<f32>,
    /// Write the compile and verification summary as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print every rule site found and every rejected candidate with the reason.
    #[arg(long)]
    explain_matches: bool,
    /// Form of the selective-scan recurrence: rolled (one Scan step per token), chunked (one
    /// Scan step per chunk of tokens, computed in parallel), parallel (no Scan: all chunks at
    /// once, states passed by log-depth doubling; the GPU form) or unrolled (as exported).
    /// Only the unrolled graph grows with the sequence length.
    #[arg(long, value_enum, default_value_t = ScanForm::Rolled)]
    scan: ScanForm,
    /// Tokens per chunk, at most (a fixed length uses its largest divisor up to this): rolled
    /// runs them one after another per Scan iteration (default 32), chunked in parallel
    /// (default 4); parallel takes 2 to 8 (default 8).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    chunk_len: Option<u16>,
    /// Make the sequence axis symbolic, so one compiled model explains any length (needs the
    /// rolled, chunked or parallel scan; verification runs at the traced length).
    #[arg(long)]
    dynamic_seq: bool,
    /// Make the batch axis symbolic (needs the rolled, chunked or parallel scan; verification runs at
    /// the traced batch size).
    #[arg(long)]
    dynamic_batch: bool,
    /// Run the batch N samples at a time: the model is wrapped in one Scan over groups of N
    /// samples, so its memory is that of N samples (plus the outputs) whatever the batch size
    /// (implies --dynamic-batch; for long sequences on a GPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    micro_batch: Option<u16>,
    /// The longest sequence a --scan parallel model with a symbolic length serves (rounded up
    /// to a power of the chunk length; default 262144). Every power of the chunk length it
    /// spans is a level of a few dozen small kernels per layer, so a GPU serving short texts
    /// runs faster with a small one; a longer input then fails at a node named
    /// max_seq_len_N_exceeded.
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(1..))]
    max_seq_len: Option<u32>,
    /// Store the weights in OUTPUT.data next to the model (automatic above 2 GiB).
    #[arg(long)]
    external_data: bool,
    /// What the compiled model computes in: as-exported, or float32 (a float16 or bfloat16
    /// export's weights widened exactly and every activation, output and relevance float32:
    /// relevance then agrees with the float32 model to about 1e-4, where half precision's own
    /// rounding moves it by 10-20%; the weights take twice the memory).
    #[arg(long, value_enum, default_value_t = Precision::AsExported)]
    precision: Precision,
    /// Keep the large forward values the relevance pass multiplies by (the scan's decay
    /// factors, [batch, d_inner, seq, state] per layer) instead of recomputing them there:
    /// five fewer state-sized kernels per layer in the parallel form, at 4 x d_inner x state
    /// bytes more per token and layer (98 KB for the 130M model).
    #[arg(long)]
    keep_forward_values: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Emit {
    Embedding,
    Layers,
}

/// Wall time of each phase, and the process's peak resident memory.
#[derive(serde::Serialize, Default)]
struct Costs {
    load_seconds: f64,
    compile_seconds: f64,
    verify_seconds: f64,
    write_seconds: f64,
    /// VmHWM from /proc/self/status (Linux).
    peak_rss_mb: Option<f64>,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    model: &'a Path,
    output: &'a Path,
    compile: &'a CompileReport,
    verification: Option<&'a VerifyReport>,
    /// Why verification ran in the runtime it ran in.
    runtime_reason: Option<&'a str>,
    conserved: Option<bool>,
    /// The checks that failed (empty when the model was written).
    failed: &'a [FailedCheck],
    costs: &'a Costs,
}

/// Runs `work` under a spinner naming the phase (drawn only on a terminal) and returns its
/// result and wall time.
fn phase<T>(progress: &ProgressBar, name: &str, work: impl FnOnce() -> T) -> (T, f64) {
    progress.set_message(name.to_string());
    let start = Instant::now();
    let result = work();
    (result, start.elapsed().as_secs_f64())
}

/// Hands the heap that held the exported graph back to the system. glibc keeps freed small
/// blocks in its arenas, so without this they stay resident while the weights are paged in to
/// be written, and peak memory is the model plus the decoded exported graph.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(args: &CompileArgs) -> anyhow::Result<Outcome> {
    let (Some(model_path), Some(output_path)) = (&args.model, &args.output) else {
        bail!("MODEL and -o OUTPUT are required");
    };
    if same_file(model_path, output_path) {
        bail!(
            "refusing to overwrite the input model {} with the output",
            model_path.display()
        );
    }
    if args.chunk_len.is_some() && args.scan == ScanForm::Unrolled {
        bail!("--chunk-len applies to --scan rolled, chunked or parallel, not unrolled");
    }
    let progress = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})")?);
    progress.enable_steady_tick(Duration::from_millis(200));
    let mut costs = Costs::default();

    let (loaded, seconds) = phase(&progress, "loading", || onnx::load_model_mapped(model_path));
    let onnx::LoadedModel { mut model, mapped } = loaded?;
    costs.load_seconds = seconds;
    let options = compile_options(args);
    // Verification runs the original and the compiled model from small files in a staging
    // folder next to the output whose weights refer to the mapped input (see
    // verify::StagingFolder): the runtime then holds the weights once.
    let mut staging = None;
    if !args.no_verify {
        verify::ensure_runnable(&model)
            .with_context(|| format!("cannot verify {}", model_path.display()))?;
        let (staged, seconds) = phase(&progress, "verifying: staging the original", || {
            let (runtime, reason) = verify::resolve_runtime(args.verify_runtime);
            let mut folder = StagingFolder::create(output_path)?;
            let original_view = match runtime {
                Runtime::Ort => folder.write_view(&mut model, &mapped, "original.onnx")?,
                Runtime::Tract => model_path.clone(),
            };
            anyhow::Ok((folder, runtime, reason, original_view))
        });
        staging = Some(staged?);
        costs.verify_seconds = seconds;
    }
    let (compiled, seconds) = phase(&progress, "compiling", || compile_owned(model, &options));
    if compiled.is_err() && args.explain_matches {
        progress.finish_and_clear();
        print_candidates(model_path);
    }
    let mut compiled =
        compiled.with_context(|| format!("cannot compile {}", model_path.display()))?;
    return_freed_memory();
    costs.compile_seconds = seconds;
    let report = compiled.report.clone();

    let (verification, seconds) = phase(
        &progress,
        "verifying",
        || -> anyhow::Result<Option<VerifyReport>> {
            let Some((folder, runtime, _, original_view)) = &mut staging else {
                return Ok(None);
            };
            let inputs = crate::model_inputs(&compiled.model, args.input.as_deref())?;
            let settings = verify::VerifySettings {
                runtime: *runtime,
                float_type: report.float_type,
                original_float_type: report.exported_float_type,
                output_tolerance: args.output_tolerance,
                conservation_tolerance: args.tolerance,
                expect_conservation: options.rules.is_complete(),
                depth: report.sequence_length * (report.blocks + 1),
            };
            let compiled_view = match runtime {
                Runtime::Ort => {
                    Some(folder.write_view(&mut compiled.model, &mapped, "compiled.onnx")?)
                }
                Runtime::Tract => None,
            };
            let compiled_source = match &compiled_view {
                Some(path) => ModelSource::CompiledFile(path),
                None => ModelSource::Proto(&compiled.model),
            };
            let verified = verify::verify(
                ModelSource::File(&*original_view),
                compiled_source,
                &inputs,
                &settings,
                &|step| {
                    // What the previous step freed goes back before the next one allocates.
                    return_freed_memory();
                    progress.set_message(step.to_string())
                },
            )
            .context("verification could not run")?;
            Ok(Some(verified))
        },
    );
    let verification = verification?;
    costs.verify_seconds += seconds;
    let runtime = staging
        .take()
        .map(|(_, runtime, reason, _)| (runtime, reason));
    return_freed_memory();
    let failed: Vec<FailedCheck> = verification
        .as_ref()
        .map_or_else(Vec::new, |v| v.failed.clone());
    let passed = failed.is_empty();
    if passed {
        let (written, seconds) = phase(&progress, "writing", || {
            onnx::io::save_model(compiled.model, output_path, args.external_data)
        });
        written?;
        costs.write_seconds = seconds;
    }
    progress.finish_and_clear();
    costs.peak_rss_mb = peak_rss_mb();

    if args.explain_matches {
        print_matches(&report);
    }
    print_summary(model_path, output_path, &report, &costs)?;
    if let (Some(v), Some((_, reason))) = (&verification, &runtime) {
        print_verification(v, reason, &report.rules);
    }
    if !passed {
        println!("  nothing written: {} check(s) failed:", failed.len());
        for check in &failed {
            println!("  - {check}");
        }
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_vec_pretty(&Report {
            model: model_path,
            output: output_path,
            compile: &report,
            verification: verification.as_ref(),
            runtime_reason: runtime.as_ref().map(|(_, reason)| reason.as_str()),
            conserved: verification.as_ref().and_then(|v| v.conserved),
            failed: &failed,
            costs: &costs,
        })?;
        onnx::io::write_atomically(path, &json)?;
    }
    Ok(if passed {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}

/// `--explain-matches` after a failed compile: what the matchers found and rejected.
fn print_candidates(model_path: &Path) {
    let explained = onnx::load_model_mapped(model_path)
        .map_err(anyhow::Error::from)
        .and_then(|loaded| Ok(mambalrp::compile::explain(&loaded.model)?));
    let Ok((canonicalized, matches)) = explained else {
        return;
    };
    for (rewrite, count) in &canonicalized {
        println!("canonicalised: {rewrite} ({count}x)");
    }
    println!("rule sites ({}):", matches.sites.len());
    matches
        .sites
        .iter()
        .for_each(|s| println!("  + {}", s.label()));
    println!("rejected candidates ({}):", matches.rejections.len());
    for r in &matches.rejections {
        println!("  - {} '{}': {}", r.rule.name(), r.node, r.reason);
    }
}

/// The compiler options the command line asks for.
fn compile_options(args: &CompileArgs) -> Options {
    Options {
        rules: args.rules.clone(),
        silu_rule: args.silu_rule,
        patch_rule: args.patch_rule,
        target: args.target,
        emit_embedding: args.emit.contains(&Emit::Embedding),
        emit_layers: args.emit.contains(&Emit::Layers),
        scan: args.scan,
        chunk_len: args.chunk_len.map(usize::from),
        dynamic_sequence: args.dynamic_seq,
        dynamic_batch: args.dynamic_batch,
        micro_batch: args.micro_batch.map(usize::from),
        max_seq_len: args.max_seq_len.map(|n| n as usize),
        precision: args.precision,
        keep_forward_values: args.keep_forward_values,
    }
}

/// `--explain-matches`: the canonicalising rewrites, every rule site and every rejected
/// candidate.
fn print_matches(report: &CompileReport) {
    if !report.canonicalized.is_empty() {
        println!("canonicalised:");
        for (rewrite, count) in &report.canonicalized {
            println!("  * {rewrite} ({count}x)");
        }
    }
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

/// What was compiled, and each phase's time and the peak memory.
fn print_summary(
    model_path: &Path,
    output_path: &Path,
    report: &CompileReport,
    costs: &Costs,
) -> anyhow::Result<()> {
    println!(
        "compiled {} -> {} (rules {}, silu rule {}, scan {} x{}, {} nodes -> {}, relevance path {} nodes, sites: {})",
        model_path.display(),
        output_path.display(),
        report.rules,
        report.silu_rule,
        report.scan,
        report.rerolled_scans,
        report.nodes_original,
        report.nodes_compiled,
        report.relevance_path_nodes,
        serde_json::to_string(&report.site_counts)?
    );
    if !report.exported_axes.is_empty() {
        let kept = if report.scan == mambalrp::reroll::ScanForm::Unrolled {
            "fixed (the unrolled form runs at the traced sizes only)"
        } else {
            "kept symbolic"
        };
        println!(
            "  symbolic input axes of the export ({}): {kept}",
            report.exported_axes.join(", ")
        );
    }
    println!(
        "  load {:.2}s, compile {:.2}s, verify {:.2}s, write {:.2}s, peak memory {}",
        costs.load_seconds,
        costs.compile_seconds,
        costs.verify_seconds,
        costs.write_seconds,
        costs
            .peak_rss_mb
            .map_or("unknown".into(), |m| format!("{m:.0} MB"))
    );
    Ok(())
}

fn print_verification(v: &VerifyReport, runtime_reason: &str, rules: &str) {
    println!("  verified in {} ({runtime_reason}):", v.runtime);
    if v.unoptimized_rerun {
        println!(
            "  (with graph optimizations on, ONNX Runtime rounded the original and the compiled \
             model differently beyond the bound; both ran again as written. Those optimizations \
             alone moved the original's outputs by {:.1e} of their size, so the default bound is \
             at least that:)",
            v.rounding_sensitivity.unwrap_or(0.0)
        );
    }
    for output in &v.outputs {
        println!(
            "  original output '{}': max |compiled - original| = {:.2e} (bound {:.2e} = {:.1e} x {:.3}) {}",
            output.name,
            output.max_abs_diff,
            output.bound,
            v.output_tolerance,
            output.magnitude.max(1.0),
            if output.unchanged { "OK" } else { "CHANGED" }
        );
    }
    for s in &v.samples {
        println!(
            "  sample {}: logit {:.6}  sum(relevance) {:.6}  bias {:.6}  residual {:.2e}",
            s.sample, s.explained_logit, s.relevance_sum, s.relevance_bias, s.relative_residual
        );
    }
    match v.conserved {
        Some(true) => println!(
            "  conservation: OK (max residual {:.2e} <= {:.0e})",
            v.max_relative_residual, v.conservation_tolerance
        ),
        Some(false) => println!(
            "  conservation: FAILED (max residual {:.2e} > {:.0e})",
            v.max_relative_residual, v.conservation_tolerance
        ),
        None => println!("  conservation: not checked (rules '{rules}' do not conserve relevance)"),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

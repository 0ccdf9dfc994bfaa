//! `mambalrp-bench`: compile cost and ONNX Runtime latency of compiled models, printed as a
//! table. A command, not a test: numbers depend on the machine.
//!
//! ```text
//! mambalrp-bench MODEL.onnx [MODEL.onnx ...] [--runs 5] [--scan rolled,chunked,unrolled] [--chunk-len 4]
//! ```
//! For each model and scan form: compile time and peak memory (from a `mambalrp-compile` child
//! process, so each is measured alone), node counts, ONNX Runtime session creation time and
//! median latency of the original forward and of the compiled model (forward + relevance).
//! With `--plain`, also the plain command's wall time and peak memory, verification included.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use mambalrp::onnx::{self, Tensor};
use mambalrp::reroll::ScanForm;
use mambalrp::verify::{generated_inputs, OrtModel};

#[derive(Parser)]
#[command(
    name = "mambalrp-bench",
    about = "Benchmark compilation and ONNX Runtime latency of compiled models"
)]
struct Args {
    /// Exported Mamba models.
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// Timed runs per model (the median is reported, after one warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Scan forms to compile.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "rolled,chunked,unrolled"
    )]
    scan: Vec<ScanForm>,
    /// Tokens per Scan iteration of the chunked form (several values: one row each; default:
    /// the compiler's).
    #[arg(long, value_delimiter = ',')]
    chunk_len: Vec<u16>,
    /// Folder for the compiled models (default: a temporary folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also time the plain command (`mambalrp-compile MODEL -o OUT`, verification included) and
    /// its peak memory, in a second table.
    #[arg(long)]
    plain: bool,
}

struct Timing {
    session_seconds: f64,
    median_seconds: f64,
}

fn time_ort(path: &Path, inputs: &[(String, Tensor)], runs: usize) -> anyhow::Result<Timing> {
    let start = Instant::now();
    let mut session = OrtModel::from_file(path)?;
    let session_seconds = start.elapsed().as_secs_f64();
    let names: Vec<String> = session.input_names();
    let feed: Vec<(String, Tensor)> = inputs
        .iter()
        .filter(|(n, _)| names.contains(n))
        .cloned()
        .collect();
    session.run(&feed)?;
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        session.run(&feed)?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing {
        session_seconds,
        median_seconds: times[times.len() / 2],
    })
}

/// Node count, reading the graph only (not the external weights).
fn node_count(path: &Path) -> anyhow::Result<usize> {
    let bytes = std::fs::read(path)?;
    Ok(onnx::io::decode_model(&bytes, path)?
        .graph
        .map_or(0, |g| g.node.len()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let compiler = std::env::current_exe()?.with_file_name("mambalrp-compile");
    if !compiler.exists() {
        bail!(
            "{} not found next to mambalrp-bench (build both with cargo build --release)",
            compiler.display()
        );
    }
    let temp = tempfile_dir(&args.out)?;
    println!("| model | scan | nodes original -> compiled | compile s | peak RSS MB | ORT session s (orig / compiled) | ORT median ms (orig / compiled) | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for model_path in &args.models {
        let name = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Input shapes only need the graph, not the weights.
        let graph_only = onnx::io::decode_model(&std::fs::read(model_path)?, model_path)?;
        let graph = mambalrp::ir::Graph::from_model(&graph_only)?;
        let inputs = generated_inputs(&graph)?;
        drop((graph, graph_only));
        let original_nodes = node_count(model_path)?;
        let original = time_ort(model_path, &inputs, args.runs)
            .with_context(|| format!("running {}", model_path.display()))?;
        let forms = args.scan.iter().flat_map(|&scan| match scan {
            ScanForm::Chunked | ScanForm::Parallel if !args.chunk_len.is_empty() => {
                args.chunk_len.iter().map(|&l| (scan, Some(l))).collect()
            }
            _ => vec![(scan, None)],
        });
        for (scan, chunk_len) in forms {
            let form = scan.to_string();
            let mut scan_name = form.clone();
            let mut extra = Vec::new();
            if let Some(len) = chunk_len {
                extra = vec!["--chunk-len".to_string(), len.to_string()];
                scan_name = format!("{scan_name}{len}");
            }
            let out = temp.join(format!("{name}_{scan_name}_lrp.onnx"));
            let report = temp.join(format!("{name}_{scan_name}.json"));
            let status = Command::new(&compiler)
                .arg(model_path)
                .arg("-o")
                .arg(&out)
                .args(["--no-verify", "--scan", &form, "--report"])
                .arg(&report)
                .args(&extra)
                .output()?;
            if !status.status.success() {
                bail!(
                    "compiling {} failed: {}",
                    model_path.display(),
                    String::from_utf8_lossy(&status.stderr)
                );
            }
            let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
            let compile_seconds = json["costs"]["load_seconds"].as_f64().unwrap_or(0.0)
                + json["costs"]["compile_seconds"].as_f64().unwrap_or(0.0)
                + json["costs"]["write_seconds"].as_f64().unwrap_or(0.0);
            let peak = json["costs"]["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
            let compiled = time_ort(&out, &inputs, args.runs)?;
            println!(
                "| {name} | {scan_name} | {original_nodes} -> {} | {compile_seconds:.2} | {peak:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} |",
                node_count(&out)?,
                original.session_seconds,
                compiled.session_seconds,
                original.median_seconds * 1e3,
                compiled.median_seconds * 1e3,
                compiled.median_seconds / original.median_seconds
            );
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(
                out.with_file_name(format!("{name}_{scan_name}_lrp.onnx.data")),
            );
        }
    }
    if args.plain {
        plain_table(&compiler, &args.models, &temp)?;
    }
    Ok(())
}

/// The plain command as a new user runs it: wall time and peak memory with verification.
fn plain_table(compiler: &Path, models: &[PathBuf], temp: &Path) -> anyhow::Result<()> {
    println!();
    println!("| model | model MB | plain compile s (verification included) | verified in | peak RSS MB | peak / model |");
    println!("|---|---|---|---|---|---|");
    for model_path in models {
        let name = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = temp.join(format!("{name}_plain_lrp.onnx"));
        let report = temp.join(format!("{name}_plain.json"));
        let start = Instant::now();
        let status = Command::new(compiler)
            .arg(model_path)
            .arg("-o")
            .arg(&out)
            .arg("--report")
            .arg(&report)
            .output()?;
        let seconds = start.elapsed().as_secs_f64();
        if !status.status.success() {
            bail!(
                "the plain command failed on {}: {}{}",
                model_path.display(),
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&status.stderr)
            );
        }
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
        let peak = json["costs"]["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
        let size = std::fs::metadata(model_path)?.len() as f64 / (1 << 20) as f64;
        println!(
            "| {name} | {size:.0} | {seconds:.1} | {} | {peak:.0} | {:.2}x |",
            json["verification"]["runtime"].as_str().unwrap_or("?"),
            peak / size
        );
        let _ = std::fs::remove_file(&out);
    }
    Ok(())
}

fn tempfile_dir(out: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = match out {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("mambalrp-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

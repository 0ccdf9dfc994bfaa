//! Verification as a user meets it: a genuinely changed output is refused (exit 1) with the
//! check, the measured value, the tolerance and the flag; an unchanged one passes; ONNX
//! Runtime is found in an active virtual environment, and its absence is explained.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mambalrp::onnx::proto::ModelProto;
use mambalrp::onnx::{save_model_atomically, Tensor};

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Replaces the float initializer `name` of `model` by `edit` of its values.
fn edit_initializer(model: &mut ModelProto, name: &str, edit: impl Fn(f32) -> f32) {
    let graph = model.graph.as_mut().unwrap();
    let tensor = graph
        .initializer
        .iter_mut()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no initializer '{name}'"));
    let Some(Tensor::F32(values)) = mambalrp::onnx::tensor::tensor_from_proto(tensor).unwrap()
    else {
        panic!("'{name}' is not float32");
    };
    *tensor = Tensor::F32(values.mapv(edit)).to_proto(name);
}

/// tiny_convbias compiled, then changed by `edit`, saved next to a report path.
fn compiled_and_edited(dir: &Path, edit: impl Fn(&mut ModelProto)) -> PathBuf {
    let mut compiled = compile_with(&load("tiny_convbias", ""), "mambalrp", false);
    edit(&mut compiled);
    let path = dir.join("edited_lrp.onnx");
    save_model_atomically(&compiled, &path).unwrap();
    path
}

fn check_against_original(lrp: &Path, report: &Path, runtime: &str) -> std::process::Output {
    cli(&[
        "check",
        arg(lrp),
        "--original",
        arg(&model_path("tiny_convbias", "")),
        "--runtime",
        runtime,
        "--report",
        arg(report),
    ])
}

#[test]
fn an_unchanged_compiled_model_passes_check_against_its_original() {
    let dir = tempfile::tempdir().unwrap();
    let lrp = compiled_and_edited(dir.path(), |_| {});
    let report = dir.path().join("check.json");
    for runtime in ["ort", "tract"] {
        let out = check_against_original(&lrp, &report, runtime);
        assert_eq!(out.status.code(), Some(0), "{runtime}: {}", text(&out));
        assert!(
            text(&out).contains("original output 'logits'"),
            "{}",
            text(&out)
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(json["failed"], serde_json::json!([]));
        assert_eq!(json["outputs"][0]["unchanged"], true);
    }
}

#[test]
fn a_perturbed_weight_is_refused_with_the_check_value_tolerance_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    // 0.1% on the final norm's weight: logits move by ~1e-3 of their size.
    let lrp = compiled_and_edited(dir.path(), |m| {
        edit_initializer(m, "backbone.norm_f.weight", |w| w * 1.001)
    });
    let report = dir.path().join("check.json");
    let out = check_against_original(&lrp, &report, "ort");
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("FAILED original output 'logits' unchanged: measured")
            && printed.contains("> tolerance")
            && printed.contains("--output-tolerance"),
        "{printed}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let failed = &json["failed"][0];
    assert_eq!(failed["flag"], "--output-tolerance");
    let (measured, tolerance) = (
        failed["measured"].as_f64().unwrap(),
        failed["tolerance"].as_f64().unwrap(),
    );
    assert!(
        measured > 100.0 * tolerance,
        "a real change is far above the bound: {measured} vs {tolerance}"
    );
    // Raising the tolerance is the documented way out (and shows the flag is read).
    let out = cli(&[
        "check",
        arg(&lrp),
        "--original",
        arg(&model_path("tiny_convbias", "")),
        "--output-tolerance",
        "1e-2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_dropped_conv_bias_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lrp = compiled_and_edited(dir.path(), |m| {
        edit_initializer(m, "backbone.layers.1.mixer.conv1d.bias", |_| 0.0)
    });
    let out = check_against_original(&lrp, &dir.path().join("check.json"), "tract");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("CHANGED"), "{}", text(&out));
}

#[test]
fn a_failed_compile_says_which_check_failed_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = (dir.path().join("out.onnx"), dir.path().join("r.json"));
    let result = cli(&[
        arg(&model_path("tiny_convbias", "")),
        "-o",
        arg(&out),
        "--tolerance",
        "0",
        "--report",
        arg(&report),
    ]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("nothing written: 1 check(s) failed")
            && printed.contains("relevance conservation")
            && printed.contains("measured")
            && printed.contains("> tolerance 0.000e0 (--tolerance)"),
        "{printed}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["failed"][0]["flag"], "--tolerance");
    // Neither the model nor the staging folder it was verified in is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["r.json".to_string()]);
}

/// The compile command with no way to find ONNX Runtime but the environment given.
fn compile_without_ort_hints(
    dir: &Path,
    extra: &[&str],
    virtual_env: Option<&Path>,
) -> std::process::Output {
    let out = dir.join("out.onnx");
    let mut command = Command::new(env!("CARGO_BIN_EXE_mambalrp-compile"));
    command
        .args([arg(&model_path("tiny_convbias", "")), "-o", arg(&out)])
        .args(extra)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("VIRTUAL_ENV")
        // No python3 to ask either.
        .env("PATH", dir);
    if let Some(venv) = virtual_env {
        command.env("VIRTUAL_ENV", venv);
    }
    command.output().unwrap()
}

#[test]
fn onnx_runtime_is_found_in_the_active_virtual_environment() {
    let dir = tempfile::tempdir().unwrap();
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test");
    assert!(
        venv.join("bin/python").exists(),
        "this test needs the README's test command's .venv-test (bash scripts/test.sh)"
    );
    let out = compile_without_ort_hints(dir.path(), &[], Some(&venv));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("verified in onnxruntime (found ")
            && text(&out).contains(".venv-test/lib/python3"),
        "{}",
        text(&out)
    );
}

#[test]
fn without_onnx_runtime_verification_falls_back_to_tract_and_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = compile_without_ort_hints(dir.path(), &[], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains("verified in tract (ONNX Runtime unavailable: ONNX Runtime not found; looked in: ORT_DYLIB_PATH (unset), an active virtual environment (VIRTUAL_ENV unset), python3 on the PATH"),
        "{printed}"
    );
    let out = compile_without_ort_hints(dir.path(), &["--verify-runtime", "ort"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("looked in") && text(&out).contains("pip install onnxruntime"),
        "{}",
        text(&out)
    );
}

/// Logits of ~30, like a trained LM's: the compiled model computes them in another order, and
/// the default output tolerance (scaled by magnitude and depth) accepts that, in both runtimes.
#[test]
fn a_model_with_large_logits_compiles_with_default_options() {
    for exporter in EXPORTERS {
        for runtime in ["auto", "tract"] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out.onnx");
            let model = model_path("mid_biglogits", exporter);
            let mut args = vec![arg(&model), "-o", arg(&out)];
            if runtime == "tract" {
                args.extend(["--verify-runtime", "tract"]);
            }
            let result = cli(&args);
            let printed = text(&result);
            assert_eq!(
                result.status.code(),
                Some(0),
                "{exporter} {runtime}: {printed}"
            );
            let line = printed
                .lines()
                .find(|l| l.contains("original output 'logits'"))
                .unwrap_or_else(|| panic!("no output check printed: {printed}"));
            println!("mid_biglogits{exporter} ({runtime}): {line}");
            assert!(line.ends_with("OK"), "{line}");
            // Verified from a staging folder that is gone afterwards; only the model is left.
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(left, vec!["out.onnx".to_string()]);
        }
    }
}

//! Every compiled fixture (each rule mode, both target modes) passes the Python `onnx` package's
//! `onnx.checker.check_model(..., full_check=True)`. The README's test command installs `onnx`
//! in .venv-test and points MAMBALRP_PYTHON at it.
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use mambalrp::emit::TargetMode;
use mambalrp::{compile, Options};

#[test]
fn compiled_fixtures_pass_the_full_onnx_checker() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for fixture in FIXTURES {
        for exporter in EXPORTERS {
            let model = load(fixture, exporter);
            let variants = [
                (
                    "lrp",
                    "mambalrp",
                    TargetMode::Argmax,
                    ScanForm::Rolled,
                    false,
                ),
                (
                    "lrp_unrolled",
                    "mambalrp",
                    TargetMode::Argmax,
                    ScanForm::Unrolled,
                    false,
                ),
                (
                    "lrp_dynamic",
                    "mambalrp",
                    TargetMode::Argmax,
                    ScanForm::Rolled,
                    true,
                ),
                ("gi", "gi", TargetMode::Argmax, ScanForm::Rolled, false),
                (
                    "lrp_chunked_dynamic",
                    "mambalrp",
                    TargetMode::Argmax,
                    ScanForm::Chunked,
                    true,
                ),
                (
                    "gi_chunked",
                    "gi",
                    TargetMode::Argmax,
                    ScanForm::Chunked,
                    false,
                ),
                (
                    "gi_unrolled",
                    "gi",
                    TargetMode::Argmax,
                    ScanForm::Unrolled,
                    false,
                ),
                (
                    "target_dynamic",
                    "mambalrp",
                    TargetMode::Input,
                    ScanForm::Rolled,
                    true,
                ),
                (
                    "gi_dynamic",
                    "gi",
                    TargetMode::Argmax,
                    ScanForm::Rolled,
                    true,
                ),
            ];
            for (label, rules, target, scan, dynamic_sequence) in variants {
                let options = Options {
                    rules: rules.parse().unwrap(),
                    target,
                    emit_embedding: true,
                    emit_layers: true,
                    scan,
                    dynamic_sequence,
                    dynamic_batch: dynamic_sequence,
                    chunk_len: Some(3),
                    ..Default::default()
                };
                let compiled = compile(&model, &options).unwrap().model;
                let path = dir.path().join(format!("{fixture}{exporter}_{label}.onnx"));
                mambalrp::onnx::save_model_atomically(&compiled, &path).unwrap();
                files.push(path);
            }
        }
    }
    let half = ["tiny_zerobias_fp16", "tiny_zerobias_bf16"];
    for (fixture, scan) in half
        .into_iter()
        .flat_map(|f| [ScanForm::Rolled, ScanForm::Chunked, ScanForm::Unrolled].map(|s| (f, s)))
    {
        let options = Options {
            scan,
            emit_embedding: true,
            emit_layers: true,
            ..Options::default()
        };
        let compiled = compile(&load(fixture, ""), &options).unwrap().model;
        let path = dir.path().join(format!("{fixture}_{scan:?}.onnx"));
        mambalrp::onnx::save_model_atomically(&compiled, &path).unwrap();
        files.push(path);
    }
    // Vision Mamba: both exporters, each patch rule, the rolled and unrolled forms.
    for (exporter, scan, patch_rule) in [
        ("", ScanForm::Rolled, "gamma:0.25"),
        ("_dynamo", ScanForm::Rolled, "zero"),
        ("", ScanForm::Unrolled, "gamma:0.25"),
        ("_dynamo", ScanForm::Parallel, "gamma:0.25"),
    ] {
        let options = Options {
            scan,
            patch_rule: patch_rule.parse().unwrap(),
            emit_embedding: true,
            emit_layers: true,
            ..Options::default()
        };
        let compiled = compile(&load("vim_tiny", exporter), &options)
            .unwrap()
            .model;
        let path = dir.path().join(format!("vim_tiny{exporter}_{scan:?}.onnx"));
        mambalrp::onnx::save_model_atomically(&compiled, &path).unwrap();
        files.push(path);
    }
    // `--micro-batch`: the model wrapped in a Scan over groups of samples.
    for (exporter, scan) in [("", ScanForm::Parallel), ("_dynamo", ScanForm::Rolled)] {
        let options = Options {
            scan,
            micro_batch: Some(2),
            dynamic_sequence: true,
            emit_embedding: true,
            emit_layers: true,
            ..Options::default()
        };
        let compiled = compile(&load("tiny_convbias", exporter), &options)
            .unwrap()
            .model;
        let path = dir
            .path()
            .join(format!("tiny_convbias{exporter}_micro_batch_{scan:?}.onnx"));
        mambalrp::onnx::save_model_atomically(&compiled, &path).unwrap();
        files.push(path);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/check_models.py");
    let result = Command::new(python()).arg(script).args(&files).output().unwrap_or_else(|e| {
        panic!("cannot run {} ({e}): run the README's test command (bash scripts/test.sh), which installs onnx", python().display())
    });
    let printed = String::from_utf8_lossy(&result.stdout);
    println!("{printed}{}", String::from_utf8_lossy(&result.stderr));
    assert!(
        result.status.success(),
        "onnx.checker rejected compiled models:\n{printed}"
    );
    assert_eq!(
        printed.lines().filter(|l| l.starts_with("ok")).count(),
        files.len()
    );
}

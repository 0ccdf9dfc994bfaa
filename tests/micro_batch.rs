//! `--micro-batch N`: the compiled model wrapped in one Scan over groups of N samples. Every
//! output must be what the same model computes without the wrapper (samples are independent),
//! for batches that fill whole groups and batches that leave the last group padded, in tract
//! and ONNX Runtime, and the relevances must still match the PyTorch references.
mod common;

use common::*;
use mambalrp::emit::TargetMode;
use mambalrp::onnx::Tensor;
use mambalrp::verify::{conservation, run_ort};
use mambalrp::{compile, Options};

fn compiled(
    exporter: &str,
    scan: ScanForm,
    target: TargetMode,
    micro_batch: Option<usize>,
) -> mambalrp::onnx::proto::ModelProto {
    let options = Options {
        scan,
        chunk_len: Some(3),
        dynamic_sequence: true,
        dynamic_batch: true,
        target,
        emit_embedding: true,
        emit_layers: true,
        micro_batch,
        ..Options::default()
    };
    compile(&load("tiny_convbias", exporter), &options)
        .unwrap_or_else(|e| panic!("{e}"))
        .model
}

#[test]
fn micro_batches_change_no_output() {
    let reference = Reference::load("tiny_convbias");
    let Tensor::I64(ids) = reference.get("input_ids").clone() else {
        panic!("input_ids are int64")
    };
    let Tensor::I64(targets) = reference.get("target").clone() else {
        panic!("targets are int64")
    };
    let expected_all = reference.f32("mambalrp_relevance");
    for exporter in EXPORTERS {
        for (scan, target) in [
            (ScanForm::Rolled, TargetMode::Argmax),
            (ScanForm::Parallel, TargetMode::Input),
        ] {
            let whole = compiled(exporter, scan, target, None);
            // One sample per group once; groups of 2 everywhere (the last one padded at 3).
            let sizes: &[usize] = if exporter.is_empty() && scan == ScanForm::Parallel {
                &[1, 2]
            } else {
                &[2]
            };
            for &samples in sizes {
                let grouped = compiled(exporter, scan, target, Some(samples));
                let metadata = grouped
                    .metadata_props
                    .iter()
                    .find(|p| p.key() == "mambalrp.micro_batch")
                    .map(|p| p.value().to_string());
                assert_eq!(metadata, Some(samples.to_string()));
                // Batch 1 and 3 (the last group padded when N = 2).
                for picks in [vec![1usize], vec![0, 1, 0]] {
                    let mut inputs = vec![(
                        "input_ids".to_string(),
                        Tensor::I64(ids.select(ndarray::Axis(0), &picks)),
                    )];
                    if target == TargetMode::Input {
                        inputs.push((
                            "lrp_target".to_string(),
                            Tensor::I64(targets.select(ndarray::Axis(0), &picks)),
                        ));
                    }
                    let label = format!(
                        "tiny_convbias{exporter} {scan:?} N={samples} batch {}",
                        picks.len()
                    );
                    for (runtime, plain, micro) in [
                        ("tract", run(&whole, &inputs), run(&grouped, &inputs)),
                        (
                            "onnxruntime",
                            run_ort(&whole, &inputs).unwrap(),
                            run_ort(&grouped, &inputs).unwrap(),
                        ),
                    ] {
                        assert_eq!(plain.len(), micro.len(), "{label} {runtime}");
                        for ((name, a), (other, b)) in plain.iter().zip(&micro) {
                            assert_eq!(name, other);
                            assert_eq!(a.shape(), b.shape(), "{label} {runtime} {name}");
                            let diff = max_abs_diff(a, b);
                            // The same ops on the same samples: equal up to kernels that
                            // vectorise differently over a different batch size.
                            assert!(
                                diff <= 1e-6 * max_abs(a).max(1.0),
                                "{label} {runtime} {name}: {diff:.2e}"
                            );
                        }
                        let expected = expected_all.select(ndarray::Axis(0), &picks);
                        let err = max_abs_diff(output(&micro, "relevance"), &expected)
                            / max_abs(&expected_all);
                        println!("{label} in {runtime}: relevance vs PyTorch {err:.2e}");
                        assert!(err <= 1e-5, "{label} {runtime}: {err:.2e}");
                        for sample in conservation(&micro).unwrap() {
                            assert!(sample.relative_residual <= 1e-5, "{label} {sample:?}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn micro_batch_needs_a_compact_scan_and_a_positive_size() {
    let options = Options {
        scan: ScanForm::Unrolled,
        micro_batch: Some(2),
        ..Options::default()
    };
    let error = compile(&load("tiny_convbias", ""), &options)
        .err()
        .expect("the unrolled form has no symbolic batch")
        .to_string();
    assert!(error.contains("--micro-batch"), "{error}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let model = model_path("tiny_convbias", "");
    let result = cli(&[
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--micro-batch",
        "0",
    ]);
    assert!(!result.status.success());
    assert!(text(&result).contains("--micro-batch"), "{}", text(&result));
    assert!(!out.exists());
}

#[test]
fn the_plain_command_verifies_a_micro_batched_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let model = model_path("tiny_convbias", "_dynamo");
    let result = cli(&[
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--scan",
        "parallel",
        "--micro-batch",
        "1",
    ]);
    assert!(result.status.success(), "{}", text(&result));
    assert!(
        text(&result).contains("conservation: OK"),
        "{}",
        text(&result)
    );
    assert!(out.exists());
}

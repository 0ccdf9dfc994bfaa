//! `--dynamic-seq` / `--dynamic-batch`: a model exported at S=8 and batch 2, compiled once,
//! explains inputs of length 4, 8 and 16 and of batch 1 and 3
//! with the PyTorch references of those lengths (same weights), in tract and ONNX Runtime.
mod common;

use common::*;
use mambalrp::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
use mambalrp::verify::{conservation, run_ort};
use mambalrp::{compile, Options};

/// Rolled, chunked and parallel with chunks of 3 tokens (so S = 4, 8 and 16 all need padding).
const FORMS: [(ScanForm, usize); 3] = [
    (ScanForm::Rolled, 3),
    (ScanForm::Chunked, 3),
    (ScanForm::Parallel, 3),
];

fn dynamic(
    fixture: &str,
    exporter: &str,
    (scan, chunk_len): (ScanForm, usize),
) -> mambalrp::onnx::proto::ModelProto {
    let options = Options {
        dynamic_sequence: true,
        scan,
        chunk_len: Some(chunk_len),
        ..Options::default()
    };
    compile(&load(fixture, exporter), &options)
        .unwrap_or_else(|e| panic!("{e}"))
        .model
}

#[test]
fn one_compiled_model_explains_every_length() {
    for (exporter, form) in EXPORTERS.into_iter().flat_map(|e| FORMS.map(|f| (e, f))) {
        let compiled = dynamic("tiny_zerobias", exporter, form);
        let input = &compiled.graph.as_ref().unwrap().input[0];
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            panic!()
        };
        assert!(
            matches!(&t.shape.as_ref().unwrap().dim[1].value, Some(Value::DimParam(p)) if p == "sequence")
        );
        for (fixture, length) in [
            ("tiny_zerobias_s4", 4),
            ("tiny_zerobias", 8),
            ("tiny_zerobias_s16", 16),
        ] {
            let reference = Reference::load(fixture);
            let inputs = reference.inputs();
            for (runtime, outputs) in [
                ("tract", run(&compiled, &inputs)),
                (
                    "onnxruntime",
                    run_ort(&compiled, &inputs).expect("ONNX Runtime runs"),
                ),
            ] {
                assert_eq!(output(&outputs, "logits").shape(), &[2, length, 64]);
                let err = relative_error(
                    output(&outputs, "relevance"),
                    &reference.f32("mambalrp_relevance"),
                );
                let logit_err = relative_error(
                    output(&outputs, "relevance_target_logit"),
                    &reference.f32("target_logit"),
                );
                println!("tiny_zerobias{exporter} {form:?} compiled at S=8, run at S={length} in {runtime}: relevance {err:.2e}, logit {logit_err:.2e}");
                assert!(
                    err <= 1e-5 && logit_err <= 1e-5,
                    "{exporter} S={length} {runtime}: {err:.2e} / {logit_err:.2e}"
                );
                for sample in conservation(&outputs).unwrap() {
                    assert!(sample.relative_residual <= 1e-5, "{sample:?}");
                }
            }
        }
    }
}

#[test]
fn dynamic_sequence_needs_the_rolled_scan() {
    let options = Options {
        dynamic_sequence: true,
        scan: ScanForm::Unrolled,
        ..Options::default()
    };
    let error = compile(&load("tiny_zerobias", ""), &options)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("need every selective scan re-rolled"),
        "{error}"
    );
}

/// Picks rows of a reference array along axis 0.
fn rows(array: &ndarray::ArrayD<f32>, picks: &[usize]) -> ndarray::ArrayD<f32> {
    array.select(ndarray::Axis(0), picks)
}

#[test]
fn one_compiled_model_explains_every_batch_size() {
    use mambalrp::onnx::Tensor;
    let reference = Reference::load("tiny_convbias");
    let Tensor::I64(ids) = reference.get("input_ids").clone() else {
        panic!()
    };
    let Tensor::I64(targets) = reference.get("target").clone() else {
        panic!()
    };
    for (exporter, (scan, chunk_len)) in EXPORTERS.into_iter().flat_map(|e| FORMS.map(|f| (e, f))) {
        for target in [
            mambalrp::emit::TargetMode::Argmax,
            mambalrp::emit::TargetMode::Input,
        ] {
            let options = Options {
                dynamic_sequence: true,
                dynamic_batch: true,
                scan,
                chunk_len: Some(chunk_len),
                target,
                ..Options::default()
            };
            let compiled = compile(&load("tiny_convbias", exporter), &options)
                .unwrap()
                .model;
            for picks in [vec![1usize], vec![0, 1, 0]] {
                let mut inputs = vec![(
                    "input_ids".to_string(),
                    Tensor::I64(ids.select(ndarray::Axis(0), &picks)),
                )];
                if target == mambalrp::emit::TargetMode::Input {
                    inputs.push((
                        "lrp_target".to_string(),
                        Tensor::I64(targets.select(ndarray::Axis(0), &picks)),
                    ));
                }
                for (runtime, outputs) in [
                    ("tract", run(&compiled, &inputs)),
                    ("onnxruntime", run_ort(&compiled, &inputs).unwrap()),
                ] {
                    let expected = rows(&reference.f32("mambalrp_relevance"), &picks);
                    let err = max_abs_diff(output(&outputs, "relevance"), &expected)
                        / max_abs(&reference.f32("mambalrp_relevance"));
                    println!(
                        "tiny_convbias{exporter} {target:?} batch {} in {runtime}: {err:.2e}",
                        picks.len()
                    );
                    assert!(
                        err <= 1e-5,
                        "{exporter} batch {picks:?} {runtime}: {err:.2e}"
                    );
                    for sample in conservation(&outputs).unwrap() {
                        assert!(sample.relative_residual <= 1e-5, "{sample:?}");
                    }
                }
            }
        }
    }
}

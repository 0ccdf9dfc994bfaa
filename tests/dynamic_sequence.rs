//! `--dynamic-seq`: a model exported at S=8, compiled once, explains inputs of length 4, 8 and 16
//! with the PyTorch references of those lengths (same weights), in tract and ONNX Runtime.
mod common;

use common::*;
use mambalrp::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
use mambalrp::verify::{conservation, run_ort};
use mambalrp::{compile, Options};

fn dynamic(fixture: &str, exporter: &str) -> mambalrp::onnx::proto::ModelProto {
    let options = Options {
        dynamic_sequence: true,
        ..Options::default()
    };
    compile(&load(fixture, exporter), &options)
        .unwrap_or_else(|e| panic!("{e}"))
        .model
}

#[test]
fn one_compiled_model_explains_every_length() {
    for exporter in EXPORTERS {
        let compiled = dynamic("tiny_zerobias", exporter);
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
                println!("tiny_zerobias{exporter} compiled at S=8, run at S={length} in {runtime}: relevance {err:.2e}, logit {logit_err:.2e}");
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
        error.contains("--dynamic-seq needs every selective scan re-rolled"),
        "{error}"
    );
}

//! A float16 export (the Hugging Face slow path then mixes float16 and float32, with Casts)
//! compiles, keeps its outputs, conserves relevance and matches the PyTorch float16 reference,
//! within float16 precision, in tract and ONNX Runtime. Relevance outputs are float32.
mod common;

use common::*;
use mambalrp::verify::{conservation, default_output_tolerance, output_bound, run_ort};

/// 8 tokens x (2 blocks + 1): the depth the CLI's verification uses for this fixture.
const TRACED_DEPTH: usize = 8 * 3;

const FLOAT16: mambalrp::ir::DType = mambalrp::ir::DType::Float16;

#[test]
fn float16_model_is_explained_within_float16_precision() {
    let model = load("tiny_zerobias_fp16", "");
    let reference = Reference::load("tiny_zerobias_fp16");
    let inputs = reference.inputs();
    for scan in [ScanForm::Rolled, ScanForm::Chunked, ScanForm::Unrolled] {
        let compiled = compile_form(&model, "mambalrp", true, scan);
        assert_relevance_outputs_are_float32(&compiled);
        let runs = [
            ("tract", run(&model, &inputs), run(&compiled, &inputs)),
            (
                "onnxruntime",
                run_ort(&model, &inputs).unwrap(),
                run_ort(&compiled, &inputs).unwrap(),
            ),
        ];
        for (runtime, original, outputs) in runs {
            let logits = output(&original, "logits");
            let change = max_abs_diff(output(&outputs, "logits"), logits);
            assert!(
                change
                    <= output_bound(
                        default_output_tolerance(FLOAT16, TRACED_DEPTH),
                        max_abs(logits)
                    ),
                "{scan:?} {runtime}: logits changed by {change}"
            );
            let err = relative_error(
                output(&outputs, "relevance"),
                &reference.f32("mambalrp_relevance"),
            );
            println!("tiny_zerobias_fp16 {scan:?} in {runtime}: relevance vs PyTorch float16 {err:.2e}, logits change {change:.2e}");
            assert!(
                err <= 5e-3,
                "{scan:?} {runtime}: relevance off by {err:.2e}"
            );
            for sample in conservation(&outputs).unwrap() {
                assert!(
                    sample.relative_residual <= 1e-3,
                    "{scan:?} {runtime}: {sample:?}"
                );
            }
        }
    }
}

/// `--precision float32`: the float16 export computes in float32 from its own (widened)
/// weights, so it explains as the float32 model does, to the weights' float16 rounding, where
/// computing in float16 is off by float16's own rounding. Every output, logits included, is
/// float32.
#[test]
fn precision_float32_explains_a_float16_export_as_the_float32_model_does() {
    let model = load("tiny_zerobias_fp16", "");
    let float32_reference = Reference::load("tiny_zerobias");
    let inputs = float32_reference.inputs();
    let expected = float32_reference.f32("mambalrp_relevance");
    for scan in [ScanForm::Rolled, ScanForm::Parallel] {
        let options = mambalrp::Options {
            scan,
            precision: mambalrp::Precision::Float32,
            ..mambalrp::Options::default()
        };
        let compiled = mambalrp::compile(&model, &options).unwrap();
        assert_eq!(compiled.report.float_type, mambalrp::ir::DType::Float);
        assert_eq!(compiled.report.exported_float_type, FLOAT16);
        let recorded = |key: &str| metadata(&compiled.model, key);
        assert_eq!(
            recorded("mambalrp.float_type").as_deref(),
            Some("float32"),
            "conservation is checked at float32's tolerance"
        );
        assert_eq!(
            recorded("mambalrp.exported_float_type").as_deref(),
            Some("float16")
        );
        for declared in &compiled.model.graph.as_ref().unwrap().output {
            let Some(mambalrp::onnx::proto::type_proto::Value::TensorType(t)) =
                declared.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                panic!("{} has no tensor type", declared.name())
            };
            assert_eq!(t.elem_type(), 1, "{} is float32", declared.name());
        }
        let runs = [
            ("tract", run(&compiled.model, &inputs)),
            ("onnxruntime", run_ort(&compiled.model, &inputs).unwrap()),
        ];
        for (runtime, outputs) in runs {
            let err = relative_error(output(&outputs, "relevance"), &expected);
            let logit_err = max_abs_diff(
                output(&outputs, "relevance_target_logit"),
                &float32_reference.f32("target_logit"),
            );
            println!(
                "{scan:?} in {runtime}: relevance vs PyTorch float32 {err:.2e}, target logit {logit_err:.2e}"
            );
            // float16 weights hold 11 significant bits: a relative rounding of up to 4.9e-4
            // each (measured: 6.9e-5). On the CPU, computing in float16 is about as close
            // (ONNX Runtime's CPU provider and tract compute most float16 ops in float32);
            // on a GPU it is not (README, float16).
            assert!(
                err <= 5e-4,
                "{scan:?} {runtime}: relevance off by {err:.2e}"
            );
            assert!(
                logit_err <= 2e-3,
                "{scan:?} {runtime}: target logit off by {logit_err:.2e}"
            );
            for sample in conservation(&outputs).unwrap() {
                assert!(
                    sample.relative_residual <= 1e-4,
                    "{scan:?} {runtime}: float32 arithmetic conserves to float32's tolerance: {sample:?}"
                );
            }
        }
    }
}

/// `--precision float32` on a bfloat16 export: the compiled model is float32 throughout, so
/// tract and ONNX Runtime's CPU provider run it (neither runs the bfloat16 original), and it
/// explains as the float32 model does to the weights' bfloat16 rounding.
#[test]
fn precision_float32_lets_cpu_runtimes_explain_a_bfloat16_export() {
    let model = load("tiny_zerobias_bf16", "");
    let float32_reference = Reference::load("tiny_zerobias");
    let inputs = float32_reference.inputs();
    let expected = float32_reference.f32("mambalrp_relevance");
    let options = mambalrp::Options {
        precision: mambalrp::Precision::Float32,
        ..mambalrp::Options::default()
    };
    let compiled = mambalrp::compile(&model, &options).unwrap();
    assert_eq!(
        compiled.report.exported_float_type,
        mambalrp::ir::DType::BFloat16
    );
    let runs = [
        ("tract", run(&compiled.model, &inputs)),
        ("onnxruntime", run_ort(&compiled.model, &inputs).unwrap()),
    ];
    for (runtime, outputs) in runs {
        let err = relative_error(output(&outputs, "relevance"), &expected);
        println!("bfloat16 export in {runtime}: relevance vs PyTorch float32 {err:.2e}");
        // bfloat16 weights hold 8 significant bits: a relative rounding of up to 3.9e-3 each
        // (measured: 1.5e-3).
        assert!(err <= 5e-3, "{runtime}: relevance off by {err:.2e}");
        for sample in conservation(&outputs).unwrap() {
            assert!(sample.relative_residual <= 1e-4, "{runtime}: {sample:?}");
        }
    }
}

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

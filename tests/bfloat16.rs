//! bfloat16 exports compile; the compiled model keeps the original logits, conserves relevance
//! and matches the PyTorch bfloat16 reference within bfloat16 precision. Neither tract nor ONNX
//! Runtime's CPU provider runs bfloat16 (no bfloat16 Conv), so these models run in the ONNX
//! reference implementation (`onnx.reference`, installed by the README's test command), and the
//! command line refuses to verify them instead of failing mid-way.
mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mambalrp::onnx::Tensor;
use mambalrp::verify::{
    conservation, default_conservation_tolerance, default_output_tolerance, load_npz, output_bound,
};
use ndarray::ArrayD;

/// 8 tokens x (2 blocks + 1): the depth the CLI's verification uses for this fixture.
const TRACED_DEPTH: usize = 8 * 3;

const BFLOAT16: mambalrp::ir::DType = mambalrp::ir::DType::BFloat16;
const FIXTURE: &str = "tiny_zerobias_bf16";

/// Runs `model` in the ONNX reference evaluator on the fixture's inputs.
fn run_reference_evaluator(model: &Path, dir: &Path) -> Vec<(String, ArrayD<f32>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference_evaluator.py");
    let inputs = fixtures_dir().join(format!("{FIXTURE}.ref.npz"));
    let outputs = dir.join("outputs.npz");
    let result = Command::new(python())
        .arg(script)
        .args([model, &inputs, &outputs])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): run the README's test command (bash scripts/test.sh), which installs onnx", python().display()));
    assert!(
        result.status.success(),
        "the ONNX reference evaluator failed on {}: {}",
        model.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    load_npz(&outputs)
        .unwrap()
        .into_iter()
        .map(|(name, t)| match t {
            Tensor::F32(a) => (name, a),
            other => panic!("{name} is not float32: {other:?}"),
        })
        .collect()
}

#[test]
fn bfloat16_model_is_explained_within_bfloat16_precision() {
    let dir = tempfile::tempdir().unwrap();
    let model = load(FIXTURE, "");
    let reference = Reference::load(FIXTURE);
    let original = run_reference_evaluator(&model_path(FIXTURE, ""), dir.path());
    // The reference evaluator's Scan only reads axis 0, so the unrolled form is the one run
    // here; the rolled and chunked forms differ from it only inside the float32 scan, which
    // the float32 and float16 tests run in tract and ONNX Runtime.
    let compiled = compile_form(&model, "mambalrp", true, ScanForm::Unrolled);
    assert_relevance_outputs_are_float32(&compiled);
    let path = dir.path().join("compiled.onnx");
    mambalrp::onnx::save_model_atomically(&compiled, &path).unwrap();
    let outputs = run_reference_evaluator(&path, dir.path());
    let logits = output(&original, "logits");
    let change = max_abs_diff(output(&outputs, "logits"), logits);
    assert!(
        change
            <= output_bound(
                default_output_tolerance(BFLOAT16, TRACED_DEPTH),
                max_abs(logits)
            ),
        "logits changed by {change}"
    );
    let err = relative_error(
        output(&outputs, "relevance"),
        &reference.f32("mambalrp_relevance"),
    );
    println!("{FIXTURE} in the ONNX reference evaluator: relevance vs PyTorch bfloat16 {err:.2e}, logits change {change:.2e}");
    assert!(err <= 2e-2, "relevance off by {err:.2e}");
    for sample in conservation(&outputs).unwrap() {
        println!("{sample:?}");
        assert!(
            sample.relative_residual <= default_conservation_tolerance(BFLOAT16),
            "{sample:?}"
        );
    }
    for scan in [ScanForm::Rolled, ScanForm::Chunked] {
        let compiled = compile_form(&model, "mambalrp", true, scan);
        let outputs = &compiled.graph.unwrap().output;
        assert_eq!(outputs[0].name(), "logits", "{scan:?}");
        assert!(outputs.iter().any(|o| o.name() == "relevance"), "{scan:?}");
    }
}

#[test]
fn command_line_refuses_to_verify_bfloat16_and_compiles_without_verification() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bf16_lrp.onnx");
    let model = model_path(FIXTURE, "");
    let model = model.to_str().unwrap();
    let refused = cli(&[model, "-o", out.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let message = text(&refused);
    assert!(
        message.contains("bfloat16") && message.contains("--no-verify") && message.contains(model),
        "{message}"
    );
    assert!(!out.exists());
    let compiled = cli(&[model, "-o", out.to_str().unwrap(), "--no-verify"]);
    assert!(compiled.status.success(), "{}", text(&compiled));
    assert!(out.exists());
}

//! The compiled fixtures in ONNX Runtime (CPU, ORT_ENABLE_ALL): same tolerances as in tract, and
//! the two runtimes agree. Needs the onnxruntime wheel's shared library (the README's test
//! command installs it); without it these tests fail saying how to install it.
mod common;

use common::*;
use mambalrp::verify::{conservation, run_ort};

const TOLERANCE: f32 = 1e-5;

fn zero_bias(fixture: &str) -> bool {
    matches!(fixture, "tiny_zerobias" | "small_untied")
}

fn ort(
    model: &mambalrp::onnx::proto::ModelProto,
    inputs: &[(String, mambalrp::onnx::Tensor)],
) -> Vec<(String, ndarray::ArrayD<f32>)> {
    run_ort(model, inputs).unwrap_or_else(|e| panic!("ONNX Runtime is needed for this test: {e}"))
}

fn check_in_onnxruntime(fixture: &str, exporter: &str) {
    let model = load(fixture, exporter);
    let reference = Reference::load(fixture);
    let inputs = reference.inputs();
    let original = ort(&model, &inputs);
    // (label = reference prefix, rule set, SiLU rule form)
    for (rules, rule_set, silu_rule) in [
        ("mambalrp", "mambalrp", SiluRule::Stabilized),
        ("mambalrp_exact", "mambalrp", SiluRule::Exact),
        ("gi", "gi", SiluRule::Stabilized),
    ] {
        let compiled = compile_silu(&model, rule_set, true, ScanForm::Rolled, silu_rule);
        let outputs = ort(&compiled, &inputs);
        let change = max_abs_diff(output(&outputs, "logits"), output(&original, "logits"));
        assert!(
            change <= 1e-6 * max_abs(output(&original, "logits")).max(1.0),
            "{fixture}{exporter} {rules}: logits changed by {change:.2e} in ONNX Runtime"
        );
        for name in ["relevance", "relevance_embedding"] {
            let err = relative_error(
                output(&outputs, name),
                &reference.f32(&format!("{rules}_{name}")),
            );
            println!("{fixture}{exporter} {rules} {name}: ORT vs PyTorch {err:.2e}");
            assert!(
                err <= TOLERANCE,
                "{fixture}{exporter} {rules}: {name} off by {err:.2e} in ONNX Runtime"
            );
        }
        let in_tract = run(&compiled, &inputs);
        for name in [
            "relevance",
            "relevance_embedding",
            "relevance_layers",
            "relevance_bias",
            "relevance_target_logit",
        ] {
            let diff = max_abs_diff(output(&outputs, name), output(&in_tract, name));
            let scale = max_abs(output(&in_tract, name)).max(
                max_abs(output(&in_tract, "relevance_target_logit"))
                    * f32::from(name == "relevance_bias"),
            );
            println!("{fixture}{exporter} {rules} {name}: max |ORT - tract| = {diff:.2e} (relative {:.2e})", diff / scale);
            assert!(
                diff <= TOLERANCE * scale,
                "{fixture}{exporter} {rules}: {name} differs between ORT and tract by {diff:.2e}"
            );
        }
        if rule_set == "mambalrp" {
            for sample in conservation(&outputs).unwrap() {
                assert!(
                    sample.relative_residual <= TOLERANCE,
                    "{fixture}{exporter}: not conserved in ONNX Runtime: {sample:?}"
                );
            }
            if zero_bias(fixture) {
                // Only the stabilized SiLU rule's 1e-6 absorbs relevance here.
                let absorbed = max_abs(output(&outputs, "relevance_bias"));
                let logit = max_abs(output(&outputs, "relevance_target_logit"));
                match silu_rule {
                    SiluRule::Exact => assert_eq!(absorbed, 0.0),
                    SiluRule::Stabilized => assert!(absorbed <= TOLERANCE * logit),
                }
            }
        }
    }
}

macro_rules! onnxruntime_tests {
    ($($name:ident: $fixture:literal, $exporter:literal;)*) => {
        $(
            #[test]
            fn $name() {
                check_in_onnxruntime($fixture, $exporter);
            }
        )*
    };
}

onnxruntime_tests! {
    tiny_convbias_torchscript_in_onnxruntime: "tiny_convbias", "";
    tiny_convbias_dynamo_in_onnxruntime: "tiny_convbias", "_dynamo";
    tiny_zerobias_torchscript_in_onnxruntime: "tiny_zerobias", "";
    tiny_zerobias_dynamo_in_onnxruntime: "tiny_zerobias", "_dynamo";
    small_untied_torchscript_in_onnxruntime: "small_untied", "";
    small_untied_dynamo_in_onnxruntime: "small_untied", "_dynamo";
    tiny_bigxproj_torchscript_in_onnxruntime: "tiny_bigxproj", "";
    tiny_bigxproj_dynamo_in_onnxruntime: "tiny_bigxproj", "_dynamo";
    tiny_smallsilu_torchscript_in_onnxruntime: "tiny_smallsilu", "";
    tiny_smallsilu_dynamo_in_onnxruntime: "tiny_smallsilu", "_dynamo";
    mid_biglogits_torchscript_in_onnxruntime: "mid_biglogits", "";
    mid_biglogits_dynamo_in_onnxruntime: "mid_biglogits", "_dynamo";
}

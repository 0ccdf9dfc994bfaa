//! Every export a user is likely to have (models/fixtures/variants, made by
//! models/make_variant_fixtures.py from our own PyTorch references): transformers 5.x,
//! dynamic axes, a from-scratch einsum Mamba, Falcon-Mamba, onnxsim and ONNX Runtime's offline
//! optimisations, opset-23 RMSNormalization and opset-24 Swish. Each compiles with the default
//! options and with the chunked scan, and reproduces the PyTorch logits and MambaLRP relevances
//! and conserves relevance, in ONNX Runtime (both forms) and tract (the default form). The dynamic-axes exports are also
//! run at other batch sizes and lengths than the traced ones.
mod common;

use common::*;
use mambalrp::onnx::{self, proto::ModelProto, Tensor};
use mambalrp::verify::{conservation, load_npz, run_ort};
use ndarray::ArrayD;

const RELEVANCE_TOLERANCE: f32 = 1e-5; // relative to max |R|
const CONSERVATION_TOLERANCE: f32 = 1e-5; // relative to the explained logit
const LOGITS_TOLERANCE: f32 = 1e-5; // relative to max(|logits|, 1), against PyTorch

fn variants_dir() -> std::path::PathBuf {
    fixtures_dir().join("variants")
}

fn load_variant(name: &str) -> ModelProto {
    onnx::load_model(&variants_dir().join(format!("{name}.onnx"))).expect("variant loads")
}

fn reference(name: &str) -> Vec<(String, Tensor)> {
    load_npz(&variants_dir().join(format!("{name}.ref.npz"))).expect("reference loads")
}

fn array(reference: &[(String, Tensor)], key: &str) -> Tensor {
    reference
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("reference has no '{key}'"))
        .1
        .clone()
}

fn f32_array(reference: &[(String, Tensor)], key: &str) -> ArrayD<f32> {
    match array(reference, key) {
        Tensor::F32(a) => a,
        other => panic!("'{key}' is not float32: {other:?}"),
    }
}

/// Which runtime runs the compiled model.
#[derive(Debug, Clone, Copy)]
enum Runtime {
    Tract,
    OnnxRuntime,
}

fn run_in(
    runtime: Runtime,
    model: &ModelProto,
    inputs: &[(String, Tensor)],
) -> Vec<(String, ArrayD<f32>)> {
    match runtime {
        Runtime::Tract => run(model, inputs),
        Runtime::OnnxRuntime => run_ort(model, inputs)
            .unwrap_or_else(|e| panic!("ONNX Runtime is needed for this test: {e}")),
    }
}

/// Checks the compiled model against the reference arrays with key suffix `suffix` (the
/// traced sizes: "").
fn check_against_reference(
    label: &str,
    compiled: &ModelProto,
    reference: &[(String, Tensor)],
    suffix: &str,
    runtime: Runtime,
) {
    let inputs = vec![(
        "input_ids".to_string(),
        array(reference, &format!("input_ids{suffix}")),
    )];
    let outputs = run_in(runtime, compiled, &inputs);
    let logits = f32_array(reference, &format!("logits{suffix}"));
    let change = max_abs_diff(output(&outputs, "logits"), &logits) / max_abs(&logits).max(1.0);
    assert!(
        change <= LOGITS_TOLERANCE,
        "{label}: logits differ from PyTorch's by {change:.2e}"
    );
    let expected = f32_array(reference, &format!("mambalrp_relevance{suffix}"));
    let err = max_abs_diff(output(&outputs, "relevance"), &expected) / max_abs(&expected);
    println!("{label}: relevance error {err:.2e}");
    assert!(
        err <= RELEVANCE_TOLERANCE,
        "{label}: relevance off by {err:.2e} relative to max |R|"
    );
    for sample in conservation(&outputs).unwrap() {
        assert!(
            sample.relative_residual <= CONSERVATION_TOLERANCE,
            "{label}: not conserved: {sample:?}"
        );
    }
}

fn check_variant(name: &str, other_sizes: &[&str]) {
    let model = load_variant(name);
    let reference = reference(name);
    for scan in [ScanForm::Rolled, ScanForm::Chunked] {
        let compiled = compile_form(&model, "mambalrp", false, scan);
        let rerolled = compiled
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .any(|n| n.op_type() == "Scan");
        assert!(
            rerolled,
            "{name} {scan}: the selective scan was not re-rolled"
        );
        let nonstandard: Vec<&str> = compiled
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| !matches!(n.domain(), "" | "ai.onnx"))
            .map(|n| n.op_type())
            .collect();
        assert!(
            nonstandard.is_empty(),
            "{name} {scan}: the compiled model keeps non-standard ops {nonstandard:?}"
        );
        // tract (slow in debug builds) runs the default form; ONNX Runtime runs both.
        let runtimes: &[Runtime] = match scan {
            ScanForm::Rolled => &[Runtime::Tract, Runtime::OnnxRuntime],
            _ => &[Runtime::OnnxRuntime],
        };
        for &runtime in runtimes {
            for suffix in std::iter::once(&"").chain(other_sizes) {
                let label = format!(
                    "{name} {scan} {runtime:?} {}",
                    suffix.trim_start_matches('_')
                );
                check_against_reference(&label, &compiled, &reference, suffix, runtime);
            }
        }
    }
}

/// Other (batch, length) references of the dynamic-axes exports.
const OTHER_BATCHES: &[&str] = &["_b1_s8", "_b3_s8"];
const OTHER_SIZES: &[&str] = &["_b1_s8", "_b3_s8", "_b2_s5", "_b2_s12"];

macro_rules! variant_tests {
    ($($test:ident: $name:literal, $sizes:expr;)*) => {
        $(
            #[test]
            fn $test() {
                check_variant($name, $sizes);
            }
        )*
    };
}

variant_tests! {
    transformers5_torchscript: "hf5_tiny", &[];
    transformers5_dynamo: "hf5_tiny_dynamo", &[];
    dynamic_batch_torchscript: "dynbatch", OTHER_BATCHES;
    dynamic_batch_dynamo: "dynbatch_dynamo", OTHER_BATCHES;
    dynamic_batch_and_sequence_torchscript: "dynboth", OTHER_SIZES;
    dynamic_batch_and_sequence_dynamo: "dynboth_dynamo", OTHER_SIZES;
    einsum_mamba_torchscript: "minimal", &[];
    einsum_mamba_dynamo: "minimal_dynamo", &[];
    falcon_mamba_torchscript: "falcon_mamba", &[];
    falcon_mamba_dynamo: "falcon_mamba_dynamo", &[];
    onnx_simplifier: "onnxsim", &[];
    onnxruntime_basic_optimisation: "ort_basic", &[];
    onnxruntime_extended_optimisation: "ort_extended", &[];
    onnxruntime_extended_optimisation_dynamo: "ort_extended_dynamo", &[];
    opset23_rms_normalization: "opset23_rmsnorm", &[];
    opset24_swish: "opset24_swish", &[];
}

#[test]
fn a_dynamic_axes_export_compiles_to_a_model_with_symbolic_axes() {
    for (name, axes) in [
        ("dynbatch", ["batch", "8"]),
        ("dynboth", ["batch", "sequence"]),
    ] {
        let compiled = compile_form(&load_variant(name), "mambalrp", false, ScanForm::Rolled);
        let input = &compiled.graph.as_ref().unwrap().input[0];
        let Some(mambalrp::onnx::proto::type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            panic!("input is a tensor")
        };
        let dims: Vec<String> = t
            .shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(mambalrp::onnx::proto::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                    p.clone()
                }
                Some(mambalrp::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                    v.to_string()
                }
                None => "?".into(),
            })
            .collect();
        assert_eq!(dims, axes, "{name}");
    }
}

#[test]
fn a_silu_written_with_tanh_is_refused_naming_the_product_and_the_near_miss() {
    let mut model = load(common::FIXTURES[0], "");
    let graph = model.graph.as_mut().unwrap();
    let sigmoid = graph
        .node
        .iter_mut()
        .find(|n| n.op_type() == "Sigmoid")
        .expect("a SiLU's Sigmoid");
    sigmoid.op_type = Some("Tanh".into());
    let tanh_name = sigmoid.name().to_string();
    let error = mambalrp::compile(&model, &mambalrp::Options::default())
        .err()
        .expect("refused")
        .to_string();
    println!("{error}");
    assert!(error.contains("is not linear"), "{error}");
    assert!(
        error.contains(&format!(
            "by Tanh '{tanh_name}' of it: a SiLU is x * Sigmoid(x)"
        )),
        "{error}"
    );
}

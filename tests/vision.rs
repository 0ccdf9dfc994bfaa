//! Vision Mamba (models/vim.py: 32x32 images, 8x8 patches, a class token in the middle,
//! bidirectional blocks), both exporters, biases as initialised and zeroed: the compiled model
//! reproduces the PyTorch reference relevances per pixel, per token and per patch, keeps the
//! logits, and conserves relevance, in every scan form, in tract and ONNX Runtime.
mod common;

use common::*;
use mambalrp::onnx::proto::ModelProto;
use mambalrp::rules::PatchRule;
use mambalrp::verify::{conservation, run_ort};
use mambalrp::{compile, Options};
use ndarray::{ArrayD, Axis};

/// vim_official: vim_tiny's weights written as the official MambaLRP code writes Vim (einsum
/// discretisation and readout, time-second layout): an export unlike the HF slow path.
const FIXTURES: [&str; 3] = ["vim_tiny", "vim_zerobias", "vim_official"];
const RELEVANCE_TOLERANCE: f32 = 1e-5; // relative to max |R|
const CONSERVATION_TOLERANCE: f32 = 1e-5; // relative to the explained logit
const LOGITS_TOLERANCE: f32 = 1e-6; // relative to max(|logits|, 1)
/// Where the class token sits: the middle of 16 patches.
const CLASS_TOKEN: usize = 8;

fn inputs(reference: &Reference) -> Vec<(String, mambalrp::onnx::Tensor)> {
    vec![(
        "pixel_values".to_string(),
        mambalrp::onnx::Tensor::F32(reference.f32("image")),
    )]
}

fn compiled(
    model: &ModelProto,
    scan: ScanForm,
    patch_rule: PatchRule,
    silu: SiluRule,
) -> ModelProto {
    let options = Options {
        scan,
        patch_rule,
        silu_rule: silu,
        ..Options::default()
    };
    compile(model, &options)
        .unwrap_or_else(|e| panic!("compile failed: {e}"))
        .model
}

fn relative(ours: &ArrayD<f32>, expected: &ArrayD<f32>) -> f32 {
    max_abs_diff(ours, expected) / max_abs(expected)
}

/// The reference relevances of one rule choice: (pixels, bias) keys.
fn reference_keys(patch_rule: PatchRule, silu: SiluRule) -> (&'static str, &'static str) {
    match (patch_rule, silu) {
        (PatchRule::Zero, _) => ("relevance_pixels_zero", "relevance_bias_zero"),
        (_, SiluRule::Exact) => ("relevance_pixels_exact", ""),
        _ => ("relevance_pixels", "relevance_bias"),
    }
}

/// Every check against the reference, on outputs from either runtime.
fn check_outputs(
    label: &str,
    outputs: &[(String, ArrayD<f32>)],
    original: &[(String, ArrayD<f32>)],
    reference: &Reference,
    patch_rule: PatchRule,
    silu: SiluRule,
) {
    let logits = output(original, "logits");
    let change = max_abs_diff(output(outputs, "logits"), logits);
    assert!(
        change <= LOGITS_TOLERANCE * max_abs(logits).max(1.0),
        "{label}: logits changed by {change:.2e}"
    );
    let target_logit = reference.f32("target_logit");
    let err = relative(output(outputs, "relevance_target_logit"), &target_logit);
    assert!(err <= 1e-5, "{label}: explained logit off by {err:.2e}");

    let (pixels_key, bias_key) = reference_keys(patch_rule, silu);
    let tokens_key = if silu == SiluRule::Exact {
        "relevance_tokens_exact"
    } else {
        "relevance_tokens"
    };
    let mut compared = vec![("relevance", pixels_key), ("relevance_tokens", tokens_key)];
    if silu == SiluRule::Stabilized {
        // The patch references are computed under the stabilized rule only.
        compared.push(("relevance_patches", "relevance_patches"));
    }
    for (ours, theirs) in compared {
        let err = relative(output(outputs, ours), &reference.f32(theirs));
        println!("{label} {ours}: relative error {err:.2e}");
        assert!(
            err <= RELEVANCE_TOLERANCE,
            "{label}: {ours} off by {err:.2e} relative to max |R|"
        );
    }
    if !bias_key.is_empty() {
        let err = max_abs_diff(output(outputs, "relevance_bias"), &reference.f32(bias_key))
            / max_abs(&target_logit);
        assert!(err <= RELEVANCE_TOLERANCE, "{label}: bias off by {err:.2e}");
    }
    for sample in conservation(outputs).unwrap() {
        println!(
            "{label} sample {}: residual {:.2e}",
            sample.sample, sample.relative_residual
        );
        assert!(
            sample.relative_residual <= CONSERVATION_TOLERANCE,
            "{label}: not conserved: {sample:?}"
        );
    }
}

/// With every bias zeroed only the class token is a constant term: the pixels hold all the
/// patches' relevance, and the bias share is the class token's relevance.
fn check_zero_bias_accounting(label: &str, outputs: &[(String, ArrayD<f32>)]) {
    let logit = output(outputs, "relevance_target_logit");
    let pixels = output(outputs, "relevance")
        .sum_axis(Axis(3))
        .sum_axis(Axis(2))
        .sum_axis(Axis(1));
    let patches = output(outputs, "relevance_patches").sum_axis(Axis(1));
    let tokens = output(outputs, "relevance_tokens");
    let class_token = tokens.index_axis(Axis(1), CLASS_TOKEN).to_owned();
    let scale = max_abs(logit);
    let pixel_gap = max_abs_diff(&pixels, &patches) / scale;
    let bias_gap = max_abs_diff(output(outputs, "relevance_bias"), &class_token) / scale;
    println!("{label}: pixels - patches {pixel_gap:.2e}, bias - class token {bias_gap:.2e}");
    assert!(
        pixel_gap <= CONSERVATION_TOLERANCE,
        "{label}: the patch embedding lost relevance"
    );
    assert!(
        bias_gap <= CONSERVATION_TOLERANCE,
        "{label}: relevance_bias is not the class token's relevance"
    );
}

fn check_in_tract(fixture: &str, exporter: &str, scan: ScanForm) {
    let model = load(fixture, exporter);
    let reference = Reference::load(fixture);
    let inputs = inputs(&reference);
    let original = run(&model, &inputs);
    let label = format!("{fixture}{exporter} {scan}");
    let outputs = run(
        &compiled(&model, scan, PatchRule::default(), SiluRule::Stabilized),
        &inputs,
    );
    check_outputs(
        &label,
        &outputs,
        &original,
        &reference,
        PatchRule::default(),
        SiluRule::Stabilized,
    );
    if fixture == "vim_zerobias" {
        check_zero_bias_accounting(&label, &outputs);
    }
}

macro_rules! tract_cases {
    ($($name:ident: $fixture:literal, $exporter:literal, $scan:expr;)*) => {
        $(
            #[test]
            fn $name() {
                check_in_tract($fixture, $exporter, $scan);
            }
        )*
    };
}

tract_cases! {
    vim_tiny_rolled: "vim_tiny", "", ScanForm::Rolled;
    vim_tiny_dynamo_rolled: "vim_tiny", "_dynamo", ScanForm::Rolled;
    vim_zerobias_rolled: "vim_zerobias", "", ScanForm::Rolled;
    vim_zerobias_dynamo_rolled: "vim_zerobias", "_dynamo", ScanForm::Rolled;
    vim_tiny_unrolled: "vim_tiny", "", ScanForm::Unrolled;
    vim_tiny_dynamo_unrolled: "vim_tiny", "_dynamo", ScanForm::Unrolled;
    vim_zerobias_unrolled: "vim_zerobias", "", ScanForm::Unrolled;
    vim_zerobias_dynamo_unrolled: "vim_zerobias", "_dynamo", ScanForm::Unrolled;
    vim_tiny_chunked: "vim_tiny", "", ScanForm::Chunked;
    vim_tiny_dynamo_parallel: "vim_tiny", "_dynamo", ScanForm::Parallel;
    vim_official_rolled: "vim_official", "", ScanForm::Rolled;
    vim_official_dynamo_rolled: "vim_official", "_dynamo", ScanForm::Rolled;
    vim_official_unrolled: "vim_official", "", ScanForm::Unrolled;
    vim_official_dynamo_chunked: "vim_official", "_dynamo", ScanForm::Chunked;
}

/// ONNX Runtime (CPU): every fixture and exporter, the default form, and both runtimes agree.
#[test]
fn every_vim_fixture_in_onnxruntime() {
    for fixture in FIXTURES {
        for exporter in EXPORTERS {
            let model = load(fixture, exporter);
            let reference = Reference::load(fixture);
            let inputs = inputs(&reference);
            let ort = |model: &ModelProto| {
                run_ort(model, &inputs)
                    .unwrap_or_else(|e| panic!("ONNX Runtime is needed for this test: {e}"))
            };
            let original = ort(&model);
            let label = format!("{fixture}{exporter} ORT");
            let lrp = compiled(
                &model,
                ScanForm::Rolled,
                PatchRule::default(),
                SiluRule::Stabilized,
            );
            let outputs = ort(&lrp);
            check_outputs(
                &label,
                &outputs,
                &original,
                &reference,
                PatchRule::default(),
                SiluRule::Stabilized,
            );
            let in_tract = run(&lrp, &inputs);
            for name in [
                "relevance",
                "relevance_tokens",
                "relevance_patches",
                "relevance_bias",
            ] {
                let diff = relative(output(&outputs, name), output(&in_tract, name));
                assert!(
                    diff <= RELEVANCE_TOLERANCE,
                    "{label}: {name} differs from tract by {diff:.2e}"
                );
            }
        }
    }
}

/// `--patch-rule zero` is the plain gradient through the patch embedding, and the exact SiLU
/// rule matches its own reference: each choice changes the numbers it should.
#[test]
fn the_patch_rule_and_the_silu_rule_each_match_their_reference() {
    let model = load("vim_tiny", "");
    let reference = Reference::load("vim_tiny");
    let inputs = inputs(&reference);
    let original = run(&model, &inputs);
    for (patch_rule, silu) in [
        (PatchRule::Zero, SiluRule::Stabilized),
        (PatchRule::default(), SiluRule::Exact),
    ] {
        let outputs = run(
            &compiled(&model, ScanForm::Rolled, patch_rule, silu),
            &inputs,
        );
        let label = format!("vim_tiny patch {patch_rule} silu {silu}");
        check_outputs(&label, &outputs, &original, &reference, patch_rule, silu);
    }
    // The two patch rules give visibly different pixels (so the test above can tell them apart).
    let gap = relative(
        &reference.f32("relevance_pixels"),
        &reference.f32("relevance_pixels_zero"),
    );
    assert!(
        gap > 0.1,
        "the gamma and zero references differ by only {gap:.2e}"
    );
}

#[test]
fn the_compiled_model_records_the_vision_contract() {
    let model = load("vim_zerobias", "");
    let options = Options::default();
    let result = compile(&model, &options).unwrap();
    let meta =
        |key: &str| metadata(&result.model, key).unwrap_or_else(|| panic!("no metadata '{key}'"));
    assert_eq!(meta("mambalrp.source"), "image");
    assert_eq!(meta("mambalrp.patch_rule"), "gamma:0.25");
    assert_eq!(meta("mambalrp.target"), "argmax, class logits");
    let outputs: Vec<(&str, Vec<i64>)> = result
        .model
        .graph
        .as_ref()
        .unwrap()
        .output
        .iter()
        .map(|o| {
            let dims = match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(mambalrp::onnx::proto::type_proto::Value::TensorType(t)) => t
                    .shape
                    .as_ref()
                    .map(|s| s.dim.iter().map(|d| match d.value {
                        Some(mambalrp::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(v)) => v,
                        _ => -1,
                    }).collect())
                    .unwrap_or_default(),
                _ => vec![],
            };
            (o.name(), dims)
        })
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("logits", vec![2, 10]),
            ("relevance", vec![2, 3, 32, 32]),
            ("relevance_target_logit", vec![2]),
            ("relevance_bias", vec![2]),
            ("relevance_tokens", vec![2, 17]),
            ("relevance_patches", vec![2, 16]),
        ]
    );
    assert_relevance_outputs_are_float32(&result.model);
    // The TorchScript export shares its zero biases through Identity nodes, which the
    // matchers see through (the unrolled form keeps every original node as it was).
    let identities = model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type() == "Identity")
        .count();
    assert!(identities >= 7, "{identities} Identity nodes in the export");
    // Two blocks, each a forward and a backward direction, and three norms.
    let counts = &result.report.site_counts;
    for (rule, expected) in [("ssm", 4), ("gate", 4), ("silu", 8), ("norm", 3)] {
        assert_eq!(
            counts.get(rule),
            Some(&expected),
            "{rule} sites: {counts:?}"
        );
    }
}

/// A block the compiler cannot place is named, with what the matcher wanted: here the
/// backward direction's gate SiLU reads a Tanh instead of a Sigmoid.
#[test]
fn a_vim_block_with_a_broken_gate_is_named_with_the_near_miss() {
    let mut model = load("vim_tiny", "");
    let node = model
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type() == "Sigmoid" && n.name().contains("layers.1/mixer/bwd"))
        .expect("a backward-direction sigmoid");
    node.op_type = Some("Tanh".into());
    let name = node.name().to_string();
    let error = compile(&model, &Options::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains(&name), "{error}");
    assert!(error.contains("the silu rule considered"), "{error}");
    assert!(error.contains("a SiLU is x * Sigmoid(x)"), "{error}");
}

/// A static export bakes its batch size into the graph: `--dynamic-batch` is refused with the
/// way out, and `--dynamic-seq` never applies to an image.
#[test]
fn dynamic_axes_of_a_static_image_export_are_refused_with_a_reason() {
    let model = load("vim_tiny", "");
    for (dynamic_batch, dynamic_sequence, expected) in [
        (true, false, "symbolic batch axis"),
        (false, true, "token sequences"),
    ] {
        let options = Options {
            dynamic_batch,
            dynamic_sequence,
            ..Options::default()
        };
        let error = compile(&model, &options)
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
}

/// An export with a symbolic batch axis compiles (default options) to a model with one: at
/// batch 1 and 3 every sample's relevances match vim_tiny's PyTorch reference, in ONNX Runtime
/// and tract.
#[test]
fn a_dynamic_batch_export_explains_any_batch() {
    let model = load("vim_dynbatch", "");
    let reference = Reference::load("vim_tiny");
    let compiled = compile(&model, &Options::default()).unwrap().model;
    let pick = |name: &str, rows: &[usize]| reference.f32(name).select(Axis(0), rows);
    for rows in [vec![1usize], vec![1, 0, 1]] {
        let inputs = vec![(
            "pixel_values".to_string(),
            mambalrp::onnx::Tensor::F32(pick("image", &rows)),
        )];
        let in_ort = run_ort(&compiled, &inputs)
            .unwrap_or_else(|e| panic!("ONNX Runtime is needed for this test: {e}"));
        for (runtime, outputs) in [("ORT", in_ort), ("tract", run(&compiled, &inputs))] {
            let label = format!("vim_dynbatch batch {} {runtime}", rows.len());
            for (ours, theirs) in [
                ("relevance", "relevance_pixels"),
                ("relevance_tokens", "relevance_tokens"),
                ("relevance_patches", "relevance_patches"),
                ("logits", "logits"),
            ] {
                let err = relative(output(&outputs, ours), &pick(theirs, &rows));
                println!("{label} {ours}: {err:.2e}");
                assert!(
                    err <= RELEVANCE_TOLERANCE,
                    "{label}: {ours} off by {err:.2e}"
                );
            }
            for sample in conservation(&outputs).unwrap() {
                assert!(
                    sample.relative_residual <= CONSERVATION_TOLERANCE,
                    "{label}: {sample:?}"
                );
            }
        }
    }
}

/// The command line, as a user runs it: default options compile and verify (conservation in
/// ONNX Runtime or tract), and a bad patch rule is refused before anything is written.
#[test]
fn the_plain_command_compiles_a_vim_export() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vim_lrp.onnx");
    let model = model_path("vim_tiny", "_dynamo");
    let run = cli(&[model.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(text(&run).contains("conservation: OK"), "{}", text(&run));
    assert!(out.exists());
    let bad = dir.path().join("bad.onnx");
    let run = cli(&[
        model.to_str().unwrap(),
        "-o",
        bad.to_str().unwrap(),
        "--patch-rule",
        "gamma:-1",
    ]);
    assert!(!run.status.success());
    assert!(text(&run).contains("gamma must be"), "{}", text(&run));
    assert!(!bad.exists());
}

//! Every fixture, both exporters: the compiled model run in tract reproduces the PyTorch
//! reference relevances, keeps the original logits, and conserves relevance.
mod common;

use common::*;
use mambalrp::verify::conservation;

const RELEVANCE_TOLERANCE: f32 = 1e-5; // relative to max |R|
const CONSERVATION_TOLERANCE: f32 = 1e-5; // relative to the explained logit
const LOGITS_TOLERANCE: f32 = 1e-6; // relative to max(|logits|, 1)

fn zero_bias(fixture: &str) -> bool {
    matches!(fixture, "tiny_zerobias" | "small_untied")
}

/// The reference arrays' prefix for each form of the SiLU rule.
fn reference_prefix(silu_rule: SiluRule) -> &'static str {
    match silu_rule {
        SiluRule::Stabilized => "mambalrp",
        SiluRule::Exact => "mambalrp_exact",
    }
}

fn check_mambalrp(fixture: &str, exporter: &str, scan: ScanForm, silu_rule: SiluRule) {
    let model = load(fixture, exporter);
    let reference = Reference::load(fixture);
    let inputs = reference.inputs();
    let original = run(&model, &inputs);
    let compiled = compile_silu(&model, "mambalrp", true, scan, silu_rule);
    let outputs = run(&compiled, &inputs);

    let logits_change = max_abs_diff(output(&outputs, "logits"), output(&original, "logits"));
    let logits_scale = max_abs(output(&original, "logits")).max(1.0);
    assert!(
        logits_change <= LOGITS_TOLERANCE * logits_scale,
        "{fixture}{exporter}: logits changed by {logits_change}"
    );

    let target_logit = output(&outputs, "relevance_target_logit");
    let err = relative_error(target_logit, &reference.f32("target_logit"));
    assert!(
        err <= 1e-5,
        "{fixture}{exporter}: explained logit differs from PyTorch's by {err}"
    );

    // The bias reference is zero in zero-bias fixtures, so it is compared relative to the logit.
    let logit_scale = max_abs(&reference.f32("target_logit"));
    let prefix = reference_prefix(silu_rule);
    for ours in ["relevance", "relevance_embedding", "relevance_bias"] {
        let expected = reference.f32(&format!("{prefix}_{ours}"));
        let scale = if ours == "relevance_bias" {
            logit_scale
        } else {
            max_abs(&expected)
        };
        let err = max_abs_diff(output(&outputs, ours), &expected) / scale;
        println!("{fixture}{exporter} {scan} {silu_rule} {ours}: relative error {err:.2e}");
        assert!(
            err <= RELEVANCE_TOLERANCE,
            "{fixture}{exporter}: {ours} off by {err:.2e} relative to max |R|"
        );
    }

    for sample in conservation(&outputs).unwrap() {
        println!(
            "{fixture}{exporter} sample {}: residual {:.2e}",
            sample.sample, sample.relative_residual
        );
        assert!(
            sample.relative_residual <= CONSERVATION_TOLERANCE,
            "{fixture}{exporter}: not conserved: {sample:?}"
        );
    }

    if zero_bias(fixture) {
        // Only the stabilized SiLU rule's 1e-6 absorbs relevance in a zero-bias model.
        let bias = output(&outputs, "relevance_bias");
        let absorbed = max_abs(bias);
        assert!(
            match silu_rule {
                SiluRule::Exact => absorbed == 0.0,
                SiluRule::Stabilized => absorbed <= CONSERVATION_TOLERANCE * logit_scale,
            },
            "{fixture}{exporter}: zero-bias model absorbed {bias:?}"
        );
        let layers = output(&outputs, "relevance_layers");
        let blocks = if fixture == "small_untied" { 3 } else { 2 };
        assert_eq!(layers.shape(), &[blocks + 1, 2, 8]);
        for (layer, rows) in layers.outer_iter().enumerate() {
            for (b, row) in rows.outer_iter().enumerate() {
                let sum: f32 = row.sum();
                let f = target_logit[b];
                assert!(
                    (sum - f).abs() <= CONSERVATION_TOLERANCE * f.abs(),
                    "{fixture}{exporter}: layer {layer} sample {b} sums to {sum}, logit {f}"
                );
            }
        }
        let first = layers.index_axis(ndarray::Axis(0), 0).to_owned().into_dyn();
        assert!(
            max_abs_diff(&first, output(&outputs, "relevance")) <= 1e-6 * max_abs(&first),
            "layer 0 is the embedding relevance"
        );
    }
}

fn check_gradient_times_input(fixture: &str, exporter: &str, scan: ScanForm) {
    let model = load(fixture, exporter);
    let reference = Reference::load(fixture);
    let outputs = run(&compile_form(&model, "gi", true, scan), &reference.inputs());
    for (ours, theirs) in [
        ("relevance", "gi_relevance"),
        ("relevance_embedding", "gi_relevance_embedding"),
    ] {
        let err = relative_error(output(&outputs, ours), &reference.f32(theirs));
        println!("{fixture}{exporter} gi {ours}: relative error {err:.2e}");
        assert!(
            err <= RELEVANCE_TOLERANCE,
            "{fixture}{exporter}: gi {ours} off by {err:.2e}"
        );
    }
}

macro_rules! fixture_tests {
    ($($name:ident: $fixture:literal, $exporter:literal;)*) => {
        $(
            mod $name {
                use super::ScanForm::{Rolled, Unrolled};
                use super::SiluRule::{Exact, Stabilized};
                #[test]
                fn rolled_mambalrp_relevance_matches_reference_and_conserves() {
                    super::check_mambalrp($fixture, $exporter, Rolled, Stabilized);
                }
                #[test]
                fn unrolled_mambalrp_relevance_matches_reference_and_conserves() {
                    super::check_mambalrp($fixture, $exporter, Unrolled, Stabilized);
                }
                #[test]
                fn exact_silu_rule_matches_its_reference_and_conserves() {
                    super::check_mambalrp($fixture, $exporter, Rolled, Exact);
                }
                #[test]
                fn rolled_gradient_times_input_matches_reference() {
                    super::check_gradient_times_input($fixture, $exporter, Rolled);
                }
                #[test]
                fn unrolled_gradient_times_input_matches_reference() {
                    super::check_gradient_times_input($fixture, $exporter, Unrolled);
                }
            }
        )*
    };
}

fixture_tests! {
    tiny_convbias_torchscript: "tiny_convbias", "";
    tiny_convbias_dynamo: "tiny_convbias", "_dynamo";
    tiny_zerobias_torchscript: "tiny_zerobias", "";
    tiny_zerobias_dynamo: "tiny_zerobias", "_dynamo";
    small_untied_torchscript: "small_untied", "";
    small_untied_dynamo: "small_untied", "_dynamo";
    tiny_bigxproj_torchscript: "tiny_bigxproj", "";
    tiny_bigxproj_dynamo: "tiny_bigxproj", "_dynamo";
    tiny_smallsilu_torchscript: "tiny_smallsilu", "";
    tiny_smallsilu_dynamo: "tiny_smallsilu", "_dynamo";
    mid_biglogits_torchscript: "mid_biglogits", "";
    mid_biglogits_dynamo: "mid_biglogits", "_dynamo";
}

/// The small-SiLU fixture has SiLU inputs below 1e-5 on purpose: there the two forms of the
/// rule differ, so each must match its own reference and not the other's.
#[test]
fn tiny_smallsilu_tells_the_two_silu_rules_apart() {
    let reference = Reference::load("tiny_smallsilu");
    let gap = relative_error(
        &reference.f32("mambalrp_exact_relevance"),
        &reference.f32("mambalrp_relevance"),
    );
    assert!(gap > 1e-3, "the references barely differ: {gap:.2e}");
    for exporter in EXPORTERS {
        let model = load("tiny_smallsilu", exporter);
        let compiled = compile_silu(
            &model,
            "mambalrp",
            false,
            ScanForm::Rolled,
            SiluRule::Stabilized,
        );
        let outputs = run(&compiled, &reference.inputs());
        let against_exact = relative_error(
            output(&outputs, "relevance"),
            &reference.f32("mambalrp_exact_relevance"),
        );
        assert!(
            against_exact > 100.0 * RELEVANCE_TOLERANCE,
            "tiny_smallsilu{exporter}: the stabilized rule matches the exact reference ({against_exact:.2e})"
        );
        let metadata = compiled
            .metadata_props
            .iter()
            .find(|p| p.key() == "mambalrp.silu_rule")
            .map(|p| p.value().to_string());
        assert_eq!(metadata.as_deref(), Some("stabilized"));
    }
}

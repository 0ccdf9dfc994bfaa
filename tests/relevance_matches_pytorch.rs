//! Every fixture, both exporters: the compiled model run in tract reproduces the PyTorch
//! reference relevances, keeps the original logits, and conserves relevance.
mod common;

use common::*;
use mambalrp::verify::conservation;

const RELEVANCE_TOLERANCE: f32 = 1e-5; // relative to max |R|
const CONSERVATION_TOLERANCE: f32 = 1e-5; // relative to the explained logit
const LOGITS_TOLERANCE: f32 = 1e-6; // absolute

fn zero_bias(fixture: &str) -> bool {
    matches!(fixture, "tiny_zerobias" | "small_untied")
}

fn check_mambalrp(fixture: &str, exporter: &str, scan: ScanForm) {
    let model = load(fixture, exporter);
    let reference = Reference::load(fixture);
    let inputs = reference.inputs();
    let original = run(&model, &inputs);
    let compiled = compile_form(&model, "mambalrp", true, scan);
    let outputs = run(&compiled, &inputs);

    let logits_change = max_abs_diff(output(&outputs, "logits"), output(&original, "logits"));
    assert!(
        logits_change <= LOGITS_TOLERANCE,
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
    for (ours, theirs) in [
        ("relevance", "mambalrp_relevance"),
        ("relevance_embedding", "mambalrp_relevance_embedding"),
        ("relevance_bias", "mambalrp_relevance_bias"),
    ] {
        let expected = reference.f32(theirs);
        let scale = if ours == "relevance_bias" {
            logit_scale
        } else {
            max_abs(&expected)
        };
        let err = max_abs_diff(output(&outputs, ours), &expected) / scale;
        println!("{fixture}{exporter} mambalrp {ours}: relative error {err:.2e}");
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
        let bias = output(&outputs, "relevance_bias");
        assert!(
            max_abs(bias) == 0.0,
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
                #[test]
                fn rolled_mambalrp_relevance_matches_reference_and_conserves() {
                    super::check_mambalrp($fixture, $exporter, Rolled);
                }
                #[test]
                fn unrolled_mambalrp_relevance_matches_reference_and_conserves() {
                    super::check_mambalrp($fixture, $exporter, Unrolled);
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
}

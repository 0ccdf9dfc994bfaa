//! The re-rolled recurrence: compiled graphs whose size does not depend on the sequence length,
//! agreeing with the unrolled form to 1e-5 relative in tract and in ONNX Runtime.
mod common;

use common::*;
use mambalrp::verify::{conservation, run_ort};

const LENGTHS: [(&str, usize); 3] = [
    ("tiny_zerobias_s4", 4),
    ("tiny_zerobias", 8),
    ("tiny_zerobias_s16", 16),
];

#[test]
fn rolled_node_count_does_not_depend_on_sequence_length() {
    for exporter in EXPORTERS {
        let mut rolled = Vec::new();
        let mut unrolled = Vec::new();
        for (fixture, _) in LENGTHS {
            let model = load(fixture, exporter);
            rolled.push(
                compile_form(&model, "mambalrp", true, ScanForm::Rolled)
                    .graph
                    .unwrap()
                    .node
                    .len(),
            );
            unrolled.push(
                compile_form(&model, "mambalrp", true, ScanForm::Unrolled)
                    .graph
                    .unwrap()
                    .node
                    .len(),
            );
        }
        println!("tiny_zerobias{exporter} at S = 4, 8, 16: rolled {rolled:?} nodes, unrolled {unrolled:?}");
        assert!(
            rolled.windows(2).all(|w| w[0] == w[1]),
            "rolled node counts vary with length: {rolled:?}"
        );
        assert!(
            unrolled.windows(2).all(|w| w[0] < w[1]),
            "unrolled counts should grow: {unrolled:?}"
        );
    }
}

#[test]
fn rolled_relevance_matches_pytorch_at_every_length() {
    for exporter in EXPORTERS {
        for (fixture, length) in LENGTHS {
            let reference = Reference::load(fixture);
            let compiled = compile_form(
                &load(fixture, exporter),
                "mambalrp",
                false,
                ScanForm::Rolled,
            );
            for (runtime, outputs) in [
                ("tract", run(&compiled, &reference.inputs())),
                (
                    "onnxruntime",
                    run_ort(&compiled, &reference.inputs()).expect("ONNX Runtime runs"),
                ),
            ] {
                let err = relative_error(
                    output(&outputs, "relevance"),
                    &reference.f32("mambalrp_relevance"),
                );
                println!("{fixture}{exporter} (S={length}) in {runtime}: relative error {err:.2e}");
                assert!(
                    err <= 1e-5,
                    "{fixture}{exporter} in {runtime}: off by {err:.2e}"
                );
                assert_eq!(output(&outputs, "relevance").shape(), &[2, length]);
                for sample in conservation(&outputs).unwrap() {
                    assert!(sample.relative_residual <= 1e-5, "{sample:?}");
                }
            }
        }
    }
}

#[test]
fn rolled_and_unrolled_agree_in_tract_and_onnxruntime() {
    for fixture in FIXTURES {
        for exporter in EXPORTERS {
            let model = load(fixture, exporter);
            let inputs = Reference::load(fixture).inputs();
            for rules in ["mambalrp", "gi"] {
                let rolled = compile_form(&model, rules, true, ScanForm::Rolled);
                let unrolled = compile_form(&model, rules, true, ScanForm::Unrolled);
                let runs = [
                    ("tract", run(&rolled, &inputs), run(&unrolled, &inputs)),
                    (
                        "onnxruntime",
                        run_ort(&rolled, &inputs).unwrap(),
                        run_ort(&unrolled, &inputs).unwrap(),
                    ),
                ];
                for (runtime, a, b) in runs {
                    for name in [
                        "logits",
                        "relevance",
                        "relevance_embedding",
                        "relevance_layers",
                    ] {
                        let err = relative_error(output(&a, name), output(&b, name));
                        assert!(err <= 1e-5, "{fixture}{exporter} {rules} {runtime}: {name} rolled vs unrolled {err:.2e}");
                    }
                }
            }
        }
    }
}

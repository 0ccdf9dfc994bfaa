//! `--dynamic-seq` / `--dynamic-batch`: a model exported at S=8 and batch 2, compiled once,
//! explains inputs of length 4, 8 and 16 and of batch 1 and 3
//! with the PyTorch references of those lengths (same weights), in tract and ONNX Runtime.
mod common;

use common::*;
use mambalrp::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
use mambalrp::verify::{conservation, run_ort};
use mambalrp::{compile, Options};

/// Rolled, chunked and parallel with chunks of 3 tokens (so S = 4, 8 and 16 all need padding).
const FORMS: [(ScanForm, usize); 3] = [
    (ScanForm::Rolled, 3),
    (ScanForm::Chunked, 3),
    (ScanForm::Parallel, 3),
];

fn dynamic(
    fixture: &str,
    exporter: &str,
    (scan, chunk_len): (ScanForm, usize),
) -> mambalrp::onnx::proto::ModelProto {
    let options = Options {
        dynamic_sequence: true,
        scan,
        chunk_len: Some(chunk_len),
        ..Options::default()
    };
    compile(&load(fixture, exporter), &options)
        .unwrap_or_else(|e| panic!("{e}"))
        .model
}

#[test]
fn one_compiled_model_explains_every_length() {
    for (exporter, form) in EXPORTERS.into_iter().flat_map(|e| FORMS.map(|f| (e, f))) {
        let compiled = dynamic("tiny_zerobias", exporter, form);
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
                println!("tiny_zerobias{exporter} {form:?} compiled at S=8, run at S={length} in {runtime}: relevance {err:.2e}, logit {logit_err:.2e}");
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
        error.contains("need every selective scan re-rolled"),
        "{error}"
    );
}

/// Picks rows of a reference array along axis 0.
fn rows(array: &ndarray::ArrayD<f32>, picks: &[usize]) -> ndarray::ArrayD<f32> {
    array.select(ndarray::Axis(0), picks)
}

#[test]
fn one_compiled_model_explains_every_batch_size() {
    use mambalrp::onnx::Tensor;
    let reference = Reference::load("tiny_convbias");
    let Tensor::I64(ids) = reference.get("input_ids").clone() else {
        panic!()
    };
    let Tensor::I64(targets) = reference.get("target").clone() else {
        panic!()
    };
    for (exporter, (scan, chunk_len)) in EXPORTERS.into_iter().flat_map(|e| FORMS.map(|f| (e, f))) {
        for target in [
            mambalrp::emit::TargetMode::Argmax,
            mambalrp::emit::TargetMode::Input,
        ] {
            let options = Options {
                dynamic_sequence: true,
                dynamic_batch: true,
                scan,
                chunk_len: Some(chunk_len),
                target,
                ..Options::default()
            };
            let compiled = compile(&load("tiny_convbias", exporter), &options)
                .unwrap()
                .model;
            for picks in [vec![1usize], vec![0, 1, 0]] {
                let mut inputs = vec![(
                    "input_ids".to_string(),
                    Tensor::I64(ids.select(ndarray::Axis(0), &picks)),
                )];
                if target == mambalrp::emit::TargetMode::Input {
                    inputs.push((
                        "lrp_target".to_string(),
                        Tensor::I64(targets.select(ndarray::Axis(0), &picks)),
                    ));
                }
                for (runtime, outputs) in [
                    ("tract", run(&compiled, &inputs)),
                    ("onnxruntime", run_ort(&compiled, &inputs).unwrap()),
                ] {
                    let expected = rows(&reference.f32("mambalrp_relevance"), &picks);
                    let err = max_abs_diff(output(&outputs, "relevance"), &expected)
                        / max_abs(&reference.f32("mambalrp_relevance"));
                    println!(
                        "tiny_convbias{exporter} {target:?} batch {} in {runtime}: {err:.2e}",
                        picks.len()
                    );
                    assert!(
                        err <= 1e-5,
                        "{exporter} batch {picks:?} {runtime}: {err:.2e}"
                    );
                    for sample in conservation(&outputs).unwrap() {
                        assert!(sample.relative_residual <= 1e-5, "{sample:?}");
                    }
                }
            }
        }
    }
}

/// With a symbolic length the relevance pass needs the runtime shapes of forward values (to
/// undo pads, reshapes and trims). A `Shape` read placed in the relevance pass would keep its
/// value alive until then, and ONNX Runtime's default order places it there: on the 130M model
/// that kept about one [B, D, S, N] tensor per layer (rolled, 2048 tokens: 9.8 GB instead of
/// 5.7 GB). So every shape the relevance pass reads of a state-sized forward value (a quarter
/// of [B, D, S, N] or more: the scans' operands, chunks and levels) must be a read the forward
/// pass itself makes.
#[test]
fn the_relevance_pass_reads_no_late_shape_of_a_state_sized_value() {
    use std::collections::HashSet;
    for (exporter, form) in EXPORTERS.into_iter().flat_map(|e| FORMS.map(|f| (e, f))) {
        let options = Options {
            dynamic_sequence: true,
            dynamic_batch: true,
            scan: form.0,
            chunk_len: Some(form.1),
            ..Options::default()
        };
        let compiled = compile(&load("small_untied", exporter), &options)
            .unwrap_or_else(|e| panic!("{e}"))
            .model;
        let graph = mambalrp::ir::Graph::from_model(&compiled).unwrap();
        let numel = |value: &str| graph.value_type(value).map(|t| t.numel()).unwrap_or(0);
        // The forward pass: every node the original output needs.
        let original = compiled.graph.as_ref().unwrap().output[0].name();
        let mut forward = HashSet::new();
        let mut stack = vec![graph.producer(original).unwrap().0];
        while let Some(index) = stack.pop() {
            if forward.insert(index) {
                let node = graph.node(index);
                stack.extend(
                    node.input
                        .iter()
                        .filter_map(|i| graph.producer(i))
                        .map(|p| p.0),
                );
            }
        }
        // The state's size [B, D, S, N]: the largest rank-4 forward value (dA, dB*u).
        let state = forward
            .iter()
            .map(|&i| graph.node(i))
            .filter(|n| {
                graph
                    .value_type(&n.output[0])
                    .is_ok_and(|t| t.shape.len() == 4)
            })
            .map(|n| numel(&n.output[0]))
            .max()
            .unwrap_or_else(|| {
                let typed = forward
                    .iter()
                    .filter(|&&i| graph.value_type(&graph.node(i).output[0]).is_ok())
                    .count();
                panic!(
                    "{exporter} {form:?}: no state-sized value ({typed} of {} forward values typed)",
                    forward.len()
                )
            });
        let late: Vec<String> = (0..graph.nodes().len())
            .filter(|i| !forward.contains(i))
            .map(|i| graph.node(i))
            .filter(|n| n.op_type() == "Shape")
            .filter(|n| {
                graph
                    .producer(&n.input[0])
                    .is_some_and(|(p, _)| forward.contains(&p))
                    && numel(&n.input[0]) * 4 >= state
            })
            .map(|n| {
                format!(
                    "{} reads {} ({} elements)",
                    n.name(),
                    n.input[0],
                    numel(&n.input[0])
                )
            })
            .collect();
        assert!(
            late.is_empty(),
            "{exporter} {form:?}: late shape reads of state-sized values (the state has {state}):\n{}",
            late.join("\n")
        );
    }
}

/// `--max-seq-len`: the parallel form's levels serve lengths up to a power of the chunk length
/// (chunks of 3, asked for 8: 9 tokens). Within it the relevance is the reference's; a longer
/// input stops the run with an error naming the limit, in both runtimes, instead of a wrong
/// answer.
#[test]
fn the_parallel_form_serves_up_to_its_max_seq_len_and_refuses_longer_inputs() {
    let options = Options {
        dynamic_sequence: true,
        scan: ScanForm::Parallel,
        chunk_len: Some(3),
        max_seq_len: Some(8),
        ..Options::default()
    };
    let compiled = compile(&load("tiny_zerobias", ""), &options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compiled.report.max_sequence_length, Some(9));
    let metadata = &compiled.model.metadata_props;
    assert!(
        metadata
            .iter()
            .any(|p| p.key() == "mambalrp.max_sequence_length" && p.value() == "9"),
        "{metadata:?}"
    );
    let unbounded = compile(
        &load("tiny_zerobias", ""),
        &Options {
            max_seq_len: None,
            ..options.clone()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        compiled.model.graph.as_ref().unwrap().node.len()
            < unbounded.model.graph.as_ref().unwrap().node.len(),
        "fewer levels, fewer nodes"
    );
    for fixture in ["tiny_zerobias_s4", "tiny_zerobias"] {
        let reference = Reference::load(fixture);
        let outputs = run_ort(&compiled.model, &reference.inputs()).expect("ONNX Runtime runs");
        let err = relative_error(
            output(&outputs, "relevance"),
            &reference.f32("mambalrp_relevance"),
        );
        assert!(err <= 1e-5, "{fixture}: {err:.2e}");
        let in_tract = run(&compiled.model, &reference.inputs());
        let err = relative_error(
            output(&in_tract, "relevance"),
            &reference.f32("mambalrp_relevance"),
        );
        assert!(err <= 1e-5, "{fixture} in tract: {err:.2e}");
    }
    let longer = Reference::load("tiny_zerobias_s16").inputs();
    for (runtime, result) in [
        ("onnxruntime", run_ort(&compiled.model, &longer)),
        (
            "tract",
            mambalrp::verify::run_tract(&compiled.model, &longer),
        ),
    ] {
        let error = format!("{:#}", result.expect_err("16 tokens are refused"));
        println!("{runtime}: {error}");
        assert!(
            error.contains("max_seq_len_9_exceeded"),
            "{runtime}: {error}"
        );
    }

    for scan in [ScanForm::Rolled, ScanForm::Chunked] {
        let refused = compile(
            &load("tiny_zerobias", ""),
            &Options {
                scan,
                ..options.clone()
            },
        );
        let error = refused.err().expect("refused").to_string();
        assert!(
            error.contains("--max-seq-len applies to --scan parallel"),
            "{error}"
        );
    }
    let short = compile(
        &load("tiny_zerobias", ""),
        &Options {
            max_seq_len: Some(5),
            ..options
        },
    );
    let error = short.err().expect("refused").to_string();
    assert!(
        error.contains("shorter than the length the model was traced at (8)"),
        "{error}"
    );
}

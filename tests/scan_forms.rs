//! The re-rolled recurrence, stepwise, chunked and parallel: compiled graphs whose size does not depend on
//! the sequence length, agreeing with the unrolled form to 1e-5 relative in tract and in ONNX
//! Runtime.
mod common;

use common::*;
use mambalrp::verify::{conservation, run_ort};

/// The compact forms, with chunks (tokens per Scan iteration) of one token, ones that divide
/// S = 8, do not (a fixed length then runs at the largest divisor: 3 -> 2), equal S or exceed
/// it (32 -> 8); the parallel form pads a length its chunks do not divide (3). Padding at run
/// time is tested with symbolic lengths (tests/dynamic_axes.rs).
const COMPACT: [(ScanForm, usize); 8] = [
    (ScanForm::Rolled, 1),
    (ScanForm::Rolled, 3),
    (ScanForm::Rolled, 8),
    (ScanForm::Chunked, 1),
    (ScanForm::Chunked, 3),
    (ScanForm::Chunked, 4),
    (ScanForm::Chunked, 32),
    (ScanForm::Parallel, 3),
];

fn compile_compact(
    model: &mambalrp::onnx::proto::ModelProto,
    rules: &str,
    emit: bool,
    (scan, chunk_len): (ScanForm, usize),
) -> mambalrp::onnx::proto::ModelProto {
    let options = mambalrp::Options {
        rules: rules.parse().unwrap(),
        emit_embedding: emit,
        emit_layers: emit,
        scan,
        chunk_len: Some(chunk_len),
        ..mambalrp::Options::default()
    };
    mambalrp::compile(model, &options)
        .unwrap_or_else(|e| panic!("compile failed: {e}"))
        .model
}

const LENGTHS: [(&str, usize); 3] = [
    ("tiny_zerobias_s4", 4),
    ("tiny_zerobias", 8),
    ("tiny_zerobias_s16", 16),
];

#[test]
fn compact_node_count_does_not_depend_on_sequence_length() {
    for exporter in EXPORTERS {
        let mut rolled = Vec::new();
        let mut chunked = Vec::new();
        let mut parallel = Vec::new();
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
            chunked.push(
                compile_form(&model, "mambalrp", true, ScanForm::Chunked)
                    .graph
                    .unwrap()
                    .node
                    .len(),
            );
            parallel.push(
                compile_form(&model, "mambalrp", true, ScanForm::Parallel)
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
        println!("tiny_zerobias{exporter} at S = 4, 8, 16: rolled {rolled:?} nodes, chunked {chunked:?}, parallel {parallel:?}, unrolled {unrolled:?}");
        for counts in [&rolled, &chunked] {
            assert!(
                counts.windows(2).all(|w| w[0] == w[1]),
                "compact node counts vary with length: {counts:?}"
            );
        }
        assert!(
            unrolled.windows(2).all(|w| w[0] < w[1]),
            "unrolled counts should grow: {unrolled:?}"
        );
    }
}

#[test]
fn compact_relevance_matches_pytorch_at_every_length() {
    for (exporter, form) in EXPORTERS.into_iter().flat_map(|e| COMPACT.map(|f| (e, f))) {
        for (fixture, length) in LENGTHS {
            let reference = Reference::load(fixture);
            let compiled = compile_compact(&load(fixture, exporter), "mambalrp", false, form);
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
                println!("{fixture}{exporter} {form:?} (S={length}) in {runtime}: relative error {err:.2e}");
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
fn compact_and_unrolled_forms_agree_in_tract_and_onnxruntime() {
    for fixture in FIXTURES {
        for exporter in EXPORTERS {
            let model = load(fixture, exporter);
            let inputs = Reference::load(fixture).inputs();
            for rules in ["mambalrp", "gi"] {
                let unrolled = compile_form(&model, rules, true, ScanForm::Unrolled);
                let expected = [
                    ("tract", run(&unrolled, &inputs)),
                    ("onnxruntime", run_ort(&unrolled, &inputs).unwrap()),
                ];
                for form in COMPACT {
                    let compact = compile_compact(&model, rules, true, form);
                    for (runtime, b) in &expected {
                        let a = match *runtime {
                            "tract" => run(&compact, &inputs),
                            _ => run_ort(&compact, &inputs).unwrap(),
                        };
                        for name in [
                            "logits",
                            "relevance",
                            "relevance_embedding",
                            "relevance_layers",
                        ] {
                            let err = relative_error(output(&a, name), output(b, name));
                            assert!(err <= 1e-5, "{fixture}{exporter} {rules} {runtime}: {name} {form:?} vs unrolled {err:.2e}");
                        }
                    }
                }
            }
        }
    }
}

/// On a GPU the parallel form's time is the kernels that write a whole `[B, D, S, N]` state
/// (about 0.12-0.4 ms each for the 130M model at 2048 tokens on an H200). Counted on the graph
/// tract types at a fixed length, for the form the README recommends for GPUs (symbolic
/// length, so the time axis is padded at run time): per layer, forward and relevance pass
/// together, 23 such ops, and none of them a `Pad`, which ONNX Runtime's CUDA kernel runs at
/// 4.7 ms for that size (the transpose of a slice of the states made one per layer). The
/// re-rolled `dt * u` is a product with a frozen operand, not a gate.
#[test]
fn the_parallel_form_writes_few_state_sized_tensors_and_no_state_sized_pad() {
    use tract_onnx::prelude::*;
    const PER_LAYER: usize = 22;
    for exporter in EXPORTERS {
        let options = mambalrp::Options {
            scan: ScanForm::Parallel,
            chunk_len: Some(4),
            dynamic_sequence: true,
            max_seq_len: Some(64),
            ..mambalrp::Options::default()
        };
        let compiled = mambalrp::compile(&load("small_untied", exporter), &options)
            .unwrap_or_else(|e| panic!("compile failed: {e}"));
        let layers = compiled.report.site_counts["ssm"];
        assert_eq!(
            compiled.report.site_counts["gate"], layers,
            "{exporter}: one gate per block, no more: {:?}",
            compiled.report.sites
        );
        let mut bytes = Vec::new();
        prost::Message::encode(&compiled.model, &mut bytes).unwrap();
        let (batch, seq) = (2, 16);
        let typed = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .and_then(|mut m| {
                m.set_input_fact(0, InferenceFact::dt_shape(i64::datum_type(), [batch, seq]))?;
                m.into_typed()
            })
            .unwrap_or_else(|e| panic!("{exporter}: tract: {e:?}"));
        let volume = |fact: &TypedFact| {
            fact.shape
                .as_concrete()
                .map(|s| s.iter().product::<usize>())
        };
        let written: Vec<(String, String, usize)> = typed
            .nodes()
            .iter()
            .filter_map(|node| {
                let size = volume(&node.outputs.first()?.fact)?;
                Some((node.name.clone(), node.op.name().to_string(), size))
            })
            .collect();
        // The state: what the scan's cumulative sums run over.
        let state = written
            .iter()
            .filter(|(_, op, _)| op.contains("CumSum"))
            .map(|(_, _, size)| *size)
            .max()
            .expect("the parallel form sums cumulatively");
        // Reshapes and axis moves alias their input in ONNX Runtime.
        let aliases = [
            "AxisOp",
            "Reshape",
            "Squeeze",
            "Unsqueeze",
            "Identity",
            "Const",
            "Source",
        ];
        let state_sized: Vec<&(String, String, usize)> = written
            .iter()
            .filter(|(_, op, size)| *size >= state && !aliases.iter().any(|a| op.contains(a)))
            .collect();
        let listing = || {
            state_sized
                .iter()
                .map(|(name, op, _)| format!("{op} {name}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            state_sized.iter().all(|(_, op, _)| !op.contains("Pad")),
            "{exporter}: a state-sized Pad:\n{}",
            listing()
        );
        assert!(
            state_sized.len() <= PER_LAYER * layers,
            "{exporter}: {} state-sized ops for {layers} layers (at most {PER_LAYER} each):\n{}",
            state_sized.len(),
            listing()
        );
    }
}

/// The chunk sums over a state-sized tensor (forward and relevance pass, every level) are read off
/// the cumulative sum of the same tensor over the same axis, as one step of it, instead of a
/// second pass over the tensor: no `ReduceSum` is left beside a `CumSum` of its operand.
#[test]
fn the_parallel_form_reads_chunk_sums_off_its_cumulative_sums() {
    use std::collections::HashSet;
    for exporter in EXPORTERS {
        let options = mambalrp::Options {
            scan: ScanForm::Parallel,
            dynamic_sequence: true,
            ..mambalrp::Options::default()
        };
        let compiled = mambalrp::compile(&load("small_untied", exporter), &options)
            .unwrap_or_else(|e| panic!("compile failed: {e}"));
        let graph = compiled.model.graph.unwrap();
        let axis = |name: &str| -> Option<Vec<u8>> {
            graph
                .initializer
                .iter()
                .find(|t| t.name() == name)
                .map(|t| t.raw_data().to_vec())
        };
        let operands_summed = |op: &str| -> HashSet<(String, Option<Vec<u8>>)> {
            graph
                .node
                .iter()
                .filter(|n| n.op_type() == op)
                .map(|n| (n.input[0].clone(), n.input.get(1).and_then(|a| axis(a))))
                .collect()
        };
        let cumulative = operands_summed("CumSum");
        let both: Vec<_> = operands_summed("ReduceSum")
            .intersection(&cumulative)
            .cloned()
            .collect();
        assert!(both.is_empty(), "{exporter}: summed both ways: {both:?}");
        let cumsum_outputs: HashSet<&str> = graph
            .node
            .iter()
            .filter(|n| n.op_type() == "CumSum")
            .map(|n| n.output[0].as_str())
            .collect();
        let steps_read = graph
            .node
            .iter()
            .filter(|n| n.op_type() == "Slice" && cumsum_outputs.contains(n.input[0].as_str()))
            .count();
        let layers = compiled.report.site_counts["ssm"];
        // Per layer and level, one in the forward pass and one in the relevance pass.
        assert!(
            steps_read >= 2 * layers,
            "{exporter}: {steps_read} sums read off cumulative sums for {layers} layers"
        );
    }
}

/// `--keep-forward-values`: the relevance pass multiplies by the forward pass's own decay
/// factors instead of rebuilding them, with the same relevance (the recomputation repeats the
/// same ops on the same inputs).
#[test]
fn keeping_forward_values_drops_the_recomputation_and_changes_no_relevance() {
    let model = load("small_untied", "");
    let reference = Reference::load("small_untied");
    let inputs = reference.inputs();
    for scan in [ScanForm::Parallel, ScanForm::Rolled] {
        let compiled = |keep_forward_values: bool| {
            let options = mambalrp::Options {
                scan,
                keep_forward_values,
                ..mambalrp::Options::default()
            };
            mambalrp::compile(&model, &options)
                .unwrap_or_else(|e| panic!("compile failed: {e}"))
                .model
        };
        fn recomputations(graph: &mambalrp::onnx::proto::GraphProto) -> usize {
            graph
                .node
                .iter()
                .map(|node| {
                    let bodies: usize = node
                        .attribute
                        .iter()
                        .flat_map(|a| a.g.iter().chain(&a.graphs))
                        .map(recomputations)
                        .sum();
                    bodies + node.name().contains("recompute") as usize
                })
                .sum()
        }
        let (rebuilt, kept) = (compiled(false), compiled(true));
        let graph = |model: &mambalrp::onnx::proto::ModelProto| model.graph.clone().unwrap();
        assert!(
            recomputations(&graph(&rebuilt)) > 0,
            "{scan:?}: the default recomputes"
        );
        assert_eq!(
            recomputations(&graph(&kept)),
            0,
            "{scan:?}: nothing recomputed when kept"
        );
        let rebuilt_out = run_ort(&rebuilt, &inputs).unwrap();
        let kept_out = run_ort(&kept, &inputs).unwrap();
        let diff = relative_error(
            output(&kept_out, "relevance"),
            output(&rebuilt_out, "relevance"),
        );
        assert!(diff <= 1e-6, "{scan:?}: relevance moved by {diff:.2e}");
        for sample in conservation(&kept_out).unwrap() {
            assert!(sample.relative_residual <= 1e-5, "{scan:?}: {sample:?}");
        }
    }
}

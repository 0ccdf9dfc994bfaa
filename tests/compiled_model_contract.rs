//! The compiled-model contract of DESIGN.md §3: originals untouched, standard ops only, typed
//! outputs, metadata, and the `lrp_target` input.
mod common;

use common::*;
use mambalrp::emit::TargetMode;
use mambalrp::onnx::proto::type_proto;
use mambalrp::onnx::Tensor;
use mambalrp::{compile, Options};
use prost::Message;

#[test]
fn fixtures_round_trip_byte_for_byte() {
    for fixture in FIXTURES {
        for exporter in EXPORTERS {
            let bytes = std::fs::read(model_path(fixture, exporter)).unwrap();
            let model = mambalrp::onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
            assert!(
                model.encode_to_vec() == bytes,
                "{fixture}{exporter}: load -> save changed the bytes"
            );
        }
    }
}

#[test]
fn compiled_graphs_keep_the_original_and_use_only_standard_ops() {
    for fixture in FIXTURES {
        for exporter in EXPORTERS {
            let model = load(fixture, exporter);
            let mut unrolled_nodes = 0;
            for scan in [ScanForm::Unrolled, ScanForm::Rolled, ScanForm::Chunked] {
                let compiled = compile_form(&model, "mambalrp", true, scan);
                let (before, after) = (
                    model.graph.as_ref().unwrap(),
                    compiled.graph.as_ref().unwrap(),
                );
                assert_eq!(compiled.ir_version, model.ir_version);
                assert_eq!(
                    compiled.opset_import, model.opset_import,
                    "opset must be kept"
                );
                assert_eq!(after.input, before.input, "inputs unchanged");
                assert_eq!(
                    &after.output[..before.output.len()],
                    &before.output[..],
                    "original outputs first and unchanged"
                );
                if scan == ScanForm::Unrolled {
                    unrolled_nodes = after.node.len();
                    assert_eq!(
                        &after.node[..before.node.len()],
                        &before.node[..],
                        "original nodes kept as they were"
                    );
                    for init in &before.initializer {
                        assert!(
                            after.initializer.contains(init),
                            "initializer {} kept",
                            init.name()
                        );
                    }
                } else {
                    let scans = after.node.iter().filter(|n| n.op_type() == "Scan").count();
                    let layers = if fixture == "small_untied" { 3 } else { 2 };
                    assert_eq!(
                        scans,
                        2 * layers,
                        "{fixture}{exporter}: one forward and one backward Scan per layer"
                    );
                    assert!(
                        after.node.len() < unrolled_nodes,
                        "{fixture}{exporter}: {scan:?} graph is smaller than the unrolled one"
                    );
                }
                for node in &after.node {
                    assert!(
                        matches!(node.domain(), "" | "ai.onnx"),
                        "{fixture}{exporter}: node {} uses domain {}",
                        node.name(),
                        node.domain()
                    );
                }
                let names: Vec<&str> = after.output.iter().map(|o| o.name()).collect();
                assert_eq!(
                    &names[1..],
                    [
                        "relevance",
                        "relevance_target_logit",
                        "relevance_bias",
                        "relevance_embedding",
                        "relevance_layers"
                    ]
                );
                for output in &after.output[1..] {
                    let Some(type_proto::Value::TensorType(t)) =
                        output.r#type.as_ref().and_then(|t| t.value.as_ref())
                    else {
                        panic!("untyped output")
                    };
                    assert_eq!(t.elem_type(), 1, "relevance outputs are float32");
                    assert!(
                        t.shape.as_ref().is_some_and(|s| !s.dim.is_empty()),
                        "output {} has a shape",
                        output.name()
                    );
                }
                let keys: Vec<&str> = compiled.metadata_props.iter().map(|p| p.key()).collect();
                for key in [
                    "mambalrp.version",
                    "mambalrp.rules",
                    "mambalrp.target",
                    "mambalrp.sites",
                    "mambalrp.scan",
                ] {
                    assert!(keys.contains(&key), "metadata {key} missing");
                }
                for prop in &model.metadata_props {
                    assert!(
                        compiled.metadata_props.contains(prop),
                        "original metadata kept"
                    );
                }
            }
        }
    }
}

#[test]
fn target_input_explains_the_requested_class() {
    let reference = Reference::load("tiny_convbias");
    for exporter in EXPORTERS {
        let model = load("tiny_convbias", exporter);
        let options = Options {
            target: TargetMode::Input,
            ..Options::default()
        };
        let compiled = compile(&model, &options).unwrap().model;
        let mut inputs = reference.inputs();
        // The reference target (argmax) reproduces the reference relevance...
        inputs.push(("lrp_target".into(), reference.get("target").clone()));
        let outputs = run(&compiled, &inputs);
        let err = relative_error(
            output(&outputs, "relevance"),
            &reference.f32("mambalrp_relevance"),
        );
        assert!(
            err <= 1e-5,
            "relevance for the given target off by {err:.2e}"
        );
        // ...and another class is explained with its own logit, still conserving.
        let other = Tensor::I64(ndarray::arr1(&[3i64, 17]).into_dyn());
        inputs.pop();
        inputs.push(("lrp_target".into(), other));
        let outputs = run(&compiled, &inputs);
        let logits = output(&outputs, "logits");
        let explained = output(&outputs, "relevance_target_logit");
        assert_eq!(explained[[0]], logits[[0, 7, 3]]);
        assert_eq!(explained[[1]], logits[[1, 7, 17]]);
        for sample in mambalrp::verify::conservation(&outputs).unwrap() {
            assert!(sample.relative_residual <= 1e-5, "{sample:?}");
        }
    }
}

//! Every kind of bad input gets a clear error naming the file (and the node, op or tensor), exit
//! code 2, no panic, no output file, and the input left as it was.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mambalrp::onnx::proto::{ModelProto, NodeProto};
use prost::Message;

struct Refusal {
    message: String,
}

/// Runs the compiler on `model` and checks everything a refusal must satisfy.
fn refuse(model: &Path, extra: &[&str]) -> Refusal {
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("out.onnx");
    let before = std::fs::read(model).ok();
    let result = Command::new(env!("CARGO_BIN_EXE_mambalrp-compile"))
        .arg(model)
        .arg("-o")
        .arg(&output)
        .args(extra)
        .output()
        .unwrap();
    let message = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(result.status.code(), Some(2), "expected exit 2: {message}");
    assert!(!message.contains("panicked"), "panic: {message}");
    assert!(!output.exists(), "an output file was left behind");
    assert_eq!(
        std::fs::read_dir(out_dir.path()).unwrap().count(),
        0,
        "temporary files were left behind"
    );
    assert_eq!(std::fs::read(model).ok(), before, "the input changed");
    let name = model.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        message.contains(&name),
        "the message must name the file {name}: {message}"
    );
    Refusal { message }
}

impl Refusal {
    fn says(&self, parts: &[&str]) {
        for part in parts {
            assert!(
                self.message.contains(part),
                "expected '{part}' in: {}",
                self.message
            );
        }
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn write_model(dir: &Path, name: &str, model: &ModelProto) -> PathBuf {
    write(dir, name, &model.encode_to_vec())
}

#[test]
fn unreadable_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    refuse(&write(dir.path(), "empty.onnx", b""), &[]).says(&["is empty"]);
    let mut state = 12345u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 56) as u8
        })
        .collect();
    refuse(&write(dir.path(), "noise.onnx", &noise), &[]);
    let full = std::fs::read(model_path("tiny_convbias", "")).unwrap();
    refuse(
        &write(dir.path(), "truncated.onnx", &full[..full.len() / 2]),
        &[],
    );
    refuse(
        &write(
            dir.path(),
            "notes.txt",
            b"this is a text file, not a model\n",
        ),
        &[],
    );
    refuse(&dir.path().join("does_not_exist.onnx"), &[]).says(&["cannot read"]);
}

#[test]
fn protobufs_that_are_not_models_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tensor =
        mambalrp::onnx::Tensor::F32(ndarray::Array1::<f32>::ones(16).into_dyn()).to_proto("w");
    refuse(
        &write(dir.path(), "tensor.onnx", &tensor.encode_to_vec()),
        &[],
    );
    let no_graph = ModelProto {
        ir_version: Some(8),
        producer_name: Some("test".into()),
        ..Default::default()
    };
    refuse(&write_model(dir.path(), "no_graph.onnx", &no_graph), &[]).says(&["no graph"]);
}

#[test]
fn versions_beyond_support_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load("tiny_zerobias", "");
    model.opset_import[0].version = Some(30);
    refuse(&write_model(dir.path(), "opset30.onnx", &model), &[]).says(&["opset 30"]);
    let mut model = load("tiny_zerobias", "");
    model.ir_version = Some(99);
    refuse(&write_model(dir.path(), "ir99.onnx", &model), &[]).says(&["IR version 99"]);
}

/// Puts `op` (a unary op) between block 0's out_proj output and the residual Add.
fn insert_unary_on_path(model: &mut ModelProto, op: &str) -> String {
    let graph = model.graph.as_mut().unwrap();
    let add = graph
        .node
        .iter()
        .position(|n| {
            n.op_type() == "Add"
                && n.input
                    .iter()
                    .any(|i| i.contains("out_proj") || i.starts_with("linear"))
        })
        .unwrap_or_else(|| {
            // The residual Add is the one after the out_proj MatMul: find it structurally.
            let matmuls: Vec<String> = graph
                .node
                .iter()
                .filter(|n| n.op_type() == "MatMul")
                .map(|n| n.output[0].clone())
                .collect();
            graph
                .node
                .iter()
                .position(|n| n.op_type() == "Add" && n.input.iter().any(|i| matmuls.contains(i)))
                .unwrap()
        });
    let slot = 1;
    let original = graph.node[add].input[slot].clone();
    let name = format!("inserted_{op}");
    graph.node.insert(
        add,
        NodeProto {
            name: Some(name.clone()),
            op_type: Some(op.into()),
            input: vec![original],
            output: vec![format!("{name}_out")],
            ..Default::default()
        },
    );
    graph.node[add + 1].input[slot] = format!("{name}_out");
    name
}

#[test]
fn ops_without_rules_on_the_relevance_path_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load("tiny_zerobias", "");
    let node = insert_unary_on_path(&mut model, "Abs");
    let path = write_model(dir.path(), "with_abs.onnx", &model);
    refuse(&path, &[]).says(&[&node, "Abs", "non-linear"]);
    refuse(&path, &["--rules", "gi"]).says(&[&node, "Abs", "no vector-Jacobian rule"]);
}

#[test]
fn external_data_that_is_missing_short_or_outside_the_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model_file = dir.path().join("ext.onnx");
    mambalrp::onnx::io::save_model_with_external_data(load("tiny_zerobias", ""), &model_file)
        .unwrap();
    let data_file = dir.path().join("ext.onnx.data");
    // The untouched pair compiles (and a compiled copy can be written with external data too).
    let out = dir.path().join("compiled.onnx");
    let ok = Command::new(env!("CARGO_BIN_EXE_mambalrp-compile"))
        .arg(&model_file)
        .arg("-o")
        .arg(&out)
        .arg("--external-data")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(dir.path().join("compiled.onnx.data").exists());
    assert!(mambalrp::onnx::load_model(&out).is_ok());

    let data = std::fs::read(&data_file).unwrap();
    std::fs::write(&data_file, &data[..data.len() / 2]).unwrap();
    refuse(&model_file, &[]).says(&["fewer than offset"]);
    std::fs::remove_file(&data_file).unwrap();
    refuse(&model_file, &[]).says(&["cannot be opened"]);

    let model = ModelProto::decode(std::fs::read(&model_file).unwrap().as_slice()).unwrap();
    for (label, location) in [("parent", "../ext.onnx.data"), ("absolute", "/etc/passwd")] {
        let mut tampered = model.clone();
        for t in tampered.graph.as_mut().unwrap().initializer.iter_mut() {
            for e in t.external_data.iter_mut().filter(|e| e.key() == "location") {
                e.value = Some(location.into());
            }
        }
        let path = write_model(dir.path(), &format!("escape_{label}.onnx"), &tampered);
        refuse(&path, &[]).says(&["leaves the model's folder"]);
    }
}

#[test]
fn lying_tensors_and_absurd_shapes_are_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = load("tiny_zerobias", "");
    let graph = model.graph.as_mut().unwrap();
    let big = graph
        .initializer
        .iter_mut()
        .find(|t| t.dims.len() == 2)
        .unwrap();
    big.dims[0] *= 2;
    let name = big.name().to_string();
    refuse(&write_model(dir.path(), "lying.onnx", &model), &[]).says(&[&name, "bytes"]);

    let mut model = load("tiny_zerobias", "");
    let graph = model.graph.as_mut().unwrap();
    graph
        .initializer
        .iter_mut()
        .find(|t| t.dims.len() == 2)
        .unwrap()
        .dims = vec![1 << 40, 1 << 40];
    refuse(&write_model(dir.path(), "huge_weight.onnx", &model), &[]);

    let mut model = load("tiny_zerobias", "");
    let input = &mut model.graph.as_mut().unwrap().input[0];
    if let Some(mambalrp::onnx::proto::type_proto::Value::TensorType(t)) =
        input.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[1].value =
            Some(mambalrp::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(1 << 45));
    }
    refuse(&write_model(dir.path(), "huge_input.onnx", &model), &[]).says(&["absurd"]);
}

#[test]
fn an_unwritable_output_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = write(dir.path(), "a_file", b"x");
    let target = blocker.join("out.onnx");
    let result = Command::new(env!("CARGO_BIN_EXE_mambalrp-compile"))
        .arg(model_path("tiny_zerobias", ""))
        .arg("-o")
        .arg(&target)
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{message}");
    assert!(
        message.contains("cannot write") && message.contains("a_file/out.onnx"),
        "{message}"
    );
    assert!(!message.contains("panicked"));
}

#[test]
fn deeply_nested_subgraphs_are_refused() {
    // A chain of If/Scan-like bodies nested 300 deep: the decoder's recursion limit (100)
    // refuses it before anything walks it.
    let mut graph = mambalrp::onnx::proto::GraphProto {
        name: Some("leaf".into()),
        ..Default::default()
    };
    for depth in 0..300 {
        let attribute = mambalrp::onnx::attributes::make_graph("body", graph);
        graph = mambalrp::onnx::proto::GraphProto {
            name: Some(format!("level{depth}")),
            node: vec![NodeProto {
                op_type: Some("Scan".into()),
                attribute: vec![attribute],
                ..Default::default()
            }],
            ..Default::default()
        };
    }
    let model = ModelProto {
        ir_version: Some(8),
        graph: Some(graph),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    refuse(&write_model(dir.path(), "nested.onnx", &model), &[]).says(&["not an ONNX model"]);
}

/// transformers 5.x under the TorchScript exporter: `logits_to_keep` becomes a graph input and
/// the logits of one position, picked at run time, are gathered. The refusal names the Gather
/// and the input and says how to export instead.
#[test]
fn logits_picked_by_a_graph_input_are_refused_with_the_reason() {
    use mambalrp::ir::DType;
    use mambalrp::onnx::value_info;
    let dir = tempfile::tempdir().unwrap();
    let mut model = load("tiny_convbias", "");
    let graph = model.graph.as_mut().unwrap();
    let logits = graph.output[0].name().to_string();
    for node in graph.node.iter_mut() {
        for output in node.output.iter_mut().filter(|o| **o == logits) {
            *output = "all_logits".into();
        }
    }
    graph
        .input
        .push(value_info("logits_to_keep", DType::Int64, &[]));
    for (op, inputs, output) in [
        ("Neg", vec!["logits_to_keep"], "position"),
        ("Gather", vec!["all_logits", "position"], logits.as_str()),
    ] {
        graph.node.push(NodeProto {
            name: Some(format!("/{op}")),
            op_type: Some(op.into()),
            input: inputs.into_iter().map(String::from).collect(),
            output: vec![output.to_string()],
            attribute: if op == "Gather" {
                vec![mambalrp::onnx::attributes::make_int("axis", 1)]
            } else {
                vec![]
            },
            ..Default::default()
        });
    }
    graph.output[0] = value_info(&logits, DType::Float, &[2, 64]);
    let path = write_model(dir.path(), "logits_to_keep.onnx", &model);
    refuse(&path, &[]).says(&[
        "'/Gather'",
        "graph input 'logits_to_keep'",
        "export a forward that takes the ids alone",
    ]);
}

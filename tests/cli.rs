//! The command line as a user runs it: exit codes, files written or not, messages.
mod common;

use std::path::Path;

use common::*;
use mambalrp::onnx::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
use mambalrp::onnx::Tensor;
use prost::Message;

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn compiles_the_bundled_model_verifies_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = (dir.path().join("model_lrp.onnx"), dir.path().join("r.json"));
    let model = model_path("tiny_convbias", "");
    let result = cli(&[
        arg(&model),
        "-o",
        arg(&out),
        "--emit",
        "embedding,layers",
        "--report",
        arg(&report),
        "--explain-matches",
    ]);
    assert!(result.status.success(), "{}", text(&result));
    let printed = text(&result);
    assert!(
        printed.contains("R1 SiLU identity at '/backbone/layers.0/mixer/act/Mul'"),
        "{printed}"
    );
    assert!(printed.contains("rejected candidates"), "{printed}");
    assert!(printed.contains("conservation: OK"), "{printed}");
    let compiled = mambalrp::onnx::load_model(&out).unwrap();
    assert_eq!(compiled.graph.unwrap().output.len(), 6);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["conserved"], true);
    assert_eq!(
        json["compile"]["site_counts"],
        serde_json::json!({"gate": 2, "norm": 3, "silu": 4, "ssm": 2})
    );
    assert!(
        json["verification"]["max_relative_residual"]
            .as_f64()
            .unwrap()
            < 1e-5
    );
}

#[test]
fn gradient_times_input_compiles_without_a_conservation_claim() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gi.onnx");
    let result = cli(&[
        arg(&model_path("tiny_zerobias", "_dynamo")),
        "-o",
        arg(&out),
        "--rules",
        "gi",
    ]);
    assert!(result.status.success(), "{}", text(&result));
    assert!(text(&result).contains("conservation: not checked"));
    assert!(out.exists());
}

#[test]
fn failed_verification_exits_1_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    // No float computation conserves to exactly zero residual on every sample.
    let result = cli(&[
        arg(&model_path("tiny_convbias", "")),
        "-o",
        arg(&out),
        "--tolerance",
        "0",
    ]);
    assert_eq!(result.status.code(), Some(1), "{}", text(&result));
    assert!(text(&result).contains("conservation: FAILED"));
    assert!(!out.exists());
}

#[test]
fn verification_reads_inputs_from_npz() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let npz = dir.path().join("in.npz");
    let mut writer = ndarray_npy::NpzWriter::new(std::fs::File::create(&npz).unwrap());
    let Tensor::I64(ids) = Reference::load("small_untied").get("input_ids").clone() else {
        panic!()
    };
    writer.add_array("input_ids", &ids).unwrap();
    writer.finish().unwrap();
    let result = cli(&[
        arg(&model_path("small_untied", "")),
        "-o",
        arg(&out),
        "--input",
        arg(&npz),
    ]);
    assert!(result.status.success(), "{}", text(&result));
    let logits = Reference::load("small_untied").f32("target_logit");
    assert!(
        text(&result).contains(&format!("logit {:.6}", logits[[0]])),
        "{}",
        text(&result)
    );
}

#[test]
fn refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::copy(model_path("tiny_zerobias", ""), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let result = cli(&[arg(&model), "-o", arg(&model)]);
    assert_eq!(result.status.code(), Some(2));
    assert!(
        text(&result).contains("refusing to overwrite"),
        "{}",
        text(&result)
    );
    assert_eq!(std::fs::read(&model).unwrap(), before);
}

#[test]
fn garbage_input_is_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, out) = (dir.path().join("garbage.onnx"), dir.path().join("out.onnx"));
    std::fs::write(&bad, b"this is not a protobuf \xff\xff\xff").unwrap();
    let result = cli(&[arg(&bad), "-o", arg(&out)]);
    assert_eq!(result.status.code(), Some(2));
    assert!(text(&result).contains("garbage.onnx"), "{}", text(&result));
    assert!(!text(&result).contains("panicked"));
    assert!(!out.exists());
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: Some(format!("{op}_0")),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

#[test]
fn a_model_without_mamba_blocks_is_refused_saying_what_was_looked_for() {
    let table = Tensor::F32(ndarray::Array2::<f32>::ones((10, 4)).into_dyn()).to_proto("table");
    let weight = Tensor::F32(ndarray::Array2::<f32>::ones((4, 10)).into_dyn()).to_proto("w");
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("not_mamba".into()),
            node: vec![
                node("Gather", &["table", "input_ids"], "e"),
                node("MatMul", &["e", "w"], "h"),
                node("Relu", &["h"], "logits"),
            ],
            initializer: vec![table, weight],
            input: vec![mambalrp::emit::value_info(
                "input_ids",
                mambalrp::ir::DType::Int64,
                &[1, 4],
            )],
            output: vec![mambalrp::emit::value_info(
                "logits",
                mambalrp::ir::DType::Float,
                &[1, 4, 10],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (path, out) = (dir.path().join("mlp.onnx"), dir.path().join("out.onnx"));
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let result = cli(&[arg(&path), "-o", arg(&out)]);
    assert_eq!(result.status.code(), Some(2));
    let message = text(&result);
    assert!(
        message.contains("mlp.onnx")
            && message.contains("no Mamba block found")
            && message.contains("Softplus"),
        "{message}"
    );
    assert!(!out.exists());
}

#[test]
fn a_near_miss_is_named_and_explain_matches_lists_every_candidate_when_compiling_fails() {
    // dt_proj no longer a matrix product: the SSM rule finds no site.
    let mut model = load("tiny_convbias", "");
    for n in &mut model.graph.as_mut().unwrap().node {
        if n.op_type() == "MatMul" && n.name().contains("dt_proj") {
            n.op_type = Some("Gather".into());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, out) = (dir.path().join("broken.onnx"), dir.path().join("out.onnx"));
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let result = cli(&[
        arg(&path),
        "-o",
        arg(&out),
        "--no-verify",
        "--explain-matches",
    ]);
    assert_eq!(result.status.code(), Some(2));
    let message = text(&result);
    for expected in [
        "found 4 silu, 3 norm, 0 ssm",
        "nearest ssm candidates",
        "'/backbone/layers.0/mixer/Softplus': its input is a slice of",
        "with no dt_proj matrix product in between",
        "rejected candidates (",
        "rule sites (7):",
    ] {
        assert!(message.contains(expected), "no '{expected}' in:\n{message}");
    }
    assert!(!out.exists());
}

#[test]
fn large_model_files_are_memory_mapped_and_compile_alike() {
    // Files of 64 MiB and more are mapped instead of read; pad a bundled model past that size
    // with an unused initializer and check the compile is the same as for the small file.
    let dir = tempfile::tempdir().unwrap();
    let mut model = load("tiny_zerobias", "");
    model
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .push(mambalrp::onnx::proto::TensorProto {
            name: Some("unused_padding".into()),
            dims: vec![17 << 20],
            data_type: Some(1),
            raw_data: Some(vec![0u8; 68 << 20].into()),
            ..Default::default()
        });
    let big = dir.path().join("big.onnx");
    mambalrp::onnx::save_model_atomically(&model, &big).unwrap();
    assert!(std::fs::metadata(&big).unwrap().len() >= 64 << 20);
    let mut compiled = Vec::new();
    for (name, input) in [("small", model_path("tiny_zerobias", "")), ("big", big)] {
        let out = dir.path().join(format!("{name}_lrp.onnx"));
        let result = cli(&[arg(&input), "-o", arg(&out)]);
        assert!(result.status.success(), "{name}: {}", text(&result));
        assert!(
            text(&result).contains("conservation: OK"),
            "{}",
            text(&result)
        );
        compiled.push(mambalrp::onnx::load_model(&out).unwrap().graph.unwrap());
    }
    assert_eq!(compiled[0].node, compiled[1].node);
}

#[test]
fn chunked_scan_compiles_verifies_and_reports_its_chunk_length_and_bad_lengths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = (dir.path().join("chunked.onnx"), dir.path().join("r.json"));
    let model = model_path("tiny_convbias", "");
    let result = cli(&[
        arg(&model),
        "-o",
        arg(&out),
        "--scan",
        "chunked",
        "--chunk-len",
        "3",
        "--dynamic-seq",
        "--report",
        arg(&report),
    ]);
    assert!(result.status.success(), "{}", text(&result));
    assert!(
        text(&result).contains("conservation: OK"),
        "{}",
        text(&result)
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["compile"]["scan"], "chunked");
    assert_eq!(json["compile"]["chunk_len"], 3);
    let compiled = mambalrp::onnx::load_model(&out).unwrap();
    let scan = compiled
        .metadata_props
        .iter()
        .find(|p| p.key() == "mambalrp.scan");
    assert_eq!(scan.unwrap().value(), "chunked, 3 tokens per iteration");
    for bad in [
        vec!["--scan", "unrolled", "--chunk-len", "3"],
        vec!["--scan", "chunked", "--chunk-len", "0"],
        vec!["--scan", "fast"],
    ] {
        let out = dir.path().join("refused.onnx");
        let mut args = vec![arg(&model), "-o", arg(&out)];
        args.extend(bad.iter().copied());
        let refused = cli(&args);
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{bad:?}: {}",
            text(&refused)
        );
        assert!(!out.exists());
    }
}

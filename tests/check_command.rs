//! `mambalrp-compile check`: the conservation gate passes MambaLRP models, fails gradient x
//! input ones, and refuses bad inputs with exit code 2.
mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mambalrp::onnx::save_model_atomically;

fn compiled_to(dir: &Path, rules: &str) -> String {
    let path = dir.join(format!("tiny_convbias_{rules}.onnx"));
    save_model_atomically(
        &compile_with(&load("tiny_convbias", ""), rules, false),
        &path,
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn check_passes_mambalrp_and_fails_gradient_times_input_in_both_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let (lrp, gi) = (
        compiled_to(dir.path(), "mambalrp"),
        compiled_to(dir.path(), "gi"),
    );
    for runtime in ["ort", "tract"] {
        let pass = cli(&["check", &lrp, "--runtime", runtime]);
        println!("{}", text(&pass));
        assert_eq!(pass.status.code(), Some(0), "{}", text(&pass));
        assert!(text(&pass).contains("conservation holds on all 2 samples"));
        let fail = cli(&["check", &gi, "--runtime", runtime]);
        println!("{}", text(&fail));
        assert_eq!(fail.status.code(), Some(1), "{}", text(&fail));
        assert!(text(&fail).contains("FAIL"));
    }
}

#[test]
fn check_reads_npz_inputs_and_writes_a_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let lrp = compiled_to(dir.path(), "mambalrp");
    let npz = dir.path().join("inputs.npz");
    let reference = Reference::load("tiny_convbias");
    let mambalrp::onnx::Tensor::I64(ids) = reference.get("input_ids").clone() else {
        panic!()
    };
    let mut writer = ndarray_npy::NpzWriter::new(std::fs::File::create(&npz).unwrap());
    writer.add_array("input_ids", &ids).unwrap();
    writer.finish().unwrap();
    let report = dir.path().join("check.json");
    let out = cli(&[
        "check",
        &lrp,
        "--input",
        npz.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["passed"], true);
    let targets: Vec<i64> = json["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["target"].as_i64().unwrap())
        .collect();
    let mambalrp::onnx::Tensor::I64(expected) = reference.get("target") else {
        panic!()
    };
    assert_eq!(targets, expected.iter().copied().collect::<Vec<_>>());
}

/// Writes one bad input file's arrays.
type WriteArrays = Box<dyn Fn(&mut ndarray_npy::NpzWriter<std::fs::File>)>;

#[test]
fn check_refuses_inputs_with_wrong_names_types_shapes_or_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let lrp = compiled_to(dir.path(), "mambalrp");
    let cases: Vec<(&str, WriteArrays, &str)> = vec![
        (
            "wrong_name",
            Box::new(|w| {
                w.add_array("tokens", &ndarray::Array2::<i64>::zeros((2, 8)))
                    .unwrap()
            }),
            "'tokens' is not an input",
        ),
        (
            "wrong_dtype",
            Box::new(|w| {
                w.add_array("input_ids", &ndarray::Array2::<f32>::zeros((2, 8)))
                    .unwrap()
            }),
            "data type",
        ),
        (
            "wrong_shape",
            Box::new(|w| {
                w.add_array("input_ids", &ndarray::Array2::<i64>::zeros((2, 5)))
                    .unwrap()
            }),
            "shape [2, 5]",
        ),
        (
            "bad_token",
            Box::new(|w| {
                w.add_array(
                    "input_ids",
                    &ndarray::Array2::<i64>::from_elem((2, 8), 1000),
                )
                .unwrap()
            }),
            "token id 1000",
        ),
    ];
    for (label, write, expected) in cases {
        let npz = dir.path().join(format!("{label}.npz"));
        let mut writer = ndarray_npy::NpzWriter::new(std::fs::File::create(&npz).unwrap());
        write(&mut writer);
        writer.finish().unwrap();
        let out = cli(&[
            "check",
            &lrp,
            "--input",
            npz.to_str().unwrap(),
            "--runtime",
            "tract",
        ]);
        assert_eq!(out.status.code(), Some(2), "{label}: {}", text(&out));
        assert!(
            text(&out).contains(expected) && text(&out).contains(&format!("{label}.npz")),
            "{label}: {}",
            text(&out)
        );
        assert!(!text(&out).contains("panicked"));
    }
}

#[test]
fn check_on_an_uncompiled_model_says_so() {
    let out = cli(&[
        "check",
        model_path("tiny_zerobias", "").to_str().unwrap(),
        "--runtime",
        "tract",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("no output 'relevance'"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_missing_onnx_runtime_is_an_error_that_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let lrp = compiled_to(dir.path(), "mambalrp");
    let out = Command::new(env!("CARGO_BIN_EXE_mambalrp-compile"))
        .args(["check", &lrp, "--runtime", "ort"])
        .env(
            "ORT_DYLIB_PATH",
            dir.path().join("missing/libonnxruntime.so"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("pip install onnxruntime==1.31.1"),
        "{}",
        text(&out)
    );
}

#[test]
fn compile_can_verify_in_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.onnx");
    let out = cli(&[
        model_path("small_untied", "_dynamo").to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        "--verify-runtime",
        "ort",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("verified in onnxruntime") && text(&out).contains("conservation: OK"),
        "{}",
        text(&out)
    );
}

//! `mambalrp-compile explain`: text in through a tokenizer.json, relevance out as a terminal
//! heatmap, HTML and JSON, equal to the compiled model's own `relevance` output; and the clear
//! refusals (missing tokenizer, text too long for a static model, --target without
//! `lrp_target`, a model that is not compiled).
mod common;

use std::path::{Path, PathBuf};

use common::*;
use mambalrp::onnx::Tensor;
use mambalrp::{compile, Options};
use prost::Message;

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// tiny_convbias compiled with the given options, written to `dir`.
fn compiled(dir: &Path, name: &str, options: Options) -> PathBuf {
    let model = compile(&load("tiny_convbias", ""), &options).unwrap().model;
    let path = dir.join(name);
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

fn dynamic() -> Options {
    Options {
        dynamic_sequence: true,
        dynamic_batch: true,
        ..Options::default()
    }
}

#[test]
fn explains_texts_with_relevances_equal_to_the_models_output() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = write_word_tokenizer(dir.path());
    let model = compiled(dir.path(), "lrp.onnx", dynamic());
    let (json, html) = (dir.path().join("e.json"), dir.path().join("e.html"));
    let texts = ["w1 w5 w9 w3 w7", "w2  w2 w60"];
    let result = cli(&[
        "explain",
        arg(&model),
        "--tokenizer",
        arg(&tokenizer),
        "--text",
        texts[0],
        "--text",
        texts[1],
        "--json",
        arg(&json),
        "--html",
        arg(&html),
        "--no-color",
    ]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains("w9(") && printed.contains("explains next token 'w"),
        "{printed}"
    );

    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let entries = written.as_array().expect("an array for several texts");
    let compiled_model = mambalrp::onnx::load_model(&model).unwrap();
    for (entry, text) in entries.iter().zip(texts) {
        assert_eq!(entry["text"], text);
        let ids: Vec<i64> = entry["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let expected_ids: Vec<i64> = text
            .split_whitespace()
            .map(|w| w[1..].parse().unwrap())
            .collect();
        assert_eq!(ids, expected_ids);
        let tokens: Vec<&str> = entry["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(tokens, text.split_whitespace().collect::<Vec<_>>());
        // The same ids through the compiled model directly.
        let input = Tensor::I64(
            ndarray::Array2::from_shape_vec((1, ids.len()), ids.clone())
                .unwrap()
                .into_dyn(),
        );
        let outputs =
            mambalrp::verify::run_ort(&compiled_model, &[("input_ids".to_string(), input)])
                .expect("ONNX Runtime is needed for this test");
        let relevance = output(&outputs, "relevance");
        for (ours, theirs) in entry["relevance"]
            .as_array()
            .unwrap()
            .iter()
            .zip(relevance.iter())
        {
            let ours = ours.as_f64().unwrap() as f32;
            assert!(
                (ours - theirs).abs() <= 1e-5 * theirs.abs().max(1.0),
                "{ours} vs {theirs}"
            );
        }
        let logit = entry["logit"].as_f64().unwrap();
        assert!((logit as f32 - output(&outputs, "relevance_target_logit")[0]).abs() <= 1e-5);
        assert!(entry["residual"].as_f64().unwrap().abs() <= 1e-5 * logit.abs().max(1.0));
        assert_eq!(
            entry["target_token"].as_str().unwrap(),
            format!("w{}", entry["target"].as_i64().unwrap())
        );
    }

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    for word in ["w1", "w60", "relevance", "class=\"legend\""] {
        assert!(page.contains(word), "no {word} in the page");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("src="),
        "the page must not fetch anything"
    );
}

#[test]
fn one_text_gives_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = write_word_tokenizer(dir.path());
    let model = compiled(dir.path(), "lrp.onnx", dynamic());
    let json = dir.path().join("one.json");
    let result = cli(&[
        "explain",
        arg(&model),
        "--tokenizer",
        arg(&tokenizer),
        "--text",
        "w4 w8",
        "--json",
        arg(&json),
    ]);
    assert_eq!(result.status.code(), Some(0), "{}", text(&result));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(written.is_object(), "{written}");
    assert_eq!(written["ids"], serde_json::json!([4, 8]));
}

#[test]
fn bad_inputs_are_refused_with_exit_2_and_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = write_word_tokenizer(dir.path());
    let dynamic_model = compiled(dir.path(), "dynamic.onnx", dynamic());
    let static_model = compiled(dir.path(), "static.onnx", Options::default());
    // Chunks of 2, at most 8 tokens (traced at 8).
    let bounded_model = compiled(
        dir.path(),
        "bounded.onnx",
        Options {
            scan: ScanForm::Parallel,
            chunk_len: Some(2),
            max_seq_len: Some(8),
            ..dynamic()
        },
    );
    let original = model_path("tiny_convbias", "");
    let missing = dir.path().join("missing.json");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                arg(&dynamic_model),
                "--tokenizer",
                arg(&missing),
                "--text",
                "w1",
            ],
            "cannot read the tokenizer",
        ),
        (
            vec![
                arg(&dynamic_model),
                "--tokenizer",
                arg(&broken),
                "--text",
                "w1",
            ],
            "cannot read the tokenizer",
        ),
        (
            vec![
                arg(&static_model),
                "--tokenizer",
                arg(&tokenizer),
                "--text",
                "w1 w2 w3",
            ],
            "has 3 tokens, but",
        ),
        (
            vec![
                arg(&bounded_model),
                "--tokenizer",
                arg(&tokenizer),
                "--text",
                "w1 w2 w3 w4 w5 w6 w7 w8 w9",
            ],
            "has 9 tokens, but",
        ),
        (
            vec![
                arg(&dynamic_model),
                "--tokenizer",
                arg(&tokenizer),
                "--text",
                "w1",
                "--target",
                "w3",
            ],
            "--target needs a model compiled with --target input",
        ),
        (
            vec![
                arg(&original),
                "--tokenizer",
                arg(&tokenizer),
                "--text",
                "w1",
            ],
            "is not a model compiled by mambalrp",
        ),
        (
            vec![arg(&dynamic_model), "--tokenizer", arg(&tokenizer)],
            "nothing to explain",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["explain"];
        full.extend(args);
        let result = cli(&full);
        let message = text(&result);
        assert_eq!(result.status.code(), Some(2), "{full:?}: {message}");
        assert!(
            message.contains(expected),
            "{full:?}: expected '{expected}' in {message}"
        );
    }
}

#[test]
fn a_model_compiled_for_a_target_explains_the_given_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = write_word_tokenizer(dir.path());
    let options = Options {
        target: mambalrp::emit::TargetMode::Input,
        ..dynamic()
    };
    let model = compiled(dir.path(), "target.onnx", options);
    let json = dir.path().join("t.json");
    let result = cli(&[
        "explain",
        arg(&model),
        "--tokenizer",
        arg(&tokenizer),
        "--text",
        "w1 w2 w3",
        "--target",
        "w42",
        "--json",
        arg(&json),
    ]);
    assert_eq!(result.status.code(), Some(0), "{}", text(&result));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(written["target"], 42);
    assert_eq!(written["target_token"], "w42");
    assert!(written["residual"].as_f64().unwrap().abs() <= 1e-5);
}

fn keys_dir() -> PathBuf {
    fixtures_dir().join("keys")
}

fn array_f32(arrays: &[(String, Tensor)], name: &str) -> ndarray::ArrayD<f32> {
    match &arrays.iter().find(|(n, _)| n == name).unwrap().1 {
        Tensor::F32(a) => a.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

/// Mean rank (1 = most relevant) of the key tokens under the relevances in an `explain --json`.
fn mean_key_rank(explained: &serde_json::Value, key_mask: &ndarray::ArrayD<bool>) -> f64 {
    let (mut total, mut count) = (0.0, 0);
    for (n, entry) in explained.as_array().unwrap().iter().enumerate() {
        let relevance: Vec<f64> = entry["relevance"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (position, &r) in relevance.iter().enumerate() {
            if key_mask[[n, position]] {
                total += 1.0 + relevance.iter().filter(|&&other| other > r).count() as f64;
                count += 1;
            }
        }
    }
    total / count as f64
}

/// On the trained keys model (models/fixtures/keys): MambaLRP's ΔA^F beats gradient x input's
/// and a random order's, its keys rank far better, and the areas are the ones the PyTorch script
/// measured with the same definitions.
#[test]
fn on_the_trained_model_mambalrp_is_more_faithful_than_gradient_times_input_and_random() {
    let dir = tempfile::tempdir().unwrap();
    let model = mambalrp::onnx::load_model(&keys_dir().join("keys_model.onnx")).unwrap();
    let compile_to = |name: &str, rules: &str| {
        let options = Options {
            rules: rules.parse().unwrap(),
            ..Options::default()
        };
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            compile(&model, &options).unwrap().model.encode_to_vec(),
        )
        .unwrap();
        path
    };
    let (lrp, gi) = (
        compile_to("lrp.onnx", "mambalrp"),
        compile_to("gi.onnx", "gi"),
    );
    let (tokenizer, texts) = (
        keys_dir().join("tokenizer.json"),
        keys_dir().join("eval.txt"),
    );
    let (json, plot) = (
        dir.path().join("evaluation.json"),
        dir.path().join("curves.svg"),
    );
    let result = cli(&[
        "evaluate",
        arg(&lrp),
        "--compare",
        arg(&gi),
        "--texts",
        arg(&texts),
        "--tokenizer",
        arg(&tokenizer),
        "--json",
        arg(&json),
        "--plot",
        arg(&plot),
    ]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(0), "{printed}");
    println!("{printed}");
    let evaluation: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let delta = |i: usize| evaluation["methods"][i]["delta_af"].as_f64().unwrap();
    let (lrp_delta, gi_delta, random_delta) = (delta(0), delta(1), delta(2));
    assert!(
        lrp_delta > gi_delta + 2.0 && lrp_delta > random_delta + 5.0,
        "dA^F: MambaLRP {lrp_delta}, GI {gi_delta}, random {random_delta}"
    );
    // The same definitions as models/train_keys_model.py, whose curves eval.npz stores.
    let reference = mambalrp::verify::load_npz(&keys_dir().join("eval.npz")).unwrap();
    for (i, method) in [(0, "mambalrp"), (1, "gi")] {
        let morf = array_f32(&reference, &format!("curve_{method}_morf"));
        let lerf = array_f32(&reference, &format!("curve_{method}_lerf"));
        let expected = lerf.mean().unwrap() - morf.mean().unwrap();
        assert!(
            (delta(i) - expected as f64).abs() <= 0.05,
            "{method}: dA^F {} against {expected} in PyTorch",
            delta(i)
        );
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("MoRF") && svg.contains("LeRF"));

    // The key words rank near the top under MambaLRP, not under gradient x input.
    let Tensor::Bool(key_mask) = &reference.iter().find(|(n, _)| n == "key_mask").unwrap().1 else {
        panic!("key_mask is boolean")
    };
    let mut ranks = Vec::new();
    for model in [&lrp, &gi] {
        let out = dir.path().join("explained.json");
        let result = cli(&[
            "explain",
            arg(model),
            "--tokenizer",
            arg(&tokenizer),
            "--texts",
            arg(&texts),
            "--json",
            arg(&out),
        ]);
        assert_eq!(result.status.code(), Some(0), "{}", text(&result));
        let explained: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        ranks.push(mean_key_rank(&explained, key_mask));
    }
    println!(
        "mean key rank: MambaLRP {:.2}, GI {:.2} (of 32 positions)",
        ranks[0], ranks[1]
    );
    assert!(
        ranks[0] < 4.0 && ranks[1] > 2.0 * ranks[0],
        "key ranks {ranks:?}"
    );
}

#[test]
fn evaluate_refuses_what_it_cannot_measure() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = write_word_tokenizer(dir.path());
    let target_model = compiled(
        dir.path(),
        "target.onnx",
        Options {
            target: mambalrp::emit::TargetMode::Input,
            ..dynamic()
        },
    );
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, "w1 w2 w3\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                arg(&target_model),
                "--texts",
                arg(&texts),
                "--tokenizer",
                arg(&tokenizer),
                "--flip-id",
                "0",
            ],
            "evaluate needs a model that explains its own prediction",
        ),
        (
            vec![arg(&target_model), "--texts", arg(&texts), "--flip-id", "0"],
            "--texts needs --tokenizer",
        ),
        (
            vec![arg(&target_model), "--flip-id", "0"],
            "nothing to evaluate",
        ),
        (
            vec![
                arg(&target_model),
                "--texts",
                arg(&texts),
                "--tokenizer",
                arg(&tokenizer),
            ],
            "--flip-id",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["evaluate"];
        full.extend(args);
        let result = cli(&full);
        let message = text(&result);
        assert_eq!(result.status.code(), Some(2), "{full:?}: {message}");
        assert!(
            message.contains(expected),
            "{full:?}: expected '{expected}' in {message}"
        );
    }
}

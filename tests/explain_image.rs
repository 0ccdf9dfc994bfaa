//! `mambalrp-compile explain --image` and `evaluate --image(s)` on the compiled Vision Mamba
//! fixture, through the real binary and ONNX Runtime (and tract): the heatmap PNG, the JSON
//! report against the PyTorch reference relevances, the size checks of `--resize none`, the
//! refusal of a text model, and patch flipping's curves.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use mambalrp::onnx::Tensor;
use serde_json::Value;

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `fixture` compiled by the binary with its defaults, into `dir`.
fn compiled(dir: &Path, fixture: &str) -> PathBuf {
    let out = dir.join(format!("{fixture}_lrp.onnx"));
    let result = cli(&[arg(&model_path(fixture, "")), "-o", arg(&out)]);
    assert_eq!(result.status.code(), Some(0), "{}", text(&result));
    out
}

fn sample() -> PathBuf {
    fixtures_dir().join("vim_sample.png")
}

/// An RGB PNG of the given size with a smooth, deterministic pattern.
fn write_png(path: &Path, width: u32, height: u32, seed: u32) {
    let data: Vec<u8> = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .flat_map(|(x, y)| {
            (0..3).map(move |c| ((x * (3 + c + seed) + y * (5 + 2 * c) + 40 * seed) % 256) as u8)
        })
        .collect();
    let mut encoder = png::Encoder::new(
        std::io::BufWriter::new(std::fs::File::create(path).unwrap()),
        width,
        height,
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&data).unwrap();
}

/// An RGB(A) PNG as (width, height, RGB bytes).
fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("heatmap colour type {other:?}"),
    };
    let rgb = buffer[..info.buffer_size()]
        .chunks(channels)
        .flat_map(|p| p[..3].to_vec())
        .collect();
    (info.width, info.height, rgb)
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{value} is not an array"))
        .iter()
        .flat_map(|v| match v.as_array() {
            Some(row) => row.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            None => vec![v.as_f64().unwrap() as f32],
        })
        .collect()
}

/// max |a - b| / max |b|
fn relative(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "lengths differ");
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn argmax(values: &[f32]) -> usize {
    (0..values.len())
        .max_by(|&a, &b| values[a].total_cmp(&values[b]))
        .unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The sample PNG under the reference's preprocessing through `runtime`: the report and its
/// numbers against PyTorch's.
fn explain_sample(runtime: &str) -> (Value, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let model = compiled(dir.path(), "vim_tiny");
    let (json, heatmap) = (dir.path().join("e.json"), dir.path().join("heat.png"));
    let result = cli(&[
        "explain",
        arg(&model),
        "--image",
        arg(&sample()),
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.5,0.5,0.5",
        "--resize",
        "none",
        "--runtime",
        runtime,
        "--heatmap",
        arg(&heatmap),
        "--json",
        arg(&json),
        "--no-color",
    ]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(0), "{printed}");
    let report = read_json(&json);
    let reference = Reference::load("vim_tiny");
    let Tensor::I64(target) = reference.get("target_png") else {
        panic!("target_png is not int64")
    };
    assert_eq!(report["target"].as_i64().unwrap(), target[0]);
    assert!(
        printed.contains(&format!("class {}", target[0])) && printed.contains("residual"),
        "{printed}"
    );

    let patches = floats(&report["patches"]);
    let expected = reference.f32("relevance_patches_png");
    let error = relative(&patches, expected.as_slice().unwrap());
    assert!(
        error <= 1e-4,
        "patch relevance off by {error:.2e} (relative)"
    );
    let tokens = floats(&report["tokens"]);
    let expected = reference.f32("relevance_tokens_png");
    let error = relative(&tokens, expected.as_slice().unwrap());
    assert!(
        error <= 1e-4,
        "token relevance off by {error:.2e} (relative)"
    );
    assert_eq!(
        report["class_token"].as_u64(),
        Some(8),
        "Vim's middle token"
    );

    // The pixel relevance summed per 8x8 block, against PyTorch's pixels summed the same way.
    let pixels = reference.f32("relevance_pixels_png");
    let blocks: Vec<f32> = (0..16)
        .map(|p| {
            let (r, c) = (p / 4, p % 4);
            pixels
                .slice(ndarray::s![0, .., r * 8..r * 8 + 8, c * 8..c * 8 + 8])
                .sum()
        })
        .collect();
    let pixel_patches = floats(&report["pixel_patches"]);
    let error = relative(&pixel_patches, &blocks);
    assert!(
        error <= 1e-4,
        "pixel relevance per patch off by {error:.2e}"
    );

    let logits = reference.f32("logits_png");
    let logit = report["logit"].as_f64().unwrap() as f32;
    assert!((logit - logits[[0, target[0] as usize]]).abs() <= 1e-4 * logit.abs().max(1.0));
    let (bias, sum) = (
        report["bias"].as_f64().unwrap() as f32,
        report["relevance_sum"].as_f64().unwrap() as f32,
    );
    let residual = report["residual"].as_f64().unwrap() as f32;
    assert!((logit - sum - bias - residual).abs() <= 1e-5 * logit.abs().max(1.0));
    assert!(
        residual.abs() <= 1e-4 * logit.abs().max(1.0),
        "relevance is not conserved: residual {residual}"
    );
    (report, heatmap, dir)
}

#[test]
fn explains_the_sample_image_as_pytorch_does_with_a_heatmap_whose_hottest_patch_is_the_most_relevant(
) {
    let (report, heatmap, _dir) = explain_sample("ort");
    assert_eq!(report["heatmap"].as_str(), Some(arg(&heatmap)));
    let (width, height, rgb) = read_png(&heatmap);
    // Default scale: the smallest factor making the short side at least 256 pixels.
    let scale = 8;
    assert_eq!((width, height), (32 * scale, 32 * scale));
    // Red minus blue is proportional to the pixel relevance: the reddest block is the patch
    // with the largest summed pixel relevance.
    let block = (8 * scale) as usize;
    let redness: Vec<f32> = (0..16)
        .map(|p| {
            let (r, c) = (p / 4, p % 4);
            let mut total = 0.0;
            for y in r * block..(r + 1) * block {
                for x in c * block..(c + 1) * block {
                    let at = 3 * (y * width as usize + x);
                    total += rgb[at] as f32 - rgb[at + 2] as f32;
                }
            }
            total / (block * block) as f32
        })
        .collect();
    let pixel_patches = floats(&report["pixel_patches"]);
    assert_eq!(
        argmax(&redness),
        argmax(&pixel_patches),
        "redness {redness:?} vs relevance {pixel_patches:?}"
    );
    // And a pixel's block is uniform: nearest-neighbour upscaling.
    assert_eq!(rgb[0..3], rgb[3 * (scale as usize - 1)..3 * scale as usize]);
}

#[test]
fn tract_explains_the_sample_image_as_onnx_runtime_does() {
    explain_sample("tract");
}

#[test]
fn resizes_a_larger_image_by_default_and_refuses_it_with_resize_none() {
    let dir = tempfile::tempdir().unwrap();
    let model = compiled(dir.path(), "vim_tiny");
    let image = dir.path().join("big.png");
    write_png(&image, 64, 64, 1);
    let (json, heatmaps) = (dir.path().join("big.json"), dir.path().join("heat"));
    let result = cli(&[
        "explain",
        arg(&model),
        "--image",
        arg(&image),
        "--json",
        arg(&json),
        "--heatmap-dir",
        arg(&heatmaps),
        "--scale",
        "3",
    ]);
    assert_eq!(result.status.code(), Some(0), "{}", text(&result));
    let report = read_json(&json);
    assert_eq!(report["original_size"], serde_json::json!([64, 64]));
    assert_eq!(
        (report["height"].as_u64(), report["width"].as_u64()),
        (Some(32), Some(32))
    );
    assert_eq!(report["preprocessing"]["resize"], "bilinear");
    assert_eq!(
        floats(&report["preprocessing"]["mean"]),
        [0.485f32, 0.456, 0.406]
    );
    let (width, height, _) = read_png(&heatmaps.join("big_relevance.png"));
    assert_eq!((width, height), (96, 96));
    let residual = report["residual"].as_f64().unwrap();
    assert!(residual.abs() <= 1e-4 * report["logit"].as_f64().unwrap().abs().max(1.0));

    let (json, heatmap) = (dir.path().join("none.json"), dir.path().join("none.png"));
    let result = cli(&[
        "explain",
        arg(&model),
        "--image",
        arg(&image),
        "--resize",
        "none",
        "--json",
        arg(&json),
        "--heatmap",
        arg(&heatmap),
    ]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(2), "{printed}");
    assert!(
        printed.contains("big.png") && printed.contains("64x64") && printed.contains("32x32"),
        "{printed}"
    );
    assert!(!json.exists() && !heatmap.exists(), "nothing is written");
}

#[test]
fn refuses_images_for_a_text_model_and_texts_for_an_image_model() {
    let dir = tempfile::tempdir().unwrap();
    let text_model = compiled(dir.path(), "tiny_zerobias");
    let result = cli(&["explain", arg(&text_model), "--image", arg(&sample())]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(2), "{printed}");
    assert!(
        printed.contains("not images") && printed.contains("mambalrp.source"),
        "{printed}"
    );

    let image_model = compiled(dir.path(), "vim_tiny");
    let tokenizer = write_word_tokenizer(dir.path());
    let result = cli(&[
        "explain",
        arg(&image_model),
        "--tokenizer",
        arg(&tokenizer),
        "--text",
        "w1 w2",
    ]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(2), "{printed}");
    assert!(
        printed.contains("is an image model") && printed.contains("--image"),
        "{printed}"
    );

    let result = cli(&[
        "explain",
        arg(&image_model),
        "--image",
        arg(&sample()),
        "--text",
        "w1 w2",
    ]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(2), "{printed}");
    assert!(printed.contains("cannot be used with"), "{printed}");

    let result = cli(&["evaluate", arg(&image_model), "--flip-id", "0"]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(2), "{printed}");
    assert!(
        printed.contains("is an image model") && printed.contains("--images DIR"),
        "{printed}"
    );
    let result = cli(&["evaluate", arg(&text_model), "--image", arg(&sample())]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(2), "{printed}");
    assert!(printed.contains("not images"), "{printed}");
}

#[test]
fn patch_flipping_tracks_the_explained_logit_from_the_unflipped_image() {
    let dir = tempfile::tempdir().unwrap();
    let model = compiled(dir.path(), "vim_tiny");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let paths: Vec<PathBuf> = (0..3)
        .map(|n| {
            let path = images.join(format!("img{n}.png"));
            write_png(&path, 32, 32, n + 2);
            path
        })
        .collect();
    // A file that is not a PNG is passed over.
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let (json, plot) = (dir.path().join("flip.json"), dir.path().join("flip.svg"));
    let result = cli(&[
        "evaluate",
        arg(&model),
        "--images",
        arg(&images),
        "--json",
        arg(&json),
        "--plot",
        arg(&plot),
    ]);
    let printed = text(&result);
    assert_eq!(result.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains("patch flipping over 3 image(s)")
            && printed.contains("A_MoRF")
            && printed.contains("random"),
        "{printed}"
    );
    assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"));

    // The unflipped logits, from explain on the same images.
    let explained = dir.path().join("explained.json");
    let mut args = vec!["explain", arg(&model), "--json", arg(&explained)];
    for path in &paths {
        args.extend(["--image", arg(path)]);
    }
    let result = cli(&args);
    assert_eq!(result.status.code(), Some(0), "{}", text(&result));
    let logits: Vec<f32> = read_json(&explained)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["logit"].as_f64().unwrap() as f32)
        .collect();
    let unflipped = logits.iter().sum::<f32>() / logits.len() as f32;

    let report = read_json(&json);
    assert_eq!(report["patches"].as_u64(), Some(16));
    assert_eq!(report["images"].as_array().unwrap().len(), 3);
    let methods = report["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2, "the model and the random baseline");
    let all_flipped = floats(&methods[0]["mean_morf"])[16];
    for method in methods {
        let (morf, lerf) = (floats(&method["mean_morf"]), floats(&method["mean_lerf"]));
        assert_eq!((morf.len(), lerf.len()), (17, 17), "P + 1 points per curve");
        for curve in [&morf, &lerf] {
            assert!(
                (curve[0] - unflipped).abs() <= 1e-4 * unflipped.abs().max(1.0),
                "{} starts at {} instead of the unflipped {unflipped}",
                method["method"],
                curve[0]
            );
            // Every order ends at the same image: all patches at the baseline.
            assert!((curve[16] - all_flipped).abs() <= 1e-4 * all_flipped.abs().max(1.0));
        }
        let (area_morf, area_lerf) = (
            method["area_morf"].as_f64().unwrap() as f32,
            method["area_lerf"].as_f64().unwrap() as f32,
        );
        let mean = |c: &[f32]| c.iter().sum::<f32>() / c.len() as f32;
        assert!((area_morf - mean(&morf)).abs() <= 1e-4);
        assert!((area_lerf - mean(&lerf)).abs() <= 1e-4);
        let delta = method["delta_af"].as_f64().unwrap() as f32;
        assert!(delta.is_finite());
        assert!((delta - (area_lerf - area_morf)).abs() <= 1e-4, "{method}");
    }
}

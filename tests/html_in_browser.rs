//! The `explain --html` page in a real browser: Debian's Chromium, headless, opens the written
//! page written for two texts of the bundled trained model (models/fixtures/keys) from disk,
//! dumps its DOM and takes a screenshot; the test checks that every token was
//! parsed as a heatmap span and painted in its own colour, and that text was drawn.
//! Chromium is required: scripts/test.sh installs it (`apt-get install chromium`); without it
//! this test fails, it never skips.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mambalrp::{compile, Options};
use prost::Message;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 700;

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The browser: `$MAMBALRP_CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("MAMBALRP_CHROMIUM") {
        return PathBuf::from(path);
    }
    for name in ["chromium", "chromium-browser"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
        {
            let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !found.is_empty() {
                return PathBuf::from(found);
            }
        }
    }
    panic!(
        "this test needs Chromium (Debian's package `chromium`): not found on the PATH and \
         MAMBALRP_CHROMIUM is not set; `apt-get install -y --no-install-recommends chromium` \
         (scripts/test.sh does it)"
    );
}

/// Runs headless Chromium on `page` with the extra arguments; returns stdout.
fn browse(profile: &Path, page: &Path, extra: &[String]) -> String {
    let url = format!("file://{}", page.display());
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url)
        .output()
        .expect("Chromium starts");
    assert!(
        out.status.success(),
        "Chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `rgb(r,g,b)` colours of the token spans in document order, with their text.
fn token_spans(dom: &str) -> Vec<(Rgb, String)> {
    let mut spans = Vec::new();
    for piece in dom.split("<span class=\"token\"").skip(1) {
        let colour = piece
            .split("rgb(")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .expect("a token span has a background colour");
        let c: Vec<u8> = colour
            .split(',')
            .map(|v| v.trim().parse().unwrap())
            .collect();
        let text = piece
            .split_once('>')
            .and_then(|(_, rest)| rest.split_once("</span>"))
            .map(|(t, _)| t.to_string())
            .expect("a closed token span");
        spans.push(((c[0], c[1], c[2]), text));
    }
    spans
}

type Rgb = (u8, u8, u8);

/// Pixel counts per colour of an RGB(A) PNG screenshot, with its size.
fn colours(png_path: &Path) -> ((u32, u32), HashMap<Rgb, usize>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).expect("Chromium wrote the screenshot"),
    ));
    let mut reader = decoder.read_info().expect("a PNG screenshot");
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).expect("PNG pixels");
    let channels = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let mut counts = HashMap::new();
    for px in buf[..frame.buffer_size()].chunks(channels) {
        *counts.entry((px[0], px[1], px[2])).or_insert(0) += 1;
    }
    ((frame.width, frame.height), counts)
}

#[test]
fn the_html_heatmap_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    // The bundled trained model (models/fixtures/keys), its tokenizer and two of its texts.
    let keys = fixtures_dir().join("keys");
    let tokenizer = keys.join("tokenizer.json");
    let model = compile(
        &mambalrp::onnx::load_model(&keys.join("keys_model.onnx")).unwrap(),
        &Options::default(),
    )
    .unwrap()
    .model;
    let model_path = dir.path().join("lrp.onnx");
    std::fs::write(&model_path, model.encode_to_vec()).unwrap();
    let page = dir.path().join("heatmap.html");
    let eval = std::fs::read_to_string(keys.join("eval.txt")).unwrap();
    let texts: Vec<&str> = eval.lines().take(2).collect();
    let result = cli(&[
        "explain",
        arg(&model_path),
        "--tokenizer",
        arg(&tokenizer),
        "--text",
        texts[0],
        "--text",
        texts[1],
        "--html",
        arg(&page),
        "--no-color",
    ]);
    assert_eq!(result.status.code(), Some(0), "{}", text(&result));

    // The DOM as the browser parsed it: one span per token, in order.
    let profile = dir.path().join("profile");
    let dom = browse(&profile, &page, &["--dump-dom".to_string()]);
    let spans = token_spans(&dom);
    let words: Vec<&str> = texts.iter().flat_map(|t| t.split_whitespace()).collect();
    assert_eq!(
        spans.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        words,
        "the browser's DOM does not hold the token spans:\n{dom}"
    );

    // The screenshot: the window's size, every token's own colour painted over at least a
    // token's area (a 16 px glyph box is ~300 px; the legend's gradient holds any one colour in
    // at most a column of ~16 px), and dark text drawn.
    let shot = dir.path().join("heatmap.png");
    browse(
        &profile,
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            format!("--window-size={WIDTH},{HEIGHT}"),
        ],
    );
    let ((width, height), counts) = colours(&shot);
    assert_eq!((width, height), (WIDTH, HEIGHT));
    for (colour, word) in &spans {
        if *colour == (255, 255, 255) {
            continue; // a zero relevance paints nothing visible on the white page
        }
        let painted = counts.get(colour).copied().unwrap_or(0);
        assert!(
            painted >= 60,
            "token {word} (background rgb{colour:?}) covers {painted} pixels of the screenshot"
        );
    }
    // Each text is scaled by its own largest |relevance|: the hottest token is fully saturated.
    let saturated = [(255u8, 0u8, 0u8), (0, 0, 255)];
    for text in &texts {
        let words: Vec<&str> = text.split_whitespace().collect();
        assert!(
            spans
                .iter()
                .any(|(c, w)| words.contains(&w.as_str()) && saturated.contains(c)),
            "no fully saturated token in '{text}'"
        );
    }
    let dark: usize = counts
        .iter()
        .filter(|((r, g, b), _)| (*r as u32 + *g as u32 + *b as u32) < 150)
        .map(|(_, n)| n)
        .sum();
    assert!(dark >= 500, "only {dark} dark pixels: no text was drawn");
}

//! `mambalrp-compile explain`: a compiled model's relevance for texts, as a terminal heatmap,
//! an HTML page and JSON; or for images, as heatmap PNGs, the patch grid and JSON.
use std::path::{Path, PathBuf};

use anyhow::Context;
use mambalrp::explain::{
    self, ColorMode, ExplainRuntime, Explanation, ImageExplanation, Preprocessing, Resize,
    TextTokenizer,
};

use crate::Outcome;

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// A model compiled by mambalrp-compile (from token ids, or an image model).
    model: PathBuf,
    /// The model's Hugging Face tokenizer.json (texts).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A text to explain (repeatable).
    #[arg(long = "text")]
    texts: Vec<String>,
    /// A file with one text per line.
    #[arg(long = "texts")]
    texts_file: Option<PathBuf>,
    /// Explain this next token instead of the model's prediction (needs a model compiled with
    /// --target input).
    #[arg(long)]
    target: Option<String>,
    /// A PNG image to explain with an image model (repeatable).
    #[arg(long = "image", conflicts_with_all = ["texts", "texts_file", "tokenizer", "target", "html"])]
    images: Vec<PathBuf>,
    #[command(flatten)]
    preprocessing: PreprocessingArgs,
    /// Class names, one per line (line n names class n).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Write the relevance heatmap of the one --image to this PNG.
    #[arg(long, requires = "images", conflicts_with = "heatmap_dir")]
    heatmap: Option<PathBuf>,
    /// Write each image's relevance heatmap to DIR/<stem>_relevance.png.
    #[arg(long, requires = "images")]
    heatmap_dir: Option<PathBuf>,
    /// Enlarge heatmaps by this integer factor (default: the smallest making the short side
    /// at least 256 pixels).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    scale: Option<u32>,
    /// The runtime that runs the model.
    #[arg(long, value_enum, default_value = "ort")]
    runtime: ExplainRuntime,
    /// Plain text with numbers instead of colours.
    #[arg(long)]
    no_color: bool,
    /// Write every text as a heatmap to this self-contained HTML page.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Write the explanations as JSON (an object for one --text, else an array).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// How images are brought to the model (explain and evaluate).
#[derive(clap::Args, Debug)]
pub struct PreprocessingArgs {
    /// Resize images to the model's height x width with this filter; `none`: the image must
    /// already have the model's size.
    #[arg(long, value_enum, default_value = "bilinear")]
    resize: Resize,
    /// Per-channel mean of x = (pixel / 255 - mean) / std (default: ImageNet's).
    #[arg(long, value_parser = explain::parse_triple, default_value = "0.485,0.456,0.406")]
    mean: [f32; 3],
    /// Per-channel standard deviation of x = (pixel / 255 - mean) / std (default: ImageNet's).
    #[arg(long, value_parser = explain::parse_triple, default_value = "0.229,0.224,0.225")]
    std: [f32; 3],
}

impl PreprocessingArgs {
    pub fn preprocessing(&self) -> anyhow::Result<Preprocessing> {
        Ok(Preprocessing::new(self.resize, self.mean, self.std)?)
    }
}

/// The source a compiled model explains (`tokens` or `image`).
fn source_of(model: &Path) -> anyhow::Result<String> {
    let proto = mambalrp::onnx::load_model(model)
        .with_context(|| format!("cannot read {}", model.display()))?;
    Ok(explain::model_source(&proto).to_string())
}

pub fn run(args: &ExplainArgs) -> anyhow::Result<Outcome> {
    if !args.images.is_empty() {
        return run_images(args);
    }
    let mut texts = args.texts.clone();
    if let Some(path) = &args.texts_file {
        let content = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the texts file {}", path.display()))?;
        texts.extend(
            content
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    if texts.is_empty() {
        anyhow::bail!(
            "nothing to explain: give --text TEXT (repeatable) or --texts FILE, or --image FILE.png"
        );
    }
    if source_of(&args.model)? == "image" {
        anyhow::bail!(
            "{} is an image model (metadata mambalrp.source = image): explain it with --image FILE.png",
            args.model.display()
        );
    }
    for (flag, given) in [
        ("--heatmap", args.heatmap.is_some()),
        ("--heatmap-dir", args.heatmap_dir.is_some()),
        ("--labels", args.labels.is_some()),
        ("--scale", args.scale.is_some()),
    ] {
        anyhow::ensure!(!given, "{flag} is for images (--image); texts have --html");
    }
    let tokenizer_path = args
        .tokenizer
        .as_deref()
        .context("texts need the model's tokenizer: give --tokenizer tokenizer.json")?;
    let tokenizer = TextTokenizer::from_file(tokenizer_path)?;
    let explained = explain::explain_texts(
        &args.model,
        &tokenizer,
        &texts,
        args.target.as_deref(),
        args.runtime,
    )
    .with_context(|| format!("cannot explain with {}", args.model.display()))?;
    let mode = ColorMode::detect(args.no_color);
    for e in &explained {
        print!("{}", explain::terminal(e, mode));
    }
    if let Some(path) = &args.html {
        mambalrp::onnx::io::write_atomically(path, explain::html_page(&explained).as_bytes())?;
    }
    if let Some(path) = &args.json {
        let json = if args.texts.len() == 1 && args.texts_file.is_none() {
            serde_json::to_vec_pretty(&explained[0])?
        } else {
            serde_json::to_vec_pretty::<[Explanation]>(&explained)?
        };
        mambalrp::onnx::io::write_atomically(path, &json)?;
    }
    Ok(Outcome::Passed)
}

fn run_images(args: &ExplainArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.heatmap.is_none() || args.images.len() == 1,
        "--heatmap takes one --image; for {} images give --heatmap-dir DIR",
        args.images.len()
    );
    if args.heatmap_dir.is_some() {
        // Each heatmap is named after its image's stem: two alike would overwrite each other.
        let mut stems: Vec<_> = args.images.iter().map(|p| p.file_stem()).collect();
        stems.sort();
        if let Some(pair) = stems.windows(2).find(|pair| pair[0] == pair[1]) {
            anyhow::bail!(
                "two images are named {:?}: their heatmaps in --heatmap-dir would overwrite each other",
                pair[0].unwrap_or_default()
            );
        }
    }
    let preprocessing = args.preprocessing.preprocessing()?;
    let labels = match &args.labels {
        Some(path) => explain::read_labels(path)?,
        None => vec![],
    };
    let mut explained = explain::explain_images(
        &args.model,
        &args.images,
        &preprocessing,
        &labels,
        args.runtime,
    )
    .with_context(|| format!("cannot explain with {}", args.model.display()))?;
    if let Some(dir) = &args.heatmap_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the heatmap directory {}", dir.display()))?;
    }
    for e in &mut explained {
        let target = match (&args.heatmap, &args.heatmap_dir) {
            (Some(path), _) => path.clone(),
            (None, Some(dir)) => dir.join(format!(
                "{}_relevance.png",
                e.image
                    .file_stem()
                    .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned())
            )),
            (None, None) => continue,
        };
        let scale = args
            .scale
            .unwrap_or_else(|| explain::default_scale(e.height, e.width));
        explain::write_png(&explain::overlay(&e.resized, &e.relevance, scale), &target)?;
        e.heatmap = Some(target);
    }
    let mode = ColorMode::detect(args.no_color);
    for e in &explained {
        print!("{}", explain::image_terminal(e, mode));
        if let Some(path) = &e.heatmap {
            println!("  heatmap: {}", path.display());
        }
    }
    if let Some(path) = &args.json {
        let json = if explained.len() == 1 {
            serde_json::to_vec_pretty(&explained[0])?
        } else {
            serde_json::to_vec_pretty::<[ImageExplanation]>(&explained)?
        };
        mambalrp::onnx::io::write_atomically(path, &json)?;
    }
    Ok(Outcome::Passed)
}

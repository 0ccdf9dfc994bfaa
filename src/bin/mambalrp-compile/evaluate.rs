//! `mambalrp-compile evaluate`: the token-flipping faithfulness test (ΔA^F) of compiled models,
//! and its image form, patch flipping.
use std::path::{Path, PathBuf};

use anyhow::Context;
use mambalrp::explain::TextTokenizer;
use mambalrp::explain::{evaluate, patch_flipping};

use crate::Outcome;

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// A model compiled by mambalrp-compile (from token ids or an image model; explaining its
    /// own prediction).
    model: PathBuf,
    /// Evaluate this compiled model too, on the same inputs (e.g. one compiled with --rules gi).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// A file with one text per line (needs --tokenizer).
    #[arg(long)]
    texts: Option<PathBuf>,
    /// The model's Hugging Face tokenizer.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// An .npz whose `input_ids` array [N, S] holds the inputs.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// The token id that replaces flipped tokens (default: the tokenizer's [UNK], <unk> or
    /// [PAD]).
    #[arg(long)]
    flip_id: Option<i64>,
    /// A PNG image for patch flipping with an image model (repeatable).
    #[arg(long = "image", conflicts_with_all = ["texts", "tokenizer", "inputs", "flip_id"])]
    images: Vec<PathBuf>,
    /// Every PNG in this directory (patch flipping with an image model).
    #[arg(long = "images", conflicts_with_all = ["texts", "tokenizer", "inputs", "flip_id"])]
    images_dir: Option<PathBuf>,
    /// The value flipped patches take, in the normalised space (0: the mean colour).
    #[arg(long, default_value_t = 0.0)]
    flip_value: f32,
    #[command(flatten)]
    preprocessing: crate::explain::PreprocessingArgs,
    /// Seed of the random-order baseline.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the mean MoRF / LeRF curves as an SVG chart.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn inputs(args: &EvaluateArgs, tokenizer: Option<&TextTokenizer>) -> anyhow::Result<Vec<Vec<i64>>> {
    match (&args.inputs, &args.texts, tokenizer) {
        (Some(path), _, _) => {
            let arrays = mambalrp::verify::load_npz(path)?;
            let ids = arrays
                .iter()
                .find(|(name, _)| name == "input_ids")
                .with_context(|| format!("{} has no 'input_ids' array", path.display()))?;
            let mambalrp::onnx::Tensor::I64(ids) = &ids.1 else {
                anyhow::bail!("{}: 'input_ids' is not int64", path.display());
            };
            anyhow::ensure!(
                ids.ndim() == 2,
                "{}: 'input_ids' is not [N, S]",
                path.display()
            );
            Ok(ids
                .outer_iter()
                .map(|row| row.iter().copied().collect())
                .collect())
        }
        (None, Some(path), Some(tokenizer)) => {
            let content = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the texts file {}", path.display()))?;
            content
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|text| Ok(tokenizer.ids(text)?))
                .collect()
        }
        (None, Some(_), None) => anyhow::bail!("--texts needs --tokenizer"),
        (None, None, _) => anyhow::bail!(
            "nothing to evaluate: give --texts FILE with --tokenizer, or --inputs ids.npz"
        ),
    }
}

pub fn run(args: &EvaluateArgs) -> anyhow::Result<Outcome> {
    if !args.images.is_empty() || args.images_dir.is_some() {
        return run_images(args);
    }
    let models = models(args);
    for (_, path) in &models {
        let model = mambalrp::onnx::load_model(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        anyhow::ensure!(
            mambalrp::explain::model_source(&model) != "image",
            "{} is an image model (metadata mambalrp.source = image): evaluate it with --image FILE.png or --images DIR",
            path.display()
        );
    }
    let tokenizer = args
        .tokenizer
        .as_deref()
        .map(TextTokenizer::from_file)
        .transpose()?;
    let flip_id = match (args.flip_id, &tokenizer) {
        (Some(id), _) => id,
        (None, Some(t)) => t.unknown_or_padding().context(
            "the tokenizer has no [UNK], <unk> or [PAD] token: give the flip token with --flip-id",
        )?,
        (None, None) => anyhow::bail!(
            "give the flip token with --flip-id (or a --tokenizer that has [UNK] or [PAD])"
        ),
    };
    let inputs = inputs(args, tokenizer.as_ref())?;
    let evaluation = evaluate::evaluate(&models, &inputs, flip_id, args.seed)
        .with_context(|| format!("cannot evaluate {}", args.model.display()))?;
    print!("{}", evaluate::table(&evaluation));
    if let Some(path) = &args.json {
        mambalrp::onnx::io::write_atomically(path, &serde_json::to_vec_pretty(&evaluation)?)?;
    }
    if let Some(path) = &args.plot {
        evaluate::plot_svg(&evaluation, path)?;
    }
    Ok(Outcome::Passed)
}

/// The evaluated models: the model, then --compare's.
fn models(args: &EvaluateArgs) -> Vec<(String, &Path)> {
    let mut models = vec![(method_name(&args.model), args.model.as_path())];
    if let Some(other) = &args.compare {
        models.push((method_name(other), other.as_path()));
    }
    models
}

/// The --image files, then the PNGs of --images DIR (in name order).
fn image_paths(args: &EvaluateArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = args.images.clone();
    if let Some(dir) = &args.images_dir {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the image directory {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
            .collect();
        anyhow::ensure!(!found.is_empty(), "{} holds no .png images", dir.display());
        found.sort();
        paths.extend(found);
    }
    Ok(paths)
}

fn run_images(args: &EvaluateArgs) -> anyhow::Result<Outcome> {
    let images = image_paths(args)?;
    let preprocessing = args.preprocessing.preprocessing()?;
    let evaluation = patch_flipping::evaluate_images(
        &models(args),
        &images,
        &preprocessing,
        args.flip_value,
        args.seed,
    )
    .with_context(|| format!("cannot evaluate {}", args.model.display()))?;
    print!("{}", patch_flipping::patch_table(&evaluation));
    if let Some(path) = &args.json {
        mambalrp::onnx::io::write_atomically(path, &serde_json::to_vec_pretty(&evaluation)?)?;
    }
    if let Some(path) = &args.plot {
        patch_flipping::patch_plot_svg(&evaluation, path)?;
    }
    Ok(Outcome::Passed)
}

/// A method's name in the table: the rules its model was compiled with, and the file.
fn method_name(path: &std::path::Path) -> String {
    let rules = mambalrp::onnx::load_model(path).ok().and_then(|m| {
        mambalrp::onnx::metadata::value(&m, mambalrp::onnx::metadata::RULES_KEY).map(str::to_string)
    });
    let file = path
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    match rules {
        Some(rules) => format!("{rules} ({file})"),
        None => file,
    }
}

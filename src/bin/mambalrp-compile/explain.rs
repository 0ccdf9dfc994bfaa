//! `mambalrp-compile explain`: a compiled model's relevance for texts, as a terminal heatmap,
//! an HTML page and JSON.
use std::path::PathBuf;

use anyhow::Context;
use mambalrp::explain::{self, ColorMode, ExplainRuntime, Explanation, TextTokenizer};

use crate::Outcome;

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// A model compiled by mambalrp-compile (from token ids).
    model: PathBuf,
    /// The model's Hugging Face tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
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

pub fn run(args: &ExplainArgs) -> anyhow::Result<Outcome> {
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
        anyhow::bail!("nothing to explain: give --text TEXT (repeatable) or --texts FILE");
    }
    let tokenizer = TextTokenizer::from_file(&args.tokenizer)?;
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

//! Explanations people can read: text in (through a Hugging Face `tokenizer.json`), the
//! compiled model run once per text, and the relevance of every token out, as a terminal
//! heatmap, a self-contained HTML page or JSON; and images in (PNG), relevance out as a
//! heatmap PNG, the patch grid and JSON.
pub mod evaluate;
mod heatmap;
mod image_explain;
mod image_model;
pub mod patch_flipping;
mod preprocess;
mod render;

pub use heatmap::{default_scale, overlay, write_png};
pub use image_explain::{explain_images, image_terminal, read_labels, ImageExplanation};
pub use image_model::{model_source, PatchGrid};
pub use preprocess::{parse_triple, Preprocessing, Resize};
pub use render::{html_page, terminal, ColorMode};

use std::path::Path;

use ndarray::ArrayD;

use crate::emit::{RELEVANCE, RELEVANCE_BIAS, RELEVANCE_TARGET_LOGIT, TARGET_INPUT};
use crate::error::{Error, Result};
use crate::onnx::proto::{tensor_shape_proto::dimension, type_proto, ModelProto, ValueInfoProto};
use crate::onnx::Tensor;

/// One explained text, as `explain --json` writes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    pub text: String,
    /// The tokens as the tokenizer names them, and where each lies in `text` (byte offsets).
    pub tokens: Vec<String>,
    #[serde(skip)]
    pub spans: Vec<(usize, usize)>,
    pub ids: Vec<i64>,
    pub relevance: Vec<f32>,
    /// The explained next token after the last position.
    pub target: i64,
    pub target_token: String,
    pub logit: f32,
    /// Relevance absorbed by biases and constant terms: the tokens explain `logit - bias`.
    pub bias: f32,
    /// `logit - sum(relevance) - bias`: zero up to rounding when relevance is conserved.
    pub residual: f32,
}

/// Which runtime runs the compiled model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainRuntime {
    Ort,
    Tract,
}

/// A text's token ids, their names and their byte spans in the text.
struct Tokens {
    ids: Vec<i64>,
    names: Vec<String>,
    spans: Vec<(usize, usize)>,
}

/// A tokenizer read from a Hugging Face `tokenizer.json`.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<TextTokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            Error::InvalidModel(format!(
                "cannot read the tokenizer {}: {e} (a Hugging Face tokenizer.json is expected)",
                path.display()
            ))
        })?;
        Ok(TextTokenizer { inner })
    }

    /// The tokens of `text`.
    fn encode(&self, text: &str) -> Result<Tokens> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::InvalidModel(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(Tokens {
            ids: encoding.get_ids().iter().map(|&i| i as i64).collect(),
            names: encoding.get_tokens().to_vec(),
            spans: encoding.get_offsets().to_vec(),
        })
    }

    /// The token ids of `text`.
    pub fn ids(&self, text: &str) -> Result<Vec<i64>> {
        Ok(self.encode(text)?.ids)
    }

    /// The tokenizer's unknown or padding token: what token flipping replaces tokens with.
    pub fn unknown_or_padding(&self) -> Option<i64> {
        ["[UNK]", "<unk>", "[PAD]", "<pad>"]
            .iter()
            .find_map(|t| self.token_id(t))
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    fn token_name(&self, id: i64) -> String {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
            .unwrap_or_else(|| format!("<{id}>"))
    }
}

/// What `explain` needs to know about a compiled model's interface.
struct Interface {
    ids_input: String,
    /// Static batch size, or `None` when the axis is symbolic.
    batch: Option<usize>,
    /// Static sequence length, or `None` when the axis is symbolic.
    length: Option<usize>,
    /// The longest sequence a symbolic length serves, where the model records one.
    longest: Option<usize>,
    takes_target: bool,
    logits_output: String,
}

fn dims(vi: &ValueInfoProto) -> Vec<Option<usize>> {
    match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(dimension::Value::DimValue(v)) if v > 0 => Some(v as usize),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => vec![],
    }
}

fn interface(model: &ModelProto, path: &Path) -> Result<Interface> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::InvalidModel(format!("{} holds no graph", path.display())))?;
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name()).collect();
    if ![RELEVANCE, RELEVANCE_TARGET_LOGIT, RELEVANCE_BIAS]
        .iter()
        .all(|o| outputs.contains(o))
    {
        return Err(Error::Unsupported(format!(
            "{} is not a model compiled by mambalrp (it has no '{RELEVANCE}' output); compile it first: \
             mambalrp-compile MODEL.onnx -o MODEL_lrp.onnx",
            path.display()
        )));
    }
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    let ids = graph
        .input
        .iter()
        .find(|i| i.name() != TARGET_INPUT && !initializers.contains(&i.name()))
        .ok_or_else(|| Error::Unsupported(format!("{} has no token-id input", path.display())))?;
    let shape = dims(ids);
    if shape.len() != 2 {
        return Err(Error::Unsupported(format!(
            "{}: input '{}' is not [batch, sequence] token ids (explain needs a model compiled from token ids, not embeddings)",
            path.display(),
            ids.name()
        )));
    }
    let logits_output = graph
        .output
        .iter()
        .find(|o| dims(o).len() == 3)
        .map(|o| o.name().to_string())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{} has no [batch, sequence, vocabulary] logits output",
                path.display()
            ))
        })?;
    Ok(Interface {
        ids_input: ids.name().to_string(),
        batch: shape[0],
        length: shape[1],
        longest: crate::onnx::metadata::value(
            model,
            crate::onnx::metadata::MAX_SEQUENCE_LENGTH_KEY,
        )
        .and_then(|v| v.parse().ok()),
        takes_target: graph.input.iter().any(|i| i.name() == TARGET_INPUT),
        logits_output,
    })
}

fn output<'a>(outputs: &'a [(String, ArrayD<f32>)], name: &str) -> Result<&'a ArrayD<f32>> {
    outputs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, a)| a)
        .ok_or_else(|| Error::InvalidModel(format!("the model did not output '{name}'")))
}

/// Explains each text with the compiled model at `model_path`: the relevance of every token
/// for the model's next token (or for `target`, with a model compiled with `--target input`).
pub fn explain_texts(
    model_path: &Path,
    tokenizer: &TextTokenizer,
    texts: &[String],
    target: Option<&str>,
    runtime: ExplainRuntime,
) -> Result<Vec<Explanation>> {
    let model = crate::onnx::load_model(model_path)?;
    let interface = interface(&model, model_path)?;
    let target_id = match target {
        None => None,
        Some(_) if !interface.takes_target => {
            return Err(Error::Unsupported(format!(
            "--target needs a model compiled with --target input; {} explains its own next token",
            model_path.display()
        )))
        }
        Some(token) => Some(tokenizer.token_id(token).ok_or_else(|| {
            Error::InvalidModel(format!(
                "--target '{token}' is not a token of the tokenizer"
            ))
        })?),
    };
    let mut ort_model = match runtime {
        ExplainRuntime::Ort => Some(crate::verify::OrtModel::new(&model)?),
        ExplainRuntime::Tract => None,
    };
    let mut explained = Vec::new();
    for text in texts {
        let Tokens {
            ids,
            names: tokens,
            spans,
        } = tokenizer.encode(text)?;
        if ids.is_empty() {
            return Err(Error::InvalidModel(format!("{text:?} has no tokens")));
        }
        if let Some(length) = interface.length.filter(|&l| l != ids.len()) {
            return Err(Error::Unsupported(format!(
                "{text:?} has {} tokens, but {} takes exactly {length} (compiled with a static sequence length; \
                 compile with --dynamic-seq to explain any text)",
                ids.len(),
                model_path.display()
            )));
        }
        if let Some(longest) = interface.longest.filter(|&l| l < ids.len()) {
            return Err(Error::Unsupported(format!(
                "{text:?} has {} tokens, but {} serves at most {longest} (compiled with \
                 --max-seq-len; compile again with a larger one)",
                ids.len(),
                model_path.display()
            )));
        }
        let rows = interface.batch.unwrap_or(1);
        let batch: Vec<i64> = (0..rows).flat_map(|_| ids.iter().copied()).collect();
        let mut inputs = vec![(
            interface.ids_input.clone(),
            Tensor::I64(
                ArrayD::from_shape_vec(ndarray::IxDyn(&[rows, ids.len()]), batch)
                    .expect("rows x length ids"),
            ),
        )];
        if let Some(id) = target_id {
            inputs.push((
                TARGET_INPUT.to_string(),
                Tensor::I64(ArrayD::from_elem(ndarray::IxDyn(&[rows]), id)),
            ));
        }
        let outputs = match ort_model.as_mut() {
            Some(session) => session.run(&inputs)?,
            None => crate::verify::run_tract(&model, &inputs)?,
        };
        let relevance: Vec<f32> = output(&outputs, RELEVANCE)?
            .outer_iter()
            .next()
            .map(|row| row.iter().copied().collect())
            .unwrap_or_default();
        let logit = output(&outputs, RELEVANCE_TARGET_LOGIT)?
            .iter()
            .copied()
            .next()
            .unwrap_or(0.0);
        let bias = output(&outputs, RELEVANCE_BIAS)?
            .iter()
            .copied()
            .next()
            .unwrap_or(0.0);
        let target = match target_id {
            Some(id) => id,
            None => {
                let logits = output(&outputs, &interface.logits_output)?;
                let last = logits.shape()[1] - 1;
                crate::verify::argmax(logits.slice(ndarray::s![0, last, ..])) as i64
            }
        };
        let residual = logit - relevance.iter().sum::<f32>() - bias;
        explained.push(Explanation {
            text: text.clone(),
            tokens,
            spans,
            ids,
            relevance,
            target,
            target_token: tokenizer.token_name(target),
            logit,
            bias,
            residual,
        });
    }
    Ok(explained)
}

//! A compiled image model (`mambalrp.source = image`): its interface read off the graph, and
//! batches of images run through it, filled up to a static batch size.
use std::path::Path;

use ndarray::{Array3, ArrayD, Axis};

use super::{dims, output, ExplainRuntime};
use crate::emit::{
    RELEVANCE, RELEVANCE_BIAS, RELEVANCE_PATCHES, RELEVANCE_TARGET_LOGIT, RELEVANCE_TOKENS,
    TARGET_INPUT,
};
use crate::error::{Error, Result};
use crate::onnx::metadata::SOURCE_KEY;
use crate::onnx::proto::ModelProto;
use crate::onnx::Tensor;
use crate::verify::OrtModel;

/// What the compiled model says it explains (`tokens` or `image`); `tokens` when unsaid.
pub fn model_source(model: &ModelProto) -> &str {
    crate::onnx::metadata::value(model, SOURCE_KEY).unwrap_or("tokens")
}

/// The image model's input and outputs.
pub struct ImageInterface {
    pub pixels_input: String,
    /// Static batch size, or `None` when the axis is symbolic.
    pub batch: Option<usize>,
    pub channels: usize,
    /// Static height and width, or `None` when either is symbolic (any size is taken).
    pub size: Option<(usize, usize)>,
    pub logits_output: String,
}

/// Reads the interface, with a clear refusal for a model that is not a compiled image model.
pub fn image_interface(model: &ModelProto, path: &Path) -> Result<ImageInterface> {
    let source = model_source(model);
    if source != "image" {
        return Err(Error::Unsupported(format!(
            "{} explains {source} (metadata {SOURCE_KEY} = {source}), not images; --image needs a \
             compiled image model (e.g. Vision Mamba)",
            path.display()
        )));
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::InvalidModel(format!("{} holds no graph", path.display())))?;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    let pixels = graph
        .input
        .iter()
        .filter(|i| i.name() != TARGET_INPUT && !initializers.contains(&i.name()))
        .find(|i| dims(i).len() == 4)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{} has no [batch, channels, height, width] image input",
                path.display()
            ))
        })?;
    let shape = dims(pixels);
    let channels = shape[1].ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: the channel axis of '{}' is not static",
            path.display(),
            pixels.name()
        ))
    })?;
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name()).collect();
    for needed in [
        RELEVANCE,
        RELEVANCE_TARGET_LOGIT,
        RELEVANCE_BIAS,
        RELEVANCE_PATCHES,
        RELEVANCE_TOKENS,
    ] {
        if !outputs.contains(&needed) {
            return Err(Error::Unsupported(format!(
                "{} has no '{needed}' output; compile the image model with mambalrp-compile first",
                path.display()
            )));
        }
    }
    // The original model's outputs come first; its logits are the first [batch, classes] one.
    let logits_output = graph
        .output
        .iter()
        .find(|o| !o.name().starts_with(RELEVANCE) && dims(o).len() == 2)
        .map(|o| o.name().to_string())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{} has no [batch, classes] logits output",
                path.display()
            ))
        })?;
    // A model compiled with --target input explains a given class; explain and evaluate
    // explain the model's own prediction.
    if graph.input.iter().any(|i| i.name() == TARGET_INPUT) {
        return Err(Error::Unsupported(format!(
            "{} was compiled with --target input; image explain and evaluate need a model that \
             explains its own prediction",
            path.display()
        )));
    }
    Ok(ImageInterface {
        pixels_input: pixels.name().to_string(),
        batch: shape[0],
        channels,
        size: shape[2].zip(shape[3]),
        logits_output,
    })
}

/// One image's outputs.
pub struct ImageOutputs {
    pub logits: Vec<f32>,
    /// `[channels, height, width]`.
    pub relevance: Array3<f32>,
    pub target_logit: f32,
    pub bias: f32,
    pub tokens: Vec<f32>,
    pub patches: Vec<f32>,
}

/// A compiled image model ready to run.
pub struct ImageRunner {
    model: ModelProto,
    session: Option<OrtModel>,
    pub interface: ImageInterface,
}

impl ImageRunner {
    pub fn open(path: &Path, runtime: ExplainRuntime) -> Result<ImageRunner> {
        let model = crate::onnx::load_model(path)?;
        let interface = image_interface(&model, path)?;
        let session = match runtime {
            ExplainRuntime::Ort => Some(OrtModel::new(&model)?),
            ExplainRuntime::Tract => None,
        };
        Ok(ImageRunner {
            model,
            session,
            interface,
        })
    }

    /// Runs the images (all of one size), in groups of the model's batch size when it is
    /// static (the last group filled up by repeating its last image).
    pub fn run(&mut self, images: &[Array3<f32>]) -> Result<Vec<ImageOutputs>> {
        let Some(first) = images.first() else {
            return Ok(vec![]);
        };
        let shape = first.shape().to_vec();
        let group = self.interface.batch.unwrap_or(images.len()).max(1);
        let mut results = Vec::with_capacity(images.len());
        for chunk in images.chunks(group) {
            let views: Vec<_> = (0..group)
                .map(|row| chunk[row.min(chunk.len() - 1)].view())
                .collect();
            let batch = ndarray::stack(Axis(0), &views).map_err(|e| {
                Error::InvalidModel(format!("images of different sizes ({shape:?}): {e}"))
            })?;
            let inputs = [(
                self.interface.pixels_input.clone(),
                Tensor::F32(batch.into_dyn()),
            )];
            let outputs = match self.session.as_mut() {
                Some(session) => session.run(&inputs)?,
                None => crate::verify::run_tract(&self.model, &inputs)?,
            };
            let row_of = |name: &str, row: usize| -> Result<ArrayD<f32>> {
                Ok(output(&outputs, name)?.index_axis(Axis(0), row).to_owned())
            };
            for row in 0..chunk.len() {
                let relevance = row_of(RELEVANCE, row)?
                    .into_dimensionality::<ndarray::Ix3>()
                    .map_err(|e| {
                        Error::InvalidModel(format!("'{RELEVANCE}' is not [batch, C, H, W]: {e}"))
                    })?;
                let scalar = |name: &str| -> Result<f32> {
                    row_of(name, row)?.iter().copied().next().ok_or_else(|| {
                        Error::InvalidModel(format!("the model's '{name}' is empty"))
                    })
                };
                results.push(ImageOutputs {
                    logits: row_of(&self.interface.logits_output, row)?
                        .into_raw_vec_and_offset()
                        .0,
                    relevance,
                    target_logit: scalar(RELEVANCE_TARGET_LOGIT)?,
                    bias: scalar(RELEVANCE_BIAS)?,
                    tokens: row_of(RELEVANCE_TOKENS, row)?.iter().copied().collect(),
                    patches: row_of(RELEVANCE_PATCHES, row)?.iter().copied().collect(),
                });
            }
        }
        Ok(results)
    }
}

/// The patch grid: `rows x cols = patches`, shaped like the image (square patches), and the
/// pixel block each patch covers (the Conv's stride; a remainder at the edge is never read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PatchGrid {
    pub rows: usize,
    pub cols: usize,
    pub patch_height: usize,
    pub patch_width: usize,
}

impl PatchGrid {
    pub fn new(patches: usize, height: usize, width: usize) -> Result<PatchGrid> {
        let rows = ((patches * height) as f64 / width as f64).sqrt().round() as usize;
        let fits =
            rows > 0 && patches.is_multiple_of(rows) && rows <= height && patches / rows <= width;
        if !fits {
            return Err(Error::Unsupported(format!(
                "{patches} patches do not tile a {height}x{width} image in a grid of square patches"
            )));
        }
        let cols = patches / rows;
        Ok(PatchGrid {
            rows,
            cols,
            patch_height: height / rows,
            patch_width: width / cols,
        })
    }

    /// Pixel rows and columns of patch `index` (row-major).
    pub fn block(&self, index: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (r, c) = (index / self.cols, index % self.cols);
        (
            r * self.patch_height..(r + 1) * self.patch_height,
            c * self.patch_width..(c + 1) * self.patch_width,
        )
    }
}

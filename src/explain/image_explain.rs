//! Explained images: each image through the compiled image model, its predicted class and the
//! relevance of every pixel, patch and token, for the terminal and as JSON.
use std::path::{Path, PathBuf};

use image::RgbImage;
use ndarray::Array3;

use super::heatmap::pixel_map;
use super::image_model::{ImageRunner, PatchGrid};
use super::preprocess::{prepare, Preprocessing};
use super::render::{paint, ColorMode};
use super::ExplainRuntime;
use crate::error::Result;

/// One explained image, as `explain --json` writes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageExplanation {
    pub image: PathBuf,
    /// The file's width and height.
    pub original_size: [u32; 2],
    /// The model's input height and width.
    pub height: usize,
    pub width: usize,
    pub preprocessing: Preprocessing,
    /// The explained class: the model's prediction.
    pub target: usize,
    pub label: Option<String>,
    pub logit: f32,
    /// Relevance absorbed by biases and constant terms: the pixels explain `logit - bias`.
    pub bias: f32,
    /// `logit - relevance_sum - bias`: zero up to rounding when relevance is conserved.
    pub residual: f32,
    /// The sum of the pixel relevance over channels and pixels.
    pub relevance_sum: f32,
    pub grid: PatchGrid,
    /// Relevance per patch at the patch embedding's output (`relevance_patches`), row by row.
    pub patches: Vec<Vec<f32>>,
    /// The pixel relevance summed over each patch's block and channels, row by row.
    pub pixel_patches: Vec<Vec<f32>>,
    /// Relevance per token entering the first block (`relevance_tokens`).
    pub tokens: Vec<f32>,
    /// The class token's position among `tokens` (Vision Mamba's middle class token), if the
    /// model has one.
    pub class_token: Option<usize>,
    /// Where the heatmap was written.
    pub heatmap: Option<PathBuf>,
    #[serde(skip)]
    pub relevance: Array3<f32>,
    /// The resized image, before normalisation.
    #[serde(skip)]
    pub resized: RgbImage,
}

/// The class names of a `--labels` file: one per line.
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::error::Error::InvalidModel(format!(
            "cannot read the labels file {}: {e}",
            path.display()
        ))
    })?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

fn rows(values: &[f32], grid: &PatchGrid) -> Vec<Vec<f32>> {
    values.chunks(grid.cols).map(<[f32]>::to_vec).collect()
}

/// Explains each image with the compiled image model at `model_path`: the relevance of every
/// pixel for the class the model predicts. Every image is read (and checked) before any runs.
pub fn explain_images(
    model_path: &Path,
    images: &[PathBuf],
    preprocessing: &Preprocessing,
    labels: &[String],
    runtime: ExplainRuntime,
) -> Result<Vec<ImageExplanation>> {
    let mut runner = ImageRunner::open(model_path, runtime)?;
    let (channels, size) = (runner.interface.channels, runner.interface.size);
    let prepared = images
        .iter()
        .map(|path| prepare(path, preprocessing, channels, size))
        .collect::<Result<Vec<_>>>()?;
    let mut explained = Vec::with_capacity(images.len());
    for (path, image) in images.iter().zip(prepared) {
        // One image at a time: without a static size, images may differ in size.
        let out = runner.run(std::slice::from_ref(&image.pixels))?.remove(0);
        let (height, width) = (image.pixels.shape()[1], image.pixels.shape()[2]);
        let grid = PatchGrid::new(out.patches.len(), height, width)?;
        let map = pixel_map(&out.relevance);
        let pixel_patches: Vec<f32> = (0..out.patches.len())
            .map(|p| {
                let (ys, xs) = grid.block(p);
                map.slice(ndarray::s![ys, xs]).sum()
            })
            .collect();
        let relevance_sum = out.relevance.sum();
        let target = crate::verify::argmax(out.logits.iter());
        explained.push(ImageExplanation {
            image: path.clone(),
            original_size: [image.original_size.0, image.original_size.1],
            height,
            width,
            preprocessing: preprocessing.clone(),
            target,
            label: labels.get(target).cloned(),
            logit: out.target_logit,
            bias: out.bias,
            residual: out.target_logit - relevance_sum - out.bias,
            relevance_sum,
            grid,
            patches: rows(&out.patches, &grid),
            pixel_patches: rows(&pixel_patches, &grid),
            class_token: (out.tokens.len() == out.patches.len() + 1)
                .then_some(out.patches.len() / 2),
            tokens: out.tokens,
            heatmap: None,
            relevance: out.relevance,
            resized: image.resized,
        });
    }
    Ok(explained)
}

/// One explained image for the terminal: the class, the logit's parts and the patch grid.
pub fn image_terminal(e: &ImageExplanation, mode: ColorMode) -> String {
    let label = e
        .label
        .as_ref()
        .map_or_else(String::new, |l| format!(" '{l}'"));
    let mut text = format!(
        "{}: class {}{label}: logit {:.4} = pixels {:.4} + bias {:.4}, residual {:.1e}\n  \
         patch relevance ({} x {} patches of {}x{} pixels):\n",
        e.image.display(),
        e.target,
        e.logit,
        e.relevance_sum,
        e.bias,
        e.residual,
        e.grid.rows,
        e.grid.cols,
        e.grid.patch_height,
        e.grid.patch_width
    );
    let strongest = e
        .patches
        .iter()
        .flatten()
        .fold(0.0f32, |m, r| m.max(r.abs()));
    for row in &e.patches {
        text.push_str("   ");
        for &r in row {
            let cell = format!("{r:+9.4}");
            text.push(' ');
            text.push_str(&paint(&cell, r, strongest, mode));
        }
        text.push('\n');
    }
    if let Some(position) = e.class_token {
        text.push_str(&format!(
            "  class token (position {position}): relevance {:+.4}\n",
            e.tokens[position]
        ));
    }
    text
}

//! Patch flipping: token flipping (see `evaluate`) for image models. For each image the
//! patches are replaced, every pixel and channel of the patch, by a baseline value (0 in the
//! normalised space: the mean colour) one at a time, ordered by `relevance_patches` most
//! relevant first (MoRF), least relevant first (LeRF) and at random, while the logit of the
//! class predicted on the unflipped image is tracked. A curve has P + 1 points (0..P patches
//! flipped); its area is their mean; ΔA^F = A_LeRF - A_MoRF, averaged over the images.
use std::path::{Path, PathBuf};

use ndarray::Array3;

use super::evaluate::{method_table, order, plot_curves, random_order, Accumulator, MethodScore};
use super::image_model::{ImageRunner, PatchGrid};
use super::preprocess::{prepare, Preprocessing};
use super::ExplainRuntime;
use crate::error::{Error, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PatchFlipping {
    pub images: Vec<PathBuf>,
    pub preprocessing: Preprocessing,
    /// The value flipped pixels take, in the normalised space.
    pub flip_value: f32,
    pub patches: usize,
    pub methods: Vec<MethodScore>,
}

/// The explained logit as the patches at `order` are replaced one by one (P + 1 points).
fn curve(
    runner: &mut ImageRunner,
    pixels: &Array3<f32>,
    grid: &PatchGrid,
    order: &[usize],
    target: usize,
    flip_value: f32,
) -> Result<Vec<f32>> {
    let mut images = vec![pixels.clone()];
    for &patch in order {
        let mut next = images[images.len() - 1].clone();
        let (ys, xs) = grid.block(patch);
        next.slice_mut(ndarray::s![.., ys, xs]).fill(flip_value);
        images.push(next);
    }
    Ok(runner
        .run(&images)?
        .into_iter()
        .map(|out| out.logits[target])
        .collect())
}

/// Evaluates each `(method name, compiled image model)` on the same images, plus a random
/// order (seeded) on the first model.
pub fn evaluate_images(
    models: &[(String, &Path)],
    images: &[PathBuf],
    preprocessing: &Preprocessing,
    flip_value: f32,
    seed: u64,
) -> Result<PatchFlipping> {
    if images.is_empty() {
        return Err(Error::InvalidModel("nothing to evaluate: no images".into()));
    }
    let mut methods = Vec::new();
    let mut random = Accumulator::default();
    let mut patches = 0;
    for (index, (method, path)) in models.iter().enumerate() {
        let mut runner = ImageRunner::open(path, ExplainRuntime::Ort)?;
        let (channels, size) = (runner.interface.channels, runner.interface.size);
        let mut scores = Accumulator::default();
        for (n, image_path) in images.iter().enumerate() {
            let pixels = prepare(image_path, preprocessing, channels, size)?.pixels;
            let out = runner.run(std::slice::from_ref(&pixels))?.remove(0);
            let grid = PatchGrid::new(out.patches.len(), pixels.shape()[1], pixels.shape()[2])?;
            patches = out.patches.len();
            let target = crate::verify::argmax(out.logits.iter());
            let flip = |runner: &mut ImageRunner, order: &[usize]| {
                curve(runner, &pixels, &grid, order, target, flip_value)
            };
            scores
                .morf
                .push(flip(&mut runner, &order(&out.patches, true))?);
            scores
                .lerf
                .push(flip(&mut runner, &order(&out.patches, false))?);
            if index == 0 {
                let shuffled = random_order(patches, seed.wrapping_add(n as u64));
                let reversed: Vec<usize> = shuffled.iter().rev().copied().collect();
                random.morf.push(flip(&mut runner, &shuffled)?);
                random.lerf.push(flip(&mut runner, &reversed)?);
            }
        }
        methods.push(scores.score(method));
    }
    methods.push(random.score("random"));
    Ok(PatchFlipping {
        images: images.to_vec(),
        preprocessing: preprocessing.clone(),
        flip_value,
        patches,
        methods,
    })
}

/// The table the command prints.
pub fn patch_table(evaluation: &PatchFlipping) -> String {
    let heading = format!(
        "patch flipping over {} image(s), {} patches, flipped to {} (normalised):",
        evaluation.images.len(),
        evaluation.patches,
        evaluation.flip_value
    );
    method_table(&heading, &evaluation.methods)
}

/// The mean MoRF and LeRF curves of every method as an SVG line chart.
pub fn patch_plot_svg(evaluation: &PatchFlipping, path: &Path) -> Result<()> {
    plot_curves(
        &evaluation.methods,
        "Patch flipping: explained logit",
        "patches flipped",
        path,
    )
}

//! Pixel relevance as a PNG: the relevance summed over channels, scaled by its largest |R|,
//! red for positive and blue for negative, alpha-blended over a grayscale copy of the image
//! the model saw, then enlarged by nearest neighbour so that each pixel stays a sharp block.
use std::path::Path;

use image::{ImageEncoder, RgbImage};
use ndarray::{Array2, Array3, Axis};

use crate::error::{Error, Result};

/// The smallest integer factor that makes the short side at least 256 pixels.
pub fn default_scale(height: usize, width: usize) -> u32 {
    256u32.div_ceil(height.min(width).max(1) as u32).max(1)
}

/// Relevance per pixel: the sum over channels, `[height, width]`.
pub fn pixel_map(relevance: &Array3<f32>) -> Array2<f32> {
    relevance.sum_axis(Axis(0))
}

/// The overlay: a pixel's colour is gray * (1 - a) + hue * a with a = |R| / max |R| and hue
/// pure red or blue, so that the red minus the blue channel is proportional to R.
pub fn overlay(image: &RgbImage, relevance: &Array3<f32>, scale: u32) -> RgbImage {
    let map = pixel_map(relevance);
    let strongest = map.iter().fold(0.0f32, |m, r| m.max(r.abs()));
    let (width, height) = image.dimensions();
    let scale = scale.max(1);
    RgbImage::from_fn(width * scale, height * scale, |x, y| {
        let (x, y) = (x / scale, y / scale);
        let [r, g, b] = image.get_pixel(x, y).0;
        let gray = 0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32;
        let value = if strongest > 0.0 {
            (map[[y as usize, x as usize]] / strongest).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let alpha = value.abs();
        let hue = if value >= 0.0 {
            [255.0, 0.0, 0.0]
        } else {
            [0.0, 0.0, 255.0]
        };
        image::Rgb(hue.map(|h| (gray * (1.0 - alpha) + h * alpha).round() as u8))
    })
}

/// Writes `image` as a PNG at `path` (atomically).
pub fn write_png(image: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::InvalidModel(format!("cannot encode {}: {e}", path.display())))?;
    crate::onnx::io::write_atomically(path, &bytes)
}

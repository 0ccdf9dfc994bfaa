//! Images in: a PNG read, resized to the model's height x width and normalised per channel,
//! x = (pixel / 255 - mean) / std, as the model was trained.
use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use ndarray::Array3;

use crate::error::{Error, Result};

/// How an image is brought to the model's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Bilinear (a triangle filter, widened when shrinking so that it averages, not aliases).
    Bilinear,
    Nearest,
    Lanczos3,
    /// The image must already have the model's size.
    None,
}

/// Everything done to a file before the model sees it; the JSON reports record it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Preprocessing {
    pub resize: Resize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocessing {
    /// ImageNet's statistics, which Vision Mamba is trained with.
    pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

    pub fn new(resize: Resize, mean: [f32; 3], std: [f32; 3]) -> Result<Preprocessing> {
        if let Some(bad) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::InvalidModel(format!(
                "--std {bad} is not a positive number"
            )));
        }
        if mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::InvalidModel(format!(
                "--mean {mean:?} is not finite"
            )));
        }
        Ok(Preprocessing { resize, mean, std })
    }
}

impl Default for Preprocessing {
    fn default() -> Preprocessing {
        Preprocessing {
            resize: Resize::Bilinear,
            mean: Preprocessing::IMAGENET_MEAN,
            std: Preprocessing::IMAGENET_STD,
        }
    }
}

/// One image ready for the model.
pub struct PreparedImage {
    /// The normalised pixels `[channels, height, width]`.
    pub pixels: Array3<f32>,
    /// The resized image before normalisation: what heatmaps are drawn over.
    pub resized: RgbImage,
    /// The file's own width and height.
    pub original_size: (u32, u32),
}

/// Reads `path` and prepares it for a model taking `channels` x `height` x `width` (`None`:
/// any size, the image's own).
pub fn prepare(
    path: &Path,
    preprocessing: &Preprocessing,
    channels: usize,
    size: Option<(usize, usize)>,
) -> Result<PreparedImage> {
    if channels != 1 && channels != 3 {
        return Err(Error::Unsupported(format!(
            "the model takes {channels} image channels; explain reads RGB (3) or grayscale (1) images"
        )));
    }
    let decoded = image::ImageReader::open(path)
        .map_err(|e| Error::InvalidModel(format!("cannot open {}: {e}", path.display())))?
        .with_guessed_format()
        .map_err(|e| Error::InvalidModel(format!("cannot read {}: {e}", path.display())))?
        .decode()
        .map_err(|e| {
            Error::InvalidModel(format!(
                "cannot decode {} as an image: {e} (PNG is supported)",
                path.display()
            ))
        })?;
    let image = decoded.to_rgb8();
    let original_size = image.dimensions();
    let resized = match size {
        None => image,
        Some((height, width)) if original_size == (width as u32, height as u32) => image,
        Some((height, width)) => {
            let filter = match preprocessing.resize {
                Resize::None => {
                    return Err(Error::Unsupported(format!(
                        "{} is {}x{} (width x height), but the model takes {width}x{height}; \
                         resize it or drop --resize none",
                        path.display(),
                        original_size.0,
                        original_size.1
                    )))
                }
                Resize::Bilinear => FilterType::Triangle,
                Resize::Nearest => FilterType::Nearest,
                Resize::Lanczos3 => FilterType::Lanczos3,
            };
            image::imageops::resize(&image, width as u32, height as u32, filter)
        }
    };
    let (width, height) = (resized.width() as usize, resized.height() as usize);
    let normalise =
        |value: f32, c: usize| (value / 255.0 - preprocessing.mean[c]) / preprocessing.std[c];
    let pixels = Array3::from_shape_fn((channels, height, width), |(c, y, x)| {
        let [r, g, b] = resized.get_pixel(x as u32, y as u32).0;
        if channels == 1 {
            // ITU-R BT.601 luma, as image's own grayscale conversion.
            normalise(0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32, 0)
        } else {
            normalise([r, g, b][c] as f32, c)
        }
    });
    Ok(PreparedImage {
        pixels,
        resized,
        original_size,
    })
}

/// Parses `R,G,B` (three numbers) for --mean and --std.
pub fn parse_triple(text: &str) -> std::result::Result<[f32; 3], String> {
    let values: Vec<f32> = text
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("'{text}' is not three numbers R,G,B: {e}"))?;
    <[f32; 3]>::try_from(values)
        .map_err(|v| format!("'{text}' has {} numbers; three are needed (R,G,B)", v.len()))
}

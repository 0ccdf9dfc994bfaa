//! What "unchanged" and "conserved" mean numerically. Both bounds follow from the float type
//! the model computes in, so a real-size model passes its default check while a real change
//! (a dropped bias, a perturbed weight: relative changes of 1e-3 and more) still fails.
use crate::ir::DType;

/// Unit roundoff-scale epsilon of a float type.
pub fn epsilon(dtype: DType) -> f32 {
    match dtype {
        DType::Float16 => 9.77e-4,
        DType::BFloat16 => 7.81e-3,
        DType::Double => 2.22e-16,
        _ => 1.19e-7,
    }
}

/// Default largest relative conservation residual: what the model's float type can resolve.
pub fn default_conservation_tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::Float16 => 1e-3,
        DType::BFloat16 => 1e-2,
        _ => 1e-4,
    }
}

/// Rounding units per sqrt(depth) allowed between the compiled and the original outputs.
const ROUNDING_UNITS: f32 = 2.0;

/// Default bound on |compiled - original| for an original output, relative to the output's
/// largest magnitude (at least 1): `2 * eps * sqrt(depth)`.
///
/// The compiled forward computes the same values in another order (the re-rolled scan sums
/// its steps differently, runtimes fuse the two graphs differently). Reordered float sums
/// differ by about eps * sqrt(terms) of their magnitude, and the differences of every scan
/// step and block add up: `depth` is the traced sequence length times (blocks + 1). For the
/// 130M model at 32 tokens that is 6.7e-6 relative (2.0e-4 on logits of 30), against a
/// measured reordering difference of 1.5e-5 (ONNX Runtime) to 3.2e-5 (tract).
pub fn default_output_tolerance(dtype: DType, depth: usize) -> f32 {
    ROUNDING_UNITS * epsilon(dtype) * (depth.max(1) as f32).sqrt()
}

/// The absolute bound for an output of largest magnitude `magnitude` under the relative
/// tolerance `relative`.
pub fn output_bound(relative: f32, magnitude: f32) -> f32 {
    relative * magnitude.max(1.0)
}

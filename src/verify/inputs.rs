//! Inputs for verification: deterministic generated tokens, or arrays from an `.npz` file.
use crate::ir::DType;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::NpzReader;

use crate::emit::TARGET_INPUT;
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::onnx::Tensor;

/// A fixed pseudo-random sequence (64-bit LCG), so runs are reproducible everywhere.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

/// One deterministic value per graph input: token ids below the embedding table's size, small
/// floats for float inputs, and target classes for `lrp_target`.
pub fn generated_inputs(graph: &Graph) -> Result<Vec<(String, Tensor)>> {
    let mut state = 0x5eed_u64;
    let mut inputs = Vec::new();
    let classes = graph
        .output_names()
        .next()
        .and_then(|o| graph.value_type(o).ok())
        .and_then(|t| t.shape.last().copied())
        .unwrap_or(2)
        .max(1);
    for name in graph.graph_input_names() {
        let t = graph.value_type(&name)?.clone();
        let shape = IxDyn(&t.shape);
        let tensor = match t.dtype {
            DType::Int32 | DType::Int64 => {
                let bound = if name == TARGET_INPUT {
                    classes
                } else {
                    vocabulary_size(graph, &name).unwrap_or(2).max(1)
                }
                .max(1) as u64;
                Tensor::I64(ArrayD::from_shape_fn(shape, |_| {
                    (lcg(&mut state) % bound) as i64
                }))
            }
            DType::Float => Tensor::F32(ArrayD::from_shape_fn(shape, |_| {
                (lcg(&mut state) % 2000) as f32 / 1000.0 - 1.0
            })),
            other => {
                return Err(Error::Unsupported(format!(
                    "cannot generate values for input '{name}' of data type {other}; pass --input"
                )))
            }
        };
        inputs.push((name, tensor));
    }
    Ok(inputs)
}

/// Rows of the table that a Gather indexes with `input`.
fn vocabulary_size(graph: &Graph, input: &str) -> Option<usize> {
    graph
        .consumers(input)
        .iter()
        .map(|&(i, _)| graph.node(i))
        .find(|n| n.op_type() == "Gather" && n.input.get(1).is_some_and(|s| s == input))
        .and_then(|n| {
            graph
                .shape(&n.input[0])
                .ok()
                .and_then(|s| s.first().copied())
        })
}

/// Reads every array of an `.npz` file, keyed by name (int64, int32 or float32).
pub fn load_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |e: String| Error::InvalidModel(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let mut npz = NpzReader::new(file).map_err(|e| bad(e.to_string()))?;
    let names = npz.names().map_err(|e| bad(e.to_string()))?;
    let mut arrays = Vec::new();
    for name in names {
        let key = name.trim_end_matches(".npy").to_string();
        let tensor = if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<i64>, IxDyn>(&name) {
            Tensor::I64(a)
        } else if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<f32>, IxDyn>(&name) {
            Tensor::F32(a)
        } else if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<i32>, IxDyn>(&name) {
            Tensor::I64(a.mapv(i64::from))
        } else if let Ok(a) = npz.by_name::<ndarray::OwnedRepr<bool>, IxDyn>(&name) {
            Tensor::Bool(a)
        } else {
            return Err(bad(format!(
                "array '{key}' is not int64, int32, float32 or bool"
            )));
        };
        arrays.push((key, tensor));
    }
    Ok(arrays)
}

/// Checks `inputs` (read from `source`) against the model's inputs: every name known, none
/// missing, same data type and shape, token ids inside the embedding table.
pub fn validate_inputs(graph: &Graph, inputs: &[(String, Tensor)], source: &str) -> Result<()> {
    let expected = graph.graph_input_names();
    let bad = |message: String| Err(Error::InvalidModel(format!("{source}: {message}")));
    for (name, _) in inputs {
        if !expected.contains(name) {
            return bad(format!(
                "array '{name}' is not an input of the model, which takes {}",
                expected.join(", ")
            ));
        }
    }
    for name in &expected {
        let Some((_, value)) = inputs.iter().find(|(n, _)| n == name) else {
            return bad(format!("no array for model input '{name}'"));
        };
        let t = graph.value_type(name)?;
        let wanted_dtype = match t.dtype {
            DType::Int32 => DType::Int64,
            other => other,
        };
        if value.dtype() != wanted_dtype {
            return bad(format!(
                "input '{name}' has data type {} but the model wants {}",
                value.dtype(),
                t.dtype
            ));
        }
        // Symbolic axes (a `--dynamic-seq` model's sequence) take any length.
        let symbolic = symbolic_axes(graph, name);
        let fits = value.shape().len() == t.shape.len()
            && value
                .shape()
                .iter()
                .zip(&t.shape)
                .enumerate()
                .all(|(axis, (got, want))| got == want || symbolic.contains(&axis));
        if !fits {
            return bad(format!(
                "input '{name}' has shape {:?} but the model wants {:?}",
                value.shape(),
                t.shape
            ));
        }
        if let (Tensor::I64(ids), Some(vocab)) = (value, vocabulary_size(graph, name)) {
            if let Some(id) = ids.iter().find(|&&id| id < 0 || id as usize >= vocab) {
                return bad(format!("input '{name}' holds token id {id}, outside the embedding table of {vocab} rows"));
            }
        }
    }
    Ok(())
}

/// Axes of a graph input declared with a named (symbolic) dim.
fn symbolic_axes(graph: &Graph, input: &str) -> Vec<usize> {
    use crate::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let declared = graph
        .input_declaration(input)
        .and_then(|i| i.r#type.as_ref())
        .and_then(|t| t.value.as_ref());
    match declared {
        Some(type_proto::Value::TensorType(t)) => t
            .shape
            .iter()
            .flat_map(|s| s.dim.iter().enumerate())
            .filter(|(_, d)| matches!(d.value, Some(Value::DimParam(_))))
            .map(|(axis, _)| axis)
            .collect(),
        _ => vec![],
    }
}

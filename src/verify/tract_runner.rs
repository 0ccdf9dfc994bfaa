//! Runs a model in tract, the pure-Rust runtime embedded in the compiler.
use ndarray::ArrayD;
use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::onnx::io::encode_model;
use crate::onnx::proto::ModelProto;
use crate::onnx::Tensor as Constant;

fn runtime_error(e: impl std::fmt::Display) -> Error {
    Error::Runtime {
        runtime: "tract",
        message: format!("{e:#}"),
    }
}

/// Runs `model` on the named inputs and returns its float outputs by name.
pub fn run_tract(
    model: &ModelProto,
    inputs: &[(String, Constant)],
) -> Result<Vec<(String, ArrayD<f32>)>> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::InvalidModel("model holds no graph".into()))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name()).collect();
    let mut ordered = TVec::new();
    for input in graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name()))
    {
        let (_, value) = inputs
            .iter()
            .find(|(n, _)| n == input.name())
            .ok_or_else(|| {
                Error::Verify(format!("no value given for model input '{}'", input.name()))
            })?;
        let tensor: TValue = match value {
            Constant::I64(a) => a.clone().into_tvalue(),
            Constant::F32(a) => a.clone().into_tvalue(),
            Constant::Bool(a) => a.clone().into_tvalue(),
        };
        ordered.push(tensor);
    }
    let bytes = encode_model(model);
    // The actual inputs fix every symbolic dim (e.g. a `--dynamic-seq` model's sequence axis),
    // so tract types the whole graph concretely.
    let facts: Vec<InferenceFact> = ordered
        .iter()
        .map(|t| InferenceFact::dt_shape(t.datum_type(), t.shape()))
        .collect();
    let plan = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .and_then(|mut m| {
            for (i, fact) in facts.into_iter().enumerate() {
                m.set_input_fact(i, fact)?;
            }
            Ok(m)
        })
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(runtime_error)?;
    let results = plan.run(ordered).map_err(runtime_error)?;
    let mut outputs = Vec::new();
    for (info, value) in graph.output.iter().zip(results) {
        if let Ok(view) = value.to_plain_array_view::<f32>() {
            outputs.push((info.name().to_string(), view.to_owned().into_dyn()));
        }
    }
    Ok(outputs)
}

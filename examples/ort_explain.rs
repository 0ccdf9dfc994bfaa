//! Serve an explanation from Rust with ONNX Runtime (the `ort` crate): run a model compiled by
//! `mambalrp-compile` and print each token with its relevance, most relevant first. It uses only
//! `ort` and the compiled model's outputs, as a deployment would.
//!
//! ```text
//! ORT_DYLIB_PATH=/path/to/libonnxruntime.so.1.31.1 cargo run --example ort_explain -- model_lrp.onnx
//! ```
use ndarray::Array2;
use ort::session::Session;
use ort::value::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::env::args()
        .nth(1)
        .ok_or("usage: ort_explain MODEL_LRP.onnx")?;
    let library = std::env::var("ORT_DYLIB_PATH").map_err(|_| {
        "set ORT_DYLIB_PATH to libonnxruntime.so.* (from `pip install onnxruntime==1.31.1`)"
    })?;
    let environment = ort::init_from(library)?.build()?;
    let mut session = Session::builder(&environment)?.commit_from_file(&model)?;

    // Exported Mamba graphs have static shapes: read [batch, seq] off the first input.
    let input = &session.inputs()[0];
    let shape = input
        .dtype()
        .tensor_shape()
        .ok_or("first input is not a tensor")?
        .to_vec();
    let (batch, seq) = (shape[0] as usize, shape[1] as usize);
    let input_name = input.name().to_string();
    let ids = Array2::from_shape_fn((batch, seq), |(b, t)| ((b * seq + t) * 7 + 3) as i64 % 50);

    let outputs = session.run(ort::inputs![input_name => Tensor::from_array(ids.clone())?])?;
    let relevance = outputs["relevance"].try_extract_array::<f32>()?;
    let logit = outputs["relevance_target_logit"].try_extract_array::<f32>()?;
    let bias = outputs["relevance_bias"].try_extract_array::<f32>()?;

    for b in 0..batch {
        let row = relevance.index_axis(ndarray::Axis(0), b);
        println!(
            "sample {b}: logit {:.4} = sum(relevance) {:.4} + bias {:.4}",
            logit[[b]],
            row.sum(),
            bias[[b]]
        );
        let mut order: Vec<usize> = (0..seq).collect();
        order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
        for t in order {
            println!(
                "  position {t:3}  token {:6}  relevance {:+.5}",
                ids[[b, t]],
                row[t]
            );
        }
    }
    Ok(())
}

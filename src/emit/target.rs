//! The explained logit and the seed cotangent of the backward pass.
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::onnx::attributes::make_int;

pub const TARGET_INPUT: &str = "lrp_target";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetMode {
    /// The argmax class of the explained logits.
    #[default]
    Argmax,
    /// A new int64 input `lrp_target` [batch] chooses the class.
    Input,
}

impl std::fmt::Display for TargetMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetMode::Argmax => "argmax",
            TargetMode::Input => "input",
        })
    }
}

pub struct Explained {
    /// The explained logit per sample, `[batch]`.
    pub logit: String,
    /// (value, cotangent) pairs that start the backward pass.
    pub seeds: Vec<(String, String)>,
    pub logits_output: String,
    /// Which logits row is explained: "last position" of `[batch, seq, vocab]` logits, or
    /// "class logits" of `[batch, classes]`.
    pub row: &'static str,
}

/// Builds target selection on the model's first output (`[batch, seq, vocab]`: last position;
/// `[batch, classes]`) and the seed. For an LM head `MatMul(h, W)` the seed is placed on h as
/// the target's column of W, instead of multiplying a one-hot by the whole vocabulary matrix.
pub fn explain_target(graph: &mut Graph, mode: TargetMode) -> Result<Explained> {
    let logits = graph
        .output_names()
        .next()
        .map(str::to_string)
        .ok_or_else(|| Error::InvalidModel("graph has no outputs".into()))?;
    let shape = graph.shape(&logits)?.to_vec();
    let (batch, classes, positions) = match shape[..] {
        [b, s, v] => (b, v, Some(s)),
        [b, v] => (b, v, None),
        _ => return Err(Error::Unsupported(format!("output '{logits}' has shape {shape:?}; expected [batch, seq, vocab] or [batch, classes]"))),
    };
    if shape.contains(&0) {
        return Err(Error::Unsupported(format!(
            "output '{logits}' has an empty dimension: {shape:?}"
        )));
    }
    let last = match positions {
        Some(_) => {
            let index = graph.scalar_i64(-1);
            graph.add_node("Gather", &[&logits, &index], vec![make_int("axis", 1)])
        }
        None => logits.clone(),
    };
    let target = match mode {
        TargetMode::Argmax => graph.add_node(
            "ArgMax",
            &[&last],
            vec![make_int("axis", 1), make_int("keepdims", 0)],
        ),
        TargetMode::Input => {
            graph.add_input(TARGET_INPUT, crate::ir::DType::Int64, &[batch]);
            TARGET_INPUT.to_string()
        }
    };
    let column = graph.op_unsqueeze(&target, &[1]);
    let picked = graph.add_node(
        "GatherElements",
        &[&last, &column],
        vec![make_int("axis", 1)],
    );
    let logit = graph.op_squeeze(&picked, &[1]);

    // The seed row goes to the last position of `like` ([batch, seq, ..]), after zeros shaped
    // like all earlier positions: no sequence length is baked in.
    let place = |graph: &mut Graph, per_sample: String, like: &str| match positions {
        Some(_) => {
            let row = graph.op_unsqueeze(&per_sample, &[1]);
            let earlier = graph.op_slice_signed(like, 1, 0, -1);
            let zeros = graph.op_zeros_like(&earlier);
            graph.op_concat(&[zeros, row], 1)
        }
        None => per_sample,
    };
    let head = lm_head(graph, &logits);
    let seeds = match head {
        Some((hidden, weight)) => {
            let columns = graph.add_node("Gather", &[&weight, &target], vec![make_int("axis", 1)]);
            let rows = graph.op_transpose(&columns, &[1, 0]);
            let seed = place(graph, rows, &hidden);
            vec![(hidden, seed)]
        }
        None => {
            let depth = graph.const_i64(&[classes as i64]);
            let values = graph.add_constant(crate::onnx::Tensor::F32(
                ndarray::arr1(&[0.0f32, 1.0]).into_dyn(),
            ));
            let one_hot = graph.add_node(
                "OneHot",
                &[&target, &depth, &values],
                vec![make_int("axis", -1)],
            );
            let seed = place(graph, one_hot, &logits);
            vec![(logits.clone(), seed)]
        }
    };
    Ok(Explained {
        logit,
        seeds,
        logits_output: logits,
        row: if positions.is_some() {
            "last position"
        } else {
            "class logits"
        },
    })
}

/// `(h, W)` when the logits are `MatMul(h, W)` with a constant `[hidden, vocab]` W, through no-op
/// Casts.
fn lm_head(graph: &Graph, logits: &str) -> Option<(String, String)> {
    let root = crate::ir::skip_noops(graph, logits);
    let (_, node) = graph
        .producer(root)
        .filter(|(_, n)| n.op_type() == "MatMul")?;
    let weight = &node.input[1];
    let rank_ok = graph.value_type(weight).is_ok_and(|t| t.rank() == 2);
    (graph.is_constant(weight) && rank_ok).then(|| (node.input[0].clone(), weight.clone()))
}

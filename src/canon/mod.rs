//! Canonicalisation: before anything reads the graph, equivalent ways of writing the same
//! computation are rewritten into the one form the matchers and the re-roller understand
//! (`Swish` and `x / (1 + exp(-x))` become `x * Sigmoid(x)`, fused or opset-23 RMSNorm ops
//! become the decomposed norm, `log(1 + exp(x))` becomes `Softplus`, ...). Every rewrite keeps
//! the value it replaces (up to float rounding) and uses standard ONNX ops only, so the compiled
//! model runs anywhere; the verification's output check covers the rounding.
//!
//! A rewrite is one function on one node, registered in [`REWRITES`], in the style of
//! onnxscript's rewrite rules: it checks its pattern, adds the replacement through the graph's
//! edit API and substitutes it for the old value; the dead originals are swept afterwards.
mod activation;
mod linear;
mod norm;

use std::collections::BTreeMap;

use crate::error::Result;
use crate::ir::{topo, Graph};

/// One rewrite: `op_type` is the op it starts from; `apply` returns whether it rewrote node
/// `index`.
pub struct Rewrite {
    pub name: &'static str,
    pub op_type: &'static str,
    pub apply: fn(&mut Graph, usize) -> Result<bool>,
}

/// Every rewrite, in the order they are tried on a node.
pub const REWRITES: &[Rewrite] = &[
    Rewrite {
        name: "Swish -> x * Sigmoid(x)",
        op_type: "Swish",
        apply: activation::swish,
    },
    Rewrite {
        name: "QuickGelu -> x * Sigmoid(alpha x)",
        op_type: "QuickGelu",
        apply: activation::swish,
    },
    Rewrite {
        name: "x / (1 + exp(-x)) -> x * Sigmoid(x)",
        op_type: "Div",
        apply: activation::logistic_division,
    },
    Rewrite {
        name: "log(1 + exp(x)) -> Softplus(x)",
        op_type: "Log",
        apply: activation::softplus_from_log,
    },
    Rewrite {
        name: "RMSNormalization -> x / sqrt(mean(x^2) + eps) * scale",
        op_type: "RMSNormalization",
        apply: norm::rms_normalization,
    },
    Rewrite {
        name: "SimplifiedLayerNormalization -> x / sqrt(mean(x^2) + eps) * scale",
        op_type: "SimplifiedLayerNormalization",
        apply: norm::simplified_layer_normalization,
    },
    Rewrite {
        name: "SkipSimplifiedLayerNormalization -> Add + RMSNorm",
        op_type: "SkipSimplifiedLayerNormalization",
        apply: norm::skip_simplified_layer_normalization,
    },
    Rewrite {
        name: "FusedMatMul -> MatMul",
        op_type: "FusedMatMul",
        apply: linear::fused_matmul,
    },
];

/// Rounds of rewriting before giving up on reaching a fixed point.
const MAX_ROUNDS: usize = 16;

/// How many times each rewrite fired.
pub type Canonicalized = BTreeMap<&'static str, usize>;

/// Rewrites until no rewrite applies (a rewrite's output can enable another), then removes the
/// nodes nothing reads any more and restores topological order.
pub fn canonicalize(graph: &mut Graph) -> Result<Canonicalized> {
    let mut fired: Canonicalized = BTreeMap::new();
    // Each round rewrites, in order, every node whose operands are typed; a fused op whose
    // operands come from another one not yet rewritten waits for the next round.
    for _round in 0..MAX_ROUNDS {
        let mut changed = false;
        for index in 0..graph.nodes().len() {
            if !is_read(graph, index) {
                continue;
            }
            for rewrite in REWRITES {
                if graph.node(index).op_type() == rewrite.op_type && (rewrite.apply)(graph, index)?
                {
                    *fired.entry(rewrite.name).or_default() += 1;
                    changed = true;
                    break;
                }
            }
        }
        if !changed {
            break;
        }
        topo::remove_dead_nodes(graph, |_| true)?;
        topo::sort_nodes(graph)?;
        // Values computed from the outputs of ops no rewrite has reached yet are typed now.
        graph.reanalyse()?;
    }
    Ok(fired)
}

/// True when some output of node `index` is read (a node already replaced is not).
fn is_read(graph: &Graph, index: usize) -> bool {
    graph
        .node(index)
        .output
        .iter()
        .any(|value| !graph.consumers(value).is_empty() || graph.output_names().any(|o| o == value))
}

/// True for the default ONNX domain and ONNX Runtime's contrib domain.
fn onnx_or_ort_domain(domain: &str) -> bool {
    matches!(domain, "" | "ai.onnx" | "com.microsoft")
}

//! R4: the multiplicative gate `y * silu(z)` multiplies two relevance-carrying tensors; the
//! half rule keeps its value and halves the gradient into the product.
use std::collections::{HashMap, HashSet};

use super::pattern::skip_noops;
use super::{Effect, Matches, Rejection, Rule, Site};
use crate::ir::skip_layout;
use crate::ir::Graph;

/// A gate multiplies two tensors of the same shape element by element; a product that
/// broadcasts one operand (dB * u[.., None]) is not a gate. Says why not.
fn elementwise_product(graph: &Graph, node: &crate::onnx::proto::NodeProto) -> Result<(), String> {
    let shapes: Option<Vec<&[usize]>> = node
        .input
        .iter()
        .chain(&node.output)
        .map(|v| graph.shape(v).ok())
        .collect();
    match shapes {
        None => Err("its operand shapes are unknown".into()),
        Some(s) if s.iter().all(|shape| *shape == s[0]) => Ok(()),
        Some(s) => Err(format!(
            "it broadcasts {:?} with {:?}; a gate multiplies two tensors of one shape element by element",
            s[0], s[1]
        )),
    }
}

pub fn find(
    graph: &Graph,
    carrying: &HashSet<String>,
    silu_products: &HashMap<String, String>,
    matches: &mut Matches,
) {
    for node in graph.nodes() {
        if node.op_type() != "Mul"
            || node.input.len() != 2
            || silu_products.contains_key(&node.output[0])
        {
            continue;
        }
        for slot in [1, 0] {
            let gate = skip_layout(graph, &node.input[slot]);
            if !silu_products.contains_key(gate) {
                continue;
            }
            let other = skip_noops(graph, &node.input[1 - slot]);
            let gate_input = &silu_products[gate];
            if !carrying.contains(gate_input.as_str()) {
                // Only `other` carries relevance: the product is already linear, and halving
                // its gradient would lose half the relevance.
                matches.rejections.push(Rejection {
                    rule: Rule::Gate,
                    node: node.name().to_string(),
                    reason: format!("multiplies '{other}' by SiLU '{gate}' of '{gate_input}', which does not depend on the input (already linear)"),
                });
            } else if let (true, Err(why)) =
                (carrying.contains(other), elementwise_product(graph, node))
            {
                matches.rejections.push(Rejection {
                    rule: Rule::Gate,
                    node: node.name().to_string(),
                    reason: format!("multiplies SiLU '{gate}' by '{other}', but {why}"),
                });
            } else if carrying.contains(other) {
                matches.sites.push(Site {
                    rule: Rule::Gate,
                    node: node.name().to_string(),
                    detail: format!("'{other}' * silu '{gate}', gradient halved"),
                    effect: Effect::HalfGradient(node.output[0].clone()),
                });
            } else {
                matches.rejections.push(Rejection {
                    rule: Rule::Gate,
                    node: node.name().to_string(),
                    reason: format!("multiplies SiLU '{gate}' by '{other}', which does not depend on the input (already linear): dt, B and C count as constants under the SSM rule"),
                });
            }
            break;
        }
    }
}

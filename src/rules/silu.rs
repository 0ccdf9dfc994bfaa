//! R1: SiLU `x * sigmoid(x)` propagates relevance as if the sigmoid were a constant gate.
use std::collections::HashMap;

use super::pattern::{produced_by, skip_noops};
use super::{Effect, Matches, Rejection, Rule, Site};
use crate::ir::Graph;

/// Finds every `Mul(x, Sigmoid(x))` (either operand order, through no-op Casts). Returns the
/// SiLU products: output value -> the SiLU's input.
pub fn find(graph: &Graph, matches: &mut Matches) -> HashMap<String, String> {
    let mut products = HashMap::new();
    for node in graph.nodes() {
        if node.op_type() != "Mul" || node.input.len() != 2 {
            continue;
        }
        for (x_slot, gate_slot) in [(0, 1), (1, 0)] {
            let Some((_, sigmoid)) = produced_by(graph, &node.input[gate_slot], "Sigmoid") else {
                continue;
            };
            let x = skip_noops(graph, &node.input[x_slot]);
            if skip_noops(graph, &sigmoid.input[0]) == x {
                matches.sites.push(Site {
                    rule: Rule::Silu,
                    node: node.name().to_string(),
                    detail: format!(
                        "x * sg(sigmoid(x)) with x = '{x}', sigmoid from '{}'",
                        sigmoid.name()
                    ),
                    effect: Effect::SiluIdentity {
                        product: node.output[0].clone(),
                        gate_slot,
                    },
                });
                products.insert(node.output[0].clone(), x.to_string());
                break;
            }
            matches.rejections.push(Rejection {
                rule: Rule::Silu,
                node: node.name().to_string(),
                reason: format!(
                    "one operand is Sigmoid '{}' of '{}', but the other operand is '{x}', not the same tensor",
                    sigmoid.name(),
                    skip_noops(graph, &sigmoid.input[0])
                ),
            });
        }
    }
    products
}

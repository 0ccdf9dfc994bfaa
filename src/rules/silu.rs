//! R1: SiLU `x * sigmoid(x)` propagates relevance as if the sigmoid were a constant gate.
use std::collections::HashMap;

use super::pattern::{produced_by, skip_noops};
use super::{Effect, Matches, Rejection, Rule, Site};
use crate::ir::Graph;
use crate::onnx::proto::NodeProto;

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
                reject_other_activation(graph, node, x_slot, gate_slot, matches);
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

/// A near miss: `x * f(x)` with `f` an elementwise op other than Sigmoid (a SiLU written with
/// the wrong activation, or another gated activation the rules do not cover).
fn reject_other_activation(
    graph: &Graph,
    node: &NodeProto,
    x_slot: usize,
    gate_slot: usize,
    matches: &mut Matches,
) {
    let x = skip_noops(graph, &node.input[x_slot]);
    let Some((_, activation)) = graph.producer(skip_noops(graph, &node.input[gate_slot])) else {
        return;
    };
    let unary_of_x = activation.input.len() == 1 && skip_noops(graph, &activation.input[0]) == x;
    if unary_of_x {
        matches.rejections.push(Rejection {
            rule: Rule::Silu,
            node: node.name().to_string(),
            reason: format!(
                "multiplies '{x}' by {} '{}' of it: a SiLU is x * Sigmoid(x)",
                activation.op_type(),
                activation.name()
            ),
        });
    }
}

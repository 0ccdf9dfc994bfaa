//! R2: in RMSNorm (and LayerNorm) the denominator `sqrt(mean(x²) + eps)` is a stop-gradient, so
//! relevance passes through the normalisation linearly.
use super::pattern::{consumers_through_noops, is_constant_equal, produced_by, skip_noops};
use super::{Effect, Matches, Rejection, Rule, Site};
use crate::ir::Graph;

pub fn find(graph: &Graph, matches: &mut Matches) {
    let mut norm_inputs: Vec<(usize, String)> = Vec::new();
    for node in graph.nodes().iter().filter(|n| n.op_type() == "Sqrt") {
        let reject = |matches: &mut Matches, reason: String| {
            matches.rejections.push(Rejection {
                rule: Rule::Norm,
                node: node.name().to_string(),
                reason,
            })
        };
        let normalised = match mean_of_squares_input(graph, &node.input[0]) {
            Ok(x) => x,
            Err(reason) => {
                reject(matches, reason);
                continue;
            }
        };
        let mut stops = Vec::new();
        for (index, slot) in consumers_through_noops(graph, &node.output[0]) {
            let consumer = graph.node(index);
            match (consumer.op_type(), slot) {
                ("Reciprocal", 0) => {
                    stops.extend(graph.consumers(&consumer.output[0]).iter().copied())
                }
                ("Div", 1) if is_constant_equal(graph, &consumer.input[0], 1.0) => {
                    stops.extend(graph.consumers(&consumer.output[0]).iter().copied())
                }
                ("Div", 1) => stops.push((index, 1)),
                (op, _) => reject(
                    matches,
                    format!(
                        "its output feeds {op} '{}', not a reciprocal or a divisor",
                        consumer.name()
                    ),
                ),
            }
        }
        if stops.is_empty() {
            continue;
        }
        let anchor = graph.producer(&normalised).map(|(i, _)| i + 1).unwrap_or(0);
        norm_inputs.push((anchor, normalised.clone()));
        matches.sites.push(Site {
            rule: Rule::Norm,
            node: node.name().to_string(),
            detail: format!("x * sg(1/sqrt(mean(x^2)+eps)) for x = '{normalised}'"),
            effect: Effect::StopGradient(
                stops
                    .iter()
                    .map(|&(index, slot)| graph.edge(index, slot))
                    .collect(),
            ),
        });
    }
    norm_inputs.sort();
    norm_inputs.dedup();
    matches.norm_inputs = norm_inputs.into_iter().map(|(_, v)| v).collect();
}

/// For `Sqrt(mean(x²) + eps)` (or `mean((x - mean x)²)`), the normalised tensor x.
fn mean_of_squares_input(graph: &Graph, sqrt_input: &str) -> Result<String, String> {
    let mut inner = skip_noops(graph, sqrt_input);
    if let Some((_, add)) = produced_by(graph, inner, "Add") {
        let variable = add.input.iter().find(|i| !graph.is_constant(i));
        match variable {
            Some(v) if add.input.iter().any(|i| graph.is_constant(i)) => {
                inner = skip_noops(graph, v)
            }
            _ => return Err("its input is an Add without a constant eps".into()),
        }
    }
    let (_, mean) =
        produced_by(graph, inner, "ReduceMean").ok_or("its input is not ReduceMean(...) + eps")?;
    let squared = skip_noops(graph, &mean.input[0]);
    let base = match graph.producer(squared) {
        Some((_, p)) if p.op_type() == "Pow" && is_constant_equal(graph, &p.input[1], 2.0) => {
            p.input[0].clone()
        }
        Some((_, p))
            if p.op_type() == "Mul"
                && skip_noops(graph, &p.input[0]) == skip_noops(graph, &p.input[1]) =>
        {
            p.input[0].clone()
        }
        _ => {
            return Err(format!(
                "ReduceMean '{}' does not average a square",
                mean.name()
            ))
        }
    };
    let base = skip_noops(graph, &base);
    // LayerNorm squares the centred tensor x - mean(x): the normalised input is x itself.
    if let Some((_, sub)) = produced_by(graph, base, "Sub") {
        if produced_by(graph, &sub.input[1], "ReduceMean").is_some() {
            return Ok(skip_noops(graph, &sub.input[0]).to_string());
        }
    }
    Ok(base.to_string())
}

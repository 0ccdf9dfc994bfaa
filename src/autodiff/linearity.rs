//! The proof obligation of MambaLRP mode: with all rules applied, every node on the relevance
//! path must be linear in its relevance-carrying inputs, so relevance is conserved (Euler).
//! Each op's class is declared in its registration (`crate::ops`), next to its VJP.
use std::collections::HashSet;

use super::Modifiers;
use crate::error::{Error, Result};
use crate::ir::{node_key, Graph};
use crate::ops::Linearity;

pub fn check(
    graph: &Graph,
    index: usize,
    carrying: &HashSet<String>,
    modifiers: &Modifiers,
) -> Result<()> {
    let node = graph.node(index);
    let carried: Vec<usize> = node
        .input
        .iter()
        .enumerate()
        .filter(|(slot, name)| carrying.contains(*name) && !modifiers.stops(node, *slot))
        .map(|(slot, _)| slot)
        .collect();
    let name = |slot: usize| node.input[slot].as_str();
    let class = graph
        .op(index)
        .def()
        .map_or(Linearity::NonLinear, |def| def.linearity);
    let verdict = match class {
        Linearity::Linear => Ok(()),
        Linearity::Bilinear if carried.len() >= 2 && !modifiers.half_nodes.contains(node_key(node)) => {
            Err(format!(
                "multiplies two relevance-carrying tensors ('{}' and '{}') and no rule (SiLU, gate, SSM) covers the product",
                name(carried[0]),
                name(carried[1])
            ))
        }
        Linearity::Bilinear => Ok(()),
        Linearity::LinearIn { slots, why } => match carried.iter().find(|s| !slots.contains(s)) {
            Some(&slot) => Err(format!("{why} ('{}')", name(slot))),
            None => Ok(()),
        },
        Linearity::Decided(decide) => decide(graph, node, &carried),
        Linearity::NonLinear => Err(format!(
            "is non-linear in '{}' and no MambaLRP rule covers it",
            carried.first().map_or("?", |&slot| name(slot))
        )),
    };
    verdict.map_err(|why| Error::NotLinear {
        node: node.name().to_string(),
        op: node.op_type().to_string(),
        why,
    })
}

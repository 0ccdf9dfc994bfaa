//! Nodes that only forward a value: `Identity`. The TorchScript exporter shares one initializer
//! between parameters through them (all zero biases become one zero tensor read through an
//! Identity each), and the matchers want to see the initializer itself.
use crate::error::Result;
use crate::ir::Graph;

/// Makes the readers of an `Identity` read its input. A graph output keeps its Identity: the
/// output's name must stay.
pub fn identity(graph: &mut Graph, index: usize) -> Result<bool> {
    let node = graph.node(index);
    if !matches!(node.domain(), "" | "ai.onnx") || node.input.len() != 1 || node.output.len() != 1 {
        return Ok(false);
    }
    let (input, output) = (node.input[0].clone(), node.output[0].clone());
    if input.is_empty() || graph.output_names().any(|o| o == output) {
        return Ok(false);
    }
    graph.replace_uses(&output, &input);
    Ok(true)
}

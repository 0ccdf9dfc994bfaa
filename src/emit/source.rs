//! Where relevance is read: the token embeddings.
use crate::error::{Error, Result};
use crate::ir::DType;
use crate::ir::Graph;

/// The embeddings E: a float graph input (inputs_embeds), or else the output of the `Gather` that
/// looks integer token ids up in a `[vocab, hidden]` table.
pub fn find_embeddings(graph: &Graph) -> Result<String> {
    for input in graph.graph_input_names() {
        if graph
            .value_type(&input)
            .is_ok_and(|t| t.dtype.is_float() && t.rank() == 3)
        {
            return Ok(input);
        }
    }
    let inputs = graph.graph_input_names();
    for node in graph
        .nodes()
        .iter()
        .filter(|n| n.op_type() == "Gather" && n.input.len() == 2)
    {
        let table = graph.value_type(&node.input[0]);
        let ids = graph.value_type(&node.input[1]);
        let looks_up_tokens = inputs.contains(&node.input[1])
            && ids.is_ok_and(|t| matches!(t.dtype, DType::Int32 | DType::Int64) && t.rank() == 2);
        if graph.is_initializer(&node.input[0])
            && table.is_ok_and(|t| t.rank() == 2 && t.dtype.is_float())
            && looks_up_tokens
        {
            return Ok(node.output[0].clone());
        }
    }
    let seen: Vec<String> = inputs
        .iter()
        .map(|name| match graph.value_type(name) {
            Ok(t) => format!("'{name}' {} {:?}", t.dtype, t.shape),
            Err(_) => format!("'{name}' of unknown shape"),
        })
        .collect();
    Err(Error::Unsupported(format!(
        "no token embedding found: looked for a float [batch, seq, hidden] graph input or a Gather of a [vocab, hidden] \
         weight table by integer graph-input token ids; the graph inputs are {}",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )))
}

//! Where relevance is read: the token embeddings of a language model, or the pixels of an
//! image model (through its patch embedding).
use crate::error::{Error, Result};
use crate::ir::DType;
use crate::ir::Graph;

/// The value the relevance pass runs down to.
#[derive(Debug, Clone)]
pub enum Source {
    /// Token embeddings `[batch, seq, hidden]`: a float graph input (inputs_embeds), or the
    /// output of the `Gather` that looks token ids up in a `[vocab, hidden]` table.
    Embeddings(String),
    /// A float image graph input `[batch, channels, height, width]`, cut into patch tokens by a
    /// `Conv` (Vision Mamba's patch embedding).
    Image(ImageSource),
}

#[derive(Debug, Clone)]
pub struct ImageSource {
    pub pixels: String,
    /// The patch embedding's output `[batch, hidden, rows, cols]` (the Conv's first output,
    /// which names the node).
    pub patches: String,
}

impl Source {
    /// The value relevance flows down to.
    pub fn value(&self) -> &str {
        match self {
            Source::Embeddings(value) => value,
            Source::Image(image) => &image.pixels,
        }
    }

    pub fn is_image(&self) -> bool {
        matches!(self, Source::Image(_))
    }
}

/// The model's source: a float `[batch, seq, hidden]` input, else a float
/// `[batch, channels, height, width]` input read by a Conv, else the token-embedding Gather.
pub fn find_source(graph: &Graph) -> Result<Source> {
    let inputs = graph.graph_input_names();
    let float_input = |rank: usize| {
        inputs.iter().find(|name| {
            graph
                .value_type(name)
                .is_ok_and(|t| t.dtype.is_float() && t.rank() == rank)
        })
    };
    if let Some(input) = float_input(3) {
        return Ok(Source::Embeddings(input.clone()));
    }
    if let Some(image) = float_input(4) {
        return patch_embedding(graph, image).map(Source::Image);
    }
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
            return Ok(Source::Embeddings(node.output[0].clone()));
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
        "no token embedding or image found: looked for a float [batch, seq, hidden] graph input, a float \
         [batch, channels, height, width] image input read by a patch-embedding Conv, or a Gather of a \
         [vocab, hidden] weight table by integer graph-input token ids; the graph inputs are {}",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )))
}

/// The Conv with constant 4-D weights that reads `image` (through no-op Casts).
fn patch_embedding(graph: &Graph, image: &str) -> Result<ImageSource> {
    let readers = crate::rules::consumers_through_noops(graph, image);
    let conv = readers.iter().map(|&(i, _)| graph.node(i)).find(|node| {
        node.op_type() == "Conv"
            && graph.is_constant(&node.input[1])
            && graph
                .value_type(&node.input[1])
                .is_ok_and(|t| t.rank() == 4)
    });
    let Some(conv) = conv else {
        let ops: Vec<String> = readers
            .iter()
            .map(|&(i, _)| {
                let node = graph.node(i);
                format!("{} '{}'", node.op_type(), node.name())
            })
            .collect();
        return Err(Error::Unsupported(format!(
            "image input '{image}' {:?} is not read by a patch-embedding Conv (a Conv with constant \
             [hidden, channels, kh, kw] weights); its readers are {}",
            graph.shape(image).unwrap_or(&[]),
            if ops.is_empty() {
                "none".to_string()
            } else {
                ops.join(", ")
            }
        )));
    };
    let patches = conv.output[0].clone();
    if graph.shape(&patches).map_or(true, |s| s.len() != 4) {
        return Err(Error::node(
            conv,
            "the patch embedding's output is not a typed [batch, hidden, rows, cols] tensor",
        ));
    }
    Ok(ImageSource {
        pixels: image.to_string(),
        patches,
    })
}

//! Recomputing large forward values in the backward pass instead of keeping them. The relevance
//! pass multiplies by forward values (the other factor of a product, the decay of the scan).
//! Some are large tensors made cheaply from small ones: the selective scan's dA = exp(dt * A)
//! and dB = dt * B are [B, D, S, N], built by broadcasting dt [B, D, S] against A [D, N] and
//! B [B, S, N]. Kept from the forward pass until the backward reaches their layer, they are
//! most of the compiled model's memory (24 layers x 2 x 12.6 MB on the 130M model at 128
//! tokens). Recomputed from their small inputs where the backward needs them, only one layer's
//! copy lives at a time; the recomputation repeats the same ops on the same inputs, so the
//! values are identical.
//!
//! ONNX has no control edges and runtimes run a node as soon as its inputs exist (ONNX
//! Runtime ran the recomputations before the first forward scan, storing them after all), so
//! a recomputation reads its small inputs through [`after`], a copy that exists only once the
//! backward pass has reached the value that needs it. Measured on the 130M model at 128 tokens
//! in ONNX Runtime: peak memory of compile + verify 0.94 GB instead of 1.6 GB, explanation time
//! within 4% (the recomputed Exp and Mul cost what the forward pass paid for them).
use std::collections::HashMap;

use crate::error::Result;
use crate::ir::{DType, Graph};
use crate::onnx::attributes::make_int;

/// How many ops deep a recomputation may reach (the parallel scan's clamped chunk totals sit
/// about ten ops above dt).
const MAX_DEPTH: usize = 16;
/// Inputs at most this fraction of the recomputed value are kept from the forward pass (read
/// late); larger ones are recomputed too where they can be. (The parallel scan's chunk totals
/// are 1/L of its [B, D, S, N] values: kept for every layer, they were most of its memory.)
const KEPT_FRACTION: usize = 64;

fn numel(graph: &Graph, value: &str) -> Option<usize> {
    graph.value_type(value).ok().map(|t| t.numel())
}

/// How an input of a recomputation is obtained.
enum Source {
    /// A constant, or not read at all.
    AsIs,
    /// Rebuilt as well.
    Rebuilt,
    /// Kept from the forward pass and read late: smaller than the recomputed value.
    Kept,
}

/// How `input` of a recomputation of a value of `root` elements is obtained, `None` when it
/// cannot be.
fn source(graph: &Graph, input: &str, root: usize, depth: usize) -> Option<Source> {
    if input.is_empty() || graph.is_constant(input) {
        return Some(Source::AsIs);
    }
    let size = numel(graph, input)?;
    let small = size.saturating_mul(KEPT_FRACTION) <= root;
    if !small && recomputable(graph, input, root, depth + 1) {
        Some(Source::Rebuilt)
    } else if size < root {
        Some(Source::Kept)
    } else {
        None
    }
}

/// Whether `value` can be rebuilt, within a recomputation of a value of `root` elements, from
/// constants and stored values smaller than the root by recomputable ops.
fn recomputable(graph: &Graph, value: &str, root: usize, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let Some((index, node)) = graph.producer(value) else {
        return false;
    };
    // Ops registered as cheap per element (elementwise and layout ops).
    graph.op(index).def().is_some_and(|def| def.recomputable)
        && node.output.len() == 1
        && node
            .input
            .iter()
            .all(|input| source(graph, input, root, depth).is_some())
}

/// Whether large forward values are recomputed, and those already rebuilt for the backward
/// pass (each is rebuilt once).
#[derive(Debug, Default)]
pub struct Remat {
    /// Keep every forward value instead (`--keep-forward-values`): more memory, fewer kernels.
    pub keep: bool,
    cache: HashMap<String, String>,
}

impl Remat {
    pub fn new(keep: bool) -> Remat {
        Remat {
            keep,
            cache: HashMap::new(),
        }
    }
}

/// `value`, or a recomputation of it when it is large and made from smaller values (see the
/// module doc). Recomputed values are cached, so each is rebuilt once per backward pass.
/// `anchor` is a backward value the use depends on anyway: the recomputation runs after it.
pub(crate) fn recomputed(
    graph: &mut Graph,
    value: &str,
    anchor: &str,
    remat: &mut Remat,
) -> Result<String> {
    if remat.keep {
        return Ok(value.to_string());
    }
    let cache = &mut remat.cache;
    if let Some(done) = cache.get(value) {
        return Ok(done.clone());
    }
    let Some(root) = numel(graph, value) else {
        return Ok(value.to_string());
    };
    if !recomputable(graph, value, root, 0) {
        return Ok(value.to_string());
    }
    let mut late = LateInputs {
        anchor,
        root,
        zero: None,
        copies: HashMap::new(),
    };
    rebuild(graph, value, cache, &mut late)
}

/// The small inputs of one recomputation, read after its anchor.
struct LateInputs<'a> {
    anchor: &'a str,
    /// Elements of the value recomputed.
    root: usize,
    /// `0 * int(first element of anchor)`, built once for all inputs.
    zero: Option<String>,
    /// Input -> its late copy.
    copies: HashMap<String, String>,
}

/// Clones the ops that make `value`, reading its smaller inputs through [`after`].
fn rebuild(
    graph: &mut Graph,
    value: &str,
    cache: &mut HashMap<String, String>,
    late: &mut LateInputs,
) -> Result<String> {
    if let Some(done) = cache.get(value) {
        return Ok(done.clone());
    }
    let (_, node) = graph
        .producer(value)
        .expect("recomputable values have a producer");
    let node = node.clone();
    let mut inputs = Vec::new();
    for input in &node.input {
        inputs.push(match source(graph, input, late.root, 0) {
            Some(Source::Rebuilt) => rebuild(graph, input, cache, late)?,
            Some(Source::Kept) => after(graph, input, late),
            _ => input.clone(),
        });
    }
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let copy = graph
        .add_node_named(
            "recompute",
            node.op_type(),
            &refs,
            1,
            node.attribute.clone(),
        )
        .remove(0);
    cache.insert(value.to_string(), copy.clone());
    Ok(copy)
}

/// `value` plus a zero computed from `anchor`'s data, so that it exists only once `anchor`
/// does: `value + float(0 * int(first element of anchor))`. The integer round trip makes the
/// zero exact whatever the anchor holds (a float 0 * anchor would be NaN for an infinite one),
/// and reading data, not just the shape, keeps runtimes from folding the dependency away. The
/// values ordered this way are the small inputs of a recomputation, so the copy is cheap. (A
/// `Where(flag, value, value)` with a scalar flag cost ONNX Runtime 0.2 s per explanation, and
/// tract accepts no `Reshape` to a computed shape.)
fn after(graph: &mut Graph, value: &str, late: &mut LateInputs) -> String {
    if let Some(copy) = late.copies.get(value) {
        return copy.clone();
    }
    let zero = match &late.zero {
        Some(zero) => zero.clone(),
        None => {
            let flat = graph.const_i64(&[-1]);
            let flat = graph.add_node("Reshape", &[late.anchor, &flat], vec![]);
            let first = graph.scalar_i64(0);
            let element = graph.add_node("Gather", &[&flat, &first], vec![]);
            let whole = graph.add_node(
                "Cast",
                &[&element],
                vec![make_int("to", DType::Int64.onnx() as i64)],
            );
            let zero = graph.scalar_i64(0);
            let zero = graph.op_binary("Mul", &whole, &zero);
            late.zero = Some(zero.clone());
            zero
        }
    };
    let dtype = graph.dtype_of(value);
    let nothing = graph.add_node("Cast", &[&zero], vec![make_int("to", dtype.onnx() as i64)]);
    let copy = graph.op_binary("Add", value, &nothing);
    late.copies.insert(value.to_string(), copy.clone());
    copy
}

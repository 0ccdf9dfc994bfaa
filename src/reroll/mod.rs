//! Re-rolling the selective scan. Exporters unroll `h_t = dA_t * h_{t-1} + dBu_t`,
//! `y_t = <h_t, C_t>` into S copies per layer (Gather, Mul, Add, [Cast], Gather, Unsqueeze,
//! MatMul, Gather, then Unsqueeze + Concat). This pass finds each chain and replaces it with one
//! ONNX `Scan` over chunks of steps, so the graph (and the relevance pass over it) no longer
//! grows with S.
pub mod bodies;
mod body;
mod chain;
pub mod chunked;
mod layout;
pub mod parallel;

pub use bodies::SELECTIVE_SCAN;
pub use chain::Chain;
pub use chunked::SELECTIVE_SCAN_CHUNKED;
pub use layout::selective_scan;

use std::collections::HashSet;

use crate::error::Result;
pub use crate::ir::ScanKind;
use crate::ir::{topo, Graph};
use crate::onnx::proto::NodeProto;

/// How the recurrence appears in the compiled model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScanForm {
    /// One ONNX `Scan` per layer, forward and backward, stepping through the tokens (a few
    /// per iteration): size independent of the length.
    #[default]
    Rolled,
    /// One ONNX `Scan` per layer over chunks of steps, each chunk computed in parallel from
    /// cumulative sums of log dA (Mamba-2's SSD algebra); size independent of the length.
    Chunked,
    /// No `Scan`: every chunk at once from cumulative sums of log dA, the state passed between
    /// chunks by log-depth doubling; a fixed number of ops per layer for any length (for GPUs).
    Parallel,
    /// As exported: one copy of the step per time step.
    Unrolled,
}

impl ScanForm {
    pub fn name(self) -> &'static str {
        match self {
            ScanForm::Rolled => "rolled",
            ScanForm::Chunked => "chunked",
            ScanForm::Parallel => "parallel",
            ScanForm::Unrolled => "unrolled",
        }
    }
}

impl std::fmt::Display for ScanForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ScanForm {
    /// The Scan kind of a form that emits `Scan`s (`None` for the parallel and unrolled ones).
    pub fn kind(self) -> Option<ScanKind> {
        match self {
            ScanForm::Rolled => Some(ScanKind::Stepwise),
            ScanForm::Chunked => Some(ScanKind::Chunked),
            ScanForm::Parallel | ScanForm::Unrolled => None,
        }
    }

    /// A form whose size does not grow with the length (every form but the unrolled one).
    pub fn is_compact(self) -> bool {
        self != ScanForm::Unrolled
    }

    /// Steps per Scan iteration when `--chunk-len` is not given.
    pub fn default_chunk_len(self) -> usize {
        match self {
            ScanForm::Chunked => chunked::DEFAULT_CHUNK_LEN as usize,
            ScanForm::Parallel => parallel::DEFAULT_CHUNK_LEN,
            _ => bodies::DEFAULT_STEPS_PER_ITERATION as usize,
        }
    }
}

/// What [`reroll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rerolled {
    /// Chains replaced by a `Scan`.
    pub scans: usize,
    /// Steps per Scan iteration actually used.
    pub chunk_len: usize,
}

/// Replaces every unrolled selective-scan chain by the compact `form` over chunks of up to
/// `len` steps. With `symbolic_length` (`Some(longest)`) the time axis is padded at run time to
/// whole chunks, and the parallel form serves lengths up to `longest` (the Scan forms serve
/// any); otherwise the Scan forms take the largest divisor of the traced length up to `len`
/// (the parallel form pads). With `keep_states` a Scan also outputs all states (the gradient x
/// input backward needs them). The caller re-analyses the graph.
pub fn reroll(
    graph: &mut Graph,
    form: ScanForm,
    len: usize,
    keep_states: bool,
    symbolic_length: Option<usize>,
) -> Result<Rerolled> {
    let chains = chain::find_all(graph)?;
    let len = len.max(1);
    let mut chunk_len = len;
    if chains.is_empty() {
        return Ok(Rerolled {
            scans: 0,
            chunk_len,
        });
    }
    let used_before: HashSet<String> = used_values(graph);
    for chain in &chains {
        match form.kind() {
            Some(kind) => {
                let symbolic = symbolic_length.is_some();
                if !symbolic {
                    chunk_len = layout::dividing_chunk_len(chain.dims.2, len);
                }
                layout::emit(graph, chain, kind, chunk_len, keep_states, symbolic)?;
            }
            None => parallel::emit(graph, chain, len, symbolic_length)?,
        }
    }
    topo::remove_dead_nodes(graph, |_| true)?;
    topo::sort_nodes(graph)?;
    let used_after = used_values(graph);
    graph.retain_initializers(|name| !used_before.contains(name) || used_after.contains(name));
    Ok(Rerolled {
        scans: chains.len(),
        chunk_len,
    })
}

/// The kind of a forward selective `Scan` the compiler emitted (as `graph` recorded it), `None`
/// for any other node.
pub fn forward_scan_kind(graph: &Graph, node: &NodeProto) -> Option<ScanKind> {
    graph.forward_scan_kind(node)
}

/// True for the forward selective-scan `Scan` nodes this pass creates, of either kind.
pub fn is_forward_scan(graph: &Graph, node: &NodeProto) -> bool {
    forward_scan_kind(graph, node).is_some()
}

fn used_values(graph: &Graph) -> HashSet<String> {
    graph
        .nodes()
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.output_names().map(str::to_string))
        .collect()
}

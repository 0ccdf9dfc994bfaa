//! The compiler's view of an ONNX graph: nodes as in the file, each parsed once against the op
//! table (`crate::ops`), plus indexes (who produces and who consumes each value), static types,
//! known constants, the records of the selective scans the compiler emitted, and the edit API
//! (`edit.rs`) through which every pass changes the graph, keeping all of these valid.
mod dataflow;
mod edit;
mod graph;
mod ops;
pub mod scan;
pub mod shapes;
mod symbols;
pub mod topo;

pub use crate::onnx::{value_info, DType};
pub use dataflow::{is_constant_equal, is_zero_fill, produced_by, skip_layout, skip_noops};
pub use edit::{node_key, Edge};
pub use graph::{Graph, ValueType, BATCH_AXIS, BATCH_SIZE_KEY, SEQUENCE_AXIS, SEQUENCE_LENGTH_KEY};
pub use scan::{ScanDirection, ScanKind, SelectiveScan};
pub use symbols::ExportedAxis;

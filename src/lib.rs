//! mambalrp: compiles exported Mamba ONNX graphs into standard-ONNX graphs that compute the
//! original outputs and MambaLRP relevances in one run.
//!
//! Pipeline: [`onnx`] (load) -> [`ir`] -> [`canon`] (canonicalise) -> [`reroll`] -> [`rules`] (match) -> [`autodiff`]
//! (differentiate) -> [`emit`] -> [`verify`], run by [`compile`](mod@compile) as a named list of timed phases.
//!
//! Everything the passes know about an ONNX op (operand counts, attributes, shape inference,
//! linearity class, vector-Jacobian rule, folding) is registered once in the op table, [`ops`];
//! the graph ([`ir::Graph`]) parses each node once against it, and passes change the graph only
//! through its edit methods, which keep its indexes and types valid.
pub mod autodiff;
pub mod canon;
pub mod compile;
pub mod emit;
pub mod error;
pub mod explain;
pub mod ir;
pub mod onnx;
pub mod ops;
pub mod reroll;
pub mod rules;
pub mod verify;

pub use compile::{compile, compile_owned, CompileReport, Compiled, Options, Precision};
pub use error::{Error, Result};

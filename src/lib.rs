//! mambalrp: compiles exported Mamba ONNX graphs into standard-ONNX graphs that compute the
//! original outputs and MambaLRP relevances in one run.
//!
//! Pipeline: [`onnx`] (load) -> [`ir`] -> [`reroll`] -> [`rules`] (match) -> [`autodiff`] (differentiate) ->
//! [`emit`] -> [`verify`].
pub mod autodiff;
pub mod compile;
pub mod emit;
pub mod error;
pub mod ir;
pub mod onnx;
pub mod ops;
pub mod reroll;
pub mod rules;
pub mod verify;

pub use compile::{compile, compile_owned, CompileReport, Compiled, Options};
pub use error::{Error, Result};

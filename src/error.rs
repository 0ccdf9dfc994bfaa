//! The library's error type: every failure names the file, node, op or tensor it is about.
//! Underlying I/O and decoding errors are sources, not repeated in the message.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an ONNX model (protobuf decoding failed)")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("{0}")]
    InvalidModel(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("node '{node}' ({op}): {message}")]
    Node {
        node: String,
        op: String,
        message: String,
    },
    #[error("tensor '{tensor}': {message}")]
    Tensor { tensor: String, message: String },
    #[error("relevance path is not linear under the MambaLRP rules: node '{node}' ({op}) {why}")]
    NotLinear {
        node: String,
        op: String,
        why: String,
    },
    #[error("no vector-Jacobian rule for op {op} (node '{node}') on the relevance path{detail}")]
    NoVjp {
        node: String,
        op: String,
        detail: String,
    },
    #[error("verification failed: {0}")]
    Verify(String),
    #[error("runtime error in {runtime}: {message}")]
    Runtime {
        runtime: &'static str,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn node(node: &crate::onnx::proto::NodeProto, message: impl Into<String>) -> Self {
        Error::Node {
            node: node.name().to_string(),
            op: node.op_type().to_string(),
            message: message.into(),
        }
    }

    pub fn tensor(tensor: &str, message: impl Into<String>) -> Self {
        Error::Tensor {
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}

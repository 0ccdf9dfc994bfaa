//! Element types by name: the compiler never compares raw ONNX type codes.
use std::fmt;

use crate::onnx::proto::tensor_proto::DataType;

/// An ONNX tensor element type. Codes the compiler has no use for stay as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    Float,
    Double,
    Float16,
    BFloat16,
    Int64,
    Int32,
    Int8,
    Uint8,
    Bool,
    Other(i32),
}

impl DType {
    /// The type an ONNX `elem_type` / `data_type` / Cast `to` code names.
    pub fn from_onnx(code: i32) -> DType {
        match DataType::try_from(code) {
            Ok(DataType::Float) => DType::Float,
            Ok(DataType::Double) => DType::Double,
            Ok(DataType::Float16) => DType::Float16,
            Ok(DataType::Bfloat16) => DType::BFloat16,
            Ok(DataType::Int64) => DType::Int64,
            Ok(DataType::Int32) => DType::Int32,
            Ok(DataType::Int8) => DType::Int8,
            Ok(DataType::Uint8) => DType::Uint8,
            Ok(DataType::Bool) => DType::Bool,
            _ => DType::Other(code),
        }
    }

    /// The ONNX code, for writing protos and Cast attributes.
    pub fn onnx(self) -> i32 {
        let code = match self {
            DType::Float => DataType::Float,
            DType::Double => DataType::Double,
            DType::Float16 => DataType::Float16,
            DType::BFloat16 => DataType::Bfloat16,
            DType::Int64 => DataType::Int64,
            DType::Int32 => DataType::Int32,
            DType::Int8 => DataType::Int8,
            DType::Uint8 => DataType::Uint8,
            DType::Bool => DataType::Bool,
            DType::Other(code) => return code,
        };
        code as i32
    }

    /// Floating-point types: the ones that carry relevance.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::Float | DType::Double | DType::Float16 | DType::BFloat16
        )
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DType::Int64 | DType::Int32 | DType::Int8 | DType::Uint8
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Float => "float32",
            DType::Double => "float64",
            DType::Float16 => "float16",
            DType::BFloat16 => "bfloat16",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
            DType::Int8 => "int8",
            DType::Uint8 => "uint8",
            DType::Bool => "bool",
            DType::Other(_) => "other",
        }
    }
}

/// Written by name in reports (`"float32"`).
impl serde::Serialize for DType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::Other(code) => write!(f, "ONNX type {code}"),
            known => f.write_str(known.name()),
        }
    }
}

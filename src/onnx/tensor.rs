//! Conversion between `TensorProto` and the small in-memory tensors the compiler computes with.
use super::DType;
use ndarray::{ArrayD, IxDyn};

use super::proto::{tensor_proto::DataType, TensorProto};
use crate::error::{Error, Result};

/// A constant tensor known at compile time (weights, folded shape arithmetic).
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            Tensor::F32(a) => a.shape(),
            Tensor::I64(a) => a.shape(),
            Tensor::Bool(a) => a.shape(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::Float,
            Tensor::I64(_) => DType::Int64,
            Tensor::Bool(_) => DType::Bool,
        }
    }

    /// The values as integers (floats are truncated), for shape arithmetic and indices.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match self {
            Tensor::F32(a) => a.iter().map(|&v| v as i64).collect(),
            Tensor::I64(a) => a.iter().copied().collect(),
            Tensor::Bool(a) => a.iter().map(|&v| v as i64).collect(),
        }
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Tensor::F32(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::I64(a) => a.iter().map(|&v| v as f64).collect(),
            Tensor::Bool(a) => a.iter().map(|&v| v as u8 as f64).collect(),
        }
    }

    pub fn to_proto(&self, name: &str) -> TensorProto {
        let dims = self.shape().iter().map(|&d| d as i64).collect();
        let mut proto = TensorProto {
            name: Some(name.to_string()),
            dims,
            data_type: Some(self.dtype().onnx()),
            ..Default::default()
        };
        let raw: Vec<u8> = match self {
            Tensor::F32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Tensor::I64(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Tensor::Bool(a) => a.iter().map(|&v| v as u8).collect(),
        };
        proto.raw_data = Some(raw.into());
        proto
    }
}

fn element_count(dims: &[i64], name: &str) -> Result<usize> {
    let mut count: usize = 1;
    for &d in dims {
        let d = usize::try_from(d)
            .map_err(|_| Error::tensor(name, format!("negative dimension {d}")))?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| Error::tensor(name, "dimensions overflow"))?;
    }
    Ok(count)
}

fn check_len(name: &str, what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::tensor(
            name,
            format!("{what} holds {got} elements but its dims declare {expected}"),
        ))
    }
}

fn from_raw<T, const N: usize>(
    raw: &[u8],
    count: usize,
    name: &str,
    decode: fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    if !raw.len().is_multiple_of(N) {
        return Err(Error::tensor(
            name,
            "raw_data length is not a multiple of the element size",
        ));
    }
    check_len(name, "raw_data", raw.len() / N, count)?;
    Ok(raw
        .chunks_exact(N)
        .map(|c| decode(c.try_into().expect("chunks_exact yields N bytes")))
        .collect())
}

/// Decodes an inline tensor; `None` for data types the compiler never needs to read.
pub fn tensor_from_proto(proto: &TensorProto) -> Result<Option<Tensor>> {
    let name = proto.name();
    if proto.data_location == Some(1) {
        return Err(Error::tensor(
            name,
            "external data must be resolved before decoding",
        ));
    }
    let count = element_count(&proto.dims, name)?;
    let shape = IxDyn(&proto.dims.iter().map(|&d| d as usize).collect::<Vec<_>>());
    let raw = proto.raw_data.as_deref();
    let tensor = match DataType::try_from(proto.data_type()) {
        Ok(DataType::Float) => {
            let values = match raw {
                Some(raw) => from_raw(raw, count, name, f32::from_le_bytes)?,
                None => {
                    check_len(name, "float_data", proto.float_data.len(), count)?;
                    proto.float_data.clone()
                }
            };
            Tensor::F32(
                ArrayD::from_shape_vec(shape, values)
                    .map_err(|e| Error::tensor(name, e.to_string()))?,
            )
        }
        Ok(dtype @ (DataType::Int64 | DataType::Int32)) => {
            let values = match (raw, dtype) {
                (Some(raw), DataType::Int64) => from_raw(raw, count, name, i64::from_le_bytes)?,
                (Some(raw), _) => {
                    from_raw(raw, count, name, |b: [u8; 4]| i32::from_le_bytes(b) as i64)?
                }
                (None, DataType::Int64) => {
                    check_len(name, "int64_data", proto.int64_data.len(), count)?;
                    proto.int64_data.clone()
                }
                (None, _) => {
                    check_len(name, "int32_data", proto.int32_data.len(), count)?;
                    proto.int32_data.iter().map(|&v| v as i64).collect()
                }
            };
            Tensor::I64(
                ArrayD::from_shape_vec(shape, values)
                    .map_err(|e| Error::tensor(name, e.to_string()))?,
            )
        }
        Ok(DataType::Bool) => {
            let values: Vec<bool> = match raw {
                Some(raw) => {
                    check_len(name, "raw_data", raw.len(), count)?;
                    raw.iter().map(|&b| b != 0).collect()
                }
                None => {
                    check_len(name, "int32_data", proto.int32_data.len(), count)?;
                    proto.int32_data.iter().map(|&v| v != 0).collect()
                }
            };
            Tensor::Bool(
                ArrayD::from_shape_vec(shape, values)
                    .map_err(|e| Error::tensor(name, e.to_string()))?,
            )
        }
        _ => return Ok(None),
    };
    Ok(Some(tensor))
}

/// Bits per element of the data types whose size is fixed.
fn element_bits(data_type: i32) -> Option<usize> {
    Some(match DataType::try_from(data_type).ok()? {
        DataType::Float | DataType::Int32 | DataType::Uint32 => 32,
        DataType::Uint8 | DataType::Int8 | DataType::Bool => 8,
        DataType::Uint16 | DataType::Int16 | DataType::Float16 | DataType::Bfloat16 => 16,
        DataType::Int64 | DataType::Uint64 | DataType::Double | DataType::Complex64 => 64,
        DataType::Complex128 => 128,
        DataType::Float8e4m3fn
        | DataType::Float8e4m3fnuz
        | DataType::Float8e5m2
        | DataType::Float8e5m2fnuz
        | DataType::Float8e8m0 => 8,
        DataType::Uint4 | DataType::Int4 | DataType::Float4e2m1 => 4,
        DataType::Uint2 | DataType::Int2 => 2,
        DataType::String | DataType::Undefined => return None,
    })
}

/// Checks that a tensor's data matches its declared dims and type, without decoding it, so a
/// lying file is refused before anything relies on it.
pub fn validate_tensor(proto: &TensorProto) -> Result<()> {
    let name = proto.name();
    let count = element_count(&proto.dims, name)?;
    if proto.data_location == Some(1) {
        return Ok(()); // checked when the external data is read
    }
    let Some(bits) = element_bits(proto.data_type()) else {
        return Ok(());
    };
    if let Some(raw) = &proto.raw_data {
        let expected = count.checked_mul(bits).map(|b| b.div_ceil(8));
        if expected != Some(raw.len()) {
            return Err(Error::tensor(
                name,
                format!(
                    "raw_data holds {} bytes but dims {:?} of this type need {}",
                    raw.len(),
                    proto.dims,
                    expected.map_or("too many".to_string(), |e| e.to_string())
                ),
            ));
        }
        return Ok(());
    }
    let typed = proto.float_data.len()
        + proto.int32_data.len()
        + proto.int64_data.len()
        + proto.double_data.len()
        + proto.uint64_data.len();
    let per_element = if proto.data_type() == DataType::Complex64 as i32
        || proto.data_type() == DataType::Complex128 as i32
    {
        2
    } else {
        1
    };
    let packed = bits < 8 && proto.int32_data.len() == count.div_ceil(32 / bits);
    if typed != count * per_element && !packed && !(bits == 16 && proto.int32_data.len() == count) {
        return Err(Error::tensor(
            name,
            format!(
                "holds {typed} values but its dims {:?} declare {count}",
                proto.dims
            ),
        ));
    }
    Ok(())
}

/// Bytes the tensor's data takes in raw form.
pub fn byte_size(proto: &TensorProto) -> Result<usize> {
    let count = element_count(&proto.dims, proto.name())?;
    let bits = element_bits(proto.data_type()).ok_or_else(|| {
        Error::tensor(
            proto.name(),
            format!(
                "data type {} cannot be stored as external data here",
                proto.data_type()
            ),
        )
    })?;
    count
        .checked_mul(bits)
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| Error::tensor(proto.name(), "byte size overflows"))
}

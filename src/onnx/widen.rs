//! `--precision float32`: a float16 or bfloat16 export rewritten to compute in float32 before
//! anything reads it. Half precision moves MambaLRP's relevance by 10-20% on a 24-layer model
//! (the forward pass's rounding, in PyTorch as much as here), while rounding only the weights
//! moves it by about 1e-4: so the weights keep their half-precision values, widened exactly,
//! and every activation is float32.
//!
//! What changes, in the main graph and every subgraph: half-precision initializers and
//! constant attributes become float32 (the same values), `Cast`s and `dtype` attributes that
//! name a half type name float32 instead, and declared half-precision types (inputs, outputs,
//! value infos) become float32. The result is a float32 model: its outputs, logits included,
//! are float32, and a half-precision input is fed as float32.
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, GraphProto, ModelProto,
    NodeProto, TensorProto, TypeProto, ValueInfoProto,
};
use super::DType;
use crate::error::{Error, Result};

/// What the widening changed, for the compile report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Widened {
    /// Tensors (initializers and constant attributes) converted to float32.
    pub tensors: usize,
    /// `Cast` targets and `dtype` attributes retargeted to float32.
    pub casts: usize,
    /// Declared types (graph inputs, outputs, value infos) changed to float32.
    pub declarations: usize,
    /// The half type the weights were stored in (the first one met).
    pub weights_were: Option<DType>,
}

impl Widened {
    /// Whether the model had anything in half precision.
    pub fn changed_anything(&self) -> bool {
        *self != Widened::default()
    }
}

fn is_half(data_type: i32) -> bool {
    data_type == DataType::Float16 as i32 || data_type == DataType::Bfloat16 as i32
}

/// Rewrites `model` to compute in float32 (see the module doc).
pub fn widen_to_float32(model: &mut ModelProto) -> Result<Widened> {
    let mut widened = Widened::default();
    if let Some(graph) = model.graph.as_mut() {
        widen_graph(graph, &mut widened)?;
    }
    Ok(widened)
}

fn widen_graph(graph: &mut GraphProto, widened: &mut Widened) -> Result<()> {
    for tensor in &mut graph.initializer {
        widen_tensor(tensor, widened)?;
    }
    for declared in graph
        .input
        .iter_mut()
        .chain(&mut graph.output)
        .chain(&mut graph.value_info)
    {
        widen_declaration(declared, widened);
    }
    for node in &mut graph.node {
        widen_node(node, widened)?;
    }
    Ok(())
}

fn widen_node(node: &mut NodeProto, widened: &mut Widened) -> Result<()> {
    let default_domain = node.domain().is_empty() || node.domain() == "ai.onnx";
    let op_type = node.op_type().to_string();
    for attribute in &mut node.attribute {
        if let Some(tensor) = attribute.t.as_mut() {
            widen_tensor(tensor, widened)?;
        }
        for tensor in &mut attribute.tensors {
            widen_tensor(tensor, widened)?;
        }
        // `Cast.to` and the `dtype` of EyeLike and the random generators name an element type.
        let names_type = attribute.r#type == Some(AttributeType::Int as i32)
            && ((op_type == "Cast" && attribute.name() == "to") || attribute.name() == "dtype");
        if default_domain && names_type && attribute.i.is_some_and(|t| is_half(t as i32)) {
            attribute.i = Some(DataType::Float as i64);
            widened.casts += 1;
        }
        if let Some(body) = attribute.g.as_mut() {
            widen_graph(body, widened)?;
        }
        for body in &mut attribute.graphs {
            widen_graph(body, widened)?;
        }
    }
    Ok(())
}

fn widen_declaration(declared: &mut ValueInfoProto, widened: &mut Widened) {
    if let Some(r#type) = declared.r#type.as_mut() {
        if widen_type(r#type) {
            widened.declarations += 1;
        }
    }
}

/// Widens a tensor type, also inside sequence and optional types; whether it changed.
fn widen_type(r#type: &mut TypeProto) -> bool {
    match r#type.value.as_mut() {
        Some(type_proto::Value::TensorType(tensor)) => match tensor.elem_type {
            Some(t) if is_half(t) => {
                tensor.elem_type = Some(DataType::Float as i32);
                true
            }
            _ => false,
        },
        Some(type_proto::Value::SequenceType(sequence)) => {
            sequence.elem_type.as_deref_mut().is_some_and(widen_type)
        }
        Some(type_proto::Value::OptionalType(optional)) => {
            optional.elem_type.as_deref_mut().is_some_and(widen_type)
        }
        _ => false,
    }
}

/// Converts a half-precision tensor's data to float32 (exactly: every half value is a float32
/// value).
fn widen_tensor(tensor: &mut TensorProto, widened: &mut Widened) -> Result<()> {
    let data_type = tensor.data_type();
    if !is_half(data_type) {
        return Ok(());
    }
    let name = tensor.name().to_string();
    if tensor.data_location == Some(1) {
        return Err(Error::tensor(
            &name,
            "external data must be resolved before widening to float32",
        ));
    }
    // Half values are stored as 16-bit patterns: two bytes each in raw_data, or one per
    // int32_data entry.
    let bits: Vec<u16> = match tensor.raw_data.as_deref() {
        Some(raw) => {
            if raw.len() % 2 != 0 {
                return Err(Error::tensor(
                    &name,
                    "raw_data length is not a multiple of 2 bytes",
                ));
            }
            raw.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect()
        }
        None => tensor.int32_data.iter().map(|&v| v as u16).collect(),
    };
    let bfloat = data_type == DataType::Bfloat16 as i32;
    let raw: Vec<u8> = bits
        .iter()
        .map(|&b| {
            if bfloat {
                half::bf16::from_bits(b).to_f32()
            } else {
                half::f16::from_bits(b).to_f32()
            }
        })
        .flat_map(f32::to_le_bytes)
        .collect();
    widened
        .weights_were
        .get_or_insert(DType::from_onnx(data_type));
    tensor.data_type = Some(DataType::Float as i32);
    tensor.raw_data = Some(raw.into());
    tensor.int32_data.clear();
    widened.tensors += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::attributes::make_int;

    fn half_tensor(values: &[f32]) -> TensorProto {
        TensorProto {
            name: Some("w".into()),
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Float16 as i32),
            raw_data: Some(
                values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn half_weights_casts_and_declarations_become_float32_with_the_same_values() {
        let cast = NodeProto {
            op_type: Some("Cast".into()),
            input: vec!["x".into()],
            output: vec!["y".into()],
            attribute: vec![make_int("to", DataType::Float16 as i64)],
            ..Default::default()
        };
        let mut model = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![half_tensor(&[1.5, -0.25, 65504.0])],
                node: vec![cast],
                output: vec![crate::onnx::value_info("y", DType::Float16, &[3])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let widened = widen_to_float32(&mut model).unwrap();
        assert_eq!(
            widened,
            Widened {
                tensors: 1,
                casts: 1,
                declarations: 1,
                weights_were: Some(DType::Float16),
            }
        );
        let graph = model.graph.unwrap();
        let weights = crate::onnx::tensor::tensor_from_proto(&graph.initializer[0])
            .unwrap()
            .unwrap();
        assert_eq!(weights.to_f64_vec(), vec![1.5, -0.25, 65504.0]);
        assert_eq!(
            crate::onnx::attributes::int(&graph.node[0], "to"),
            Some(DataType::Float as i64)
        );
    }

    #[test]
    fn a_float32_model_is_left_as_it_is() {
        let mut model = ModelProto {
            graph: Some(GraphProto {
                output: vec![crate::onnx::value_info("y", DType::Float, &[3])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let before = model.clone();
        assert!(!widen_to_float32(&mut model).unwrap().changed_anything());
        assert_eq!(model, before);
    }
}

//! `--dynamic-seq`: a compiled model that explains any sequence length. Exports are traced at one
//! length S; once the scan is re-rolled, what still bakes S in is the causal Conv's `Slice`
//! (ends = S) and the declared shapes. This pass rewrites the Slice to end K-1 before the end,
//! names the sequence axis in the inputs and outputs, and drops the traced intermediate shapes.
use crate::error::{Error, Result};
use crate::ir::shapes::slice_spec;
use crate::ir::{Graph, SEQUENCE_AXIS};
use crate::onnx::proto::{tensor_shape_proto::dimension, type_proto, ValueInfoProto};
use crate::rules::skip_noops;

/// Rewrites `graph` so its sequence axis (length `traced` in the export) is symbolic. `inputs`
/// are the graph inputs with a sequence axis at position 1.
pub fn make_sequence_symbolic(graph: &mut Graph, traced: usize, inputs: &[String]) -> Result<()> {
    let mut rewrites = Vec::new();
    for (index, node) in graph.nodes().iter().enumerate() {
        if node.op_type() != "Slice" || node.input.len() < 3 {
            continue;
        }
        let source = skip_noops(graph, &node.input[0]);
        let from_conv = graph
            .producer(source)
            .is_some_and(|(_, n)| n.op_type() == "Conv");
        let shape = graph.shape(&node.input[0])?.to_vec();
        if !from_conv || shape.len() != 3 {
            continue;
        }
        let spec = slice_spec(graph, node, &shape)?;
        let overhang = shape[2].checked_sub(traced).filter(|&k| k > 0);
        match (spec.as_slice(), overhang) {
            ([(2, 0, end, 1)], Some(k)) if *end as usize == traced => rewrites.push((index, k)),
            _ => {
                return Err(Error::node(
                    node,
                    "cannot make the sequence axis symbolic: unexpected slice of a Conv output",
                ));
            }
        }
    }
    for (index, overhang) in rewrites {
        let end = graph.const_i64(&[-(overhang as i64)]);
        graph.proto.node[index].input[2] = end;
    }
    graph.reindex();

    for vi in graph
        .proto
        .input
        .iter_mut()
        .filter(|i| inputs.contains(&i.name().to_string()))
    {
        name_axis(vi, 1, traced)?;
    }
    for vi in graph.proto.output.iter_mut() {
        let axis = if vi.name() == crate::emit::RELEVANCE_LAYERS {
            2
        } else {
            1
        };
        let _ = name_axis(vi, axis, traced);
    }
    // Intermediate shapes were recorded at the traced length.
    graph.proto.value_info.clear();
    Ok(())
}

/// Gives dim `axis` of a declared tensor type the symbolic name, if it has the traced length.
fn name_axis(vi: &mut ValueInfoProto, axis: usize, traced: usize) -> Result<()> {
    let name = vi.name().to_string();
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        return Err(Error::tensor(&name, "not a tensor"));
    };
    let dim = t
        .shape
        .as_mut()
        .and_then(|s| s.dim.get_mut(axis))
        .ok_or_else(|| Error::tensor(&name, "no sequence axis"))?;
    match dim.value {
        Some(dimension::Value::DimValue(v)) if v as usize == traced => {
            dim.value = Some(dimension::Value::DimParam(SEQUENCE_AXIS.to_string()));
            Ok(())
        }
        _ => Err(Error::tensor(
            &name,
            format!("axis {axis} does not have the traced length {traced}"),
        )),
    }
}

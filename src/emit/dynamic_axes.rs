//! `--dynamic-seq` / `--dynamic-batch`: a compiled model that explains any sequence length or
//! batch size. Exports are traced at one (B, S); once the scan is re-rolled, what still bakes
//! them in is the causal Conv's `Slice` (ends = S), the zero initial SSM state ([B, D, N]) and
//! the declared shapes. These passes rewrite those and name the axes.
use crate::error::{Error, Result};
use crate::ir::{scan, skip_noops, Graph, BATCH_AXIS, SEQUENCE_AXIS};
use crate::onnx::proto::{tensor_shape_proto::dimension, type_proto, GraphProto, ValueInfoProto};
use crate::ops::slice_spec;

/// Makes the sequence axis (length `traced`) symbolic. `inputs` are the graph inputs with a
/// sequence axis at position 1.
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
        if !from_conv {
            continue;
        }
        let shape = graph.shape(&node.input[0])?.to_vec();
        if shape.len() != 3 {
            continue;
        }
        let spec = slice_spec(graph, node, graph.op(index).attrs(), &shape)?;
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
        // Slice's `ends` operand.
        graph.set_node_input(index, 2, &end);
    }
    for vi in graph
        .input_declarations_mut()
        .filter(|i| inputs.contains(&i.name().to_string()))
    {
        name_axis(vi, 1, traced, SEQUENCE_AXIS)?;
    }
    for vi in graph.output_declarations_mut() {
        let axis = if vi.name() == crate::emit::RELEVANCE_LAYERS {
            2
        } else {
            1
        };
        let _ = name_axis(vi, axis, traced, SEQUENCE_AXIS);
    }
    // Intermediate shapes were recorded at the traced length.
    graph.clear_value_info();
    Ok(())
}

/// Makes the batch axis (size `traced`) symbolic. `inputs` are the graph inputs with a batch
/// axis at position 0; `reference` is one of them, whose runtime batch sizes the initial states.
pub fn make_batch_symbolic(
    graph: &mut Graph,
    traced: usize,
    inputs: &[String],
    reference: &str,
) -> Result<()> {
    let scans: Vec<usize> = (0..graph.nodes().len())
        .filter(|&i| graph.forward_scan_kind(graph.node(i)).is_some())
        .collect();
    let mut initial_states: Vec<String> = scans
        .iter()
        .map(|&i| graph.node(i).input[scan::H0].clone())
        .collect();
    initial_states.sort();
    initial_states.dedup();
    // The runtime batch of `reference`, computed once for every initial state.
    let full_shape = graph.add_node("Shape", &[reference], vec![]);
    let batch = graph.op_slice(&full_shape, 0, 0, 1);
    for h0 in initial_states {
        let zero = crate::ir::is_zero_fill(graph, &h0);
        let shape = graph.shape(&h0)?.to_vec();
        let [b, d, n] = shape[..] else {
            return Err(Error::tensor(&h0, "initial state is not [B, D, N]"));
        };
        if !zero || b != traced {
            return Err(Error::tensor(&h0, "cannot make the batch axis symbolic: the initial SSM state is not a zero constant of the traced batch"));
        }
        // zeros [batch, D, N] from the runtime batch of `reference`, for the forward scans and
        // for the backward pass, which shaped its zeros like the initial state.
        let existing = graph.nodes().len();
        let rest = graph.const_i64(&[d as i64, n as i64]);
        let dims = graph.add_node(
            "Concat",
            &[&batch, &rest],
            vec![crate::onnx::attributes::make_int("axis", 0)],
        );
        let zero_scalar = graph.scalar_like(0.0, &h0);
        let state = graph.add_node("Expand", &[&zero_scalar, &dims], vec![]);
        graph.replace_uses_before(&h0, &state, existing);
    }
    // Every selective-scan body we emitted (forward and backward) declares [B, ...] inputs and
    // outputs.
    let emitted_scans: Vec<usize> = (0..graph.nodes().len())
        .filter(|&i| graph.selective_scan(graph.node(i)).is_some())
        .collect();
    for index in emitted_scans {
        for attribute in graph.node_attributes_mut(index).iter_mut() {
            if let Some(body) = attribute.g.as_mut() {
                name_body_batch(body, traced);
            }
        }
    }
    crate::ir::topo::sort_nodes(graph)?;
    for vi in graph
        .input_declarations_mut()
        .filter(|i| inputs.contains(&i.name().to_string()))
    {
        name_axis(vi, 0, traced, BATCH_AXIS)?;
    }
    for vi in graph.output_declarations_mut() {
        let axis = usize::from(vi.name() == crate::emit::RELEVANCE_LAYERS);
        let _ = name_axis(vi, axis, traced, BATCH_AXIS);
    }
    graph.clear_value_info();
    Ok(())
}

/// Leaves the batch dim of a Scan body's inputs and outputs unspecified: body shapes are
/// unified with the enclosing graph's at run time.
fn name_body_batch(body: &mut GraphProto, traced: usize) {
    for vi in body.input.iter_mut().chain(body.output.iter_mut()) {
        if let Some(type_proto::Value::TensorType(t)) =
            vi.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(dim) = t.shape.as_mut().and_then(|s| s.dim.get_mut(0)) {
                if dim.value == Some(dimension::Value::DimValue(traced as i64)) {
                    dim.value = None;
                }
            }
        }
    }
}

/// Gives dim `axis` of a declared tensor type the symbolic name `symbol`, if it has the traced
/// size.
fn name_axis(vi: &mut ValueInfoProto, axis: usize, traced: usize, symbol: &str) -> Result<()> {
    let name = vi.name().to_string();
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        return Err(Error::tensor(&name, "not a tensor"));
    };
    let dim = t
        .shape
        .as_mut()
        .and_then(|s| s.dim.get_mut(axis))
        .ok_or_else(|| Error::tensor(&name, format!("no axis {axis}")))?;
    match dim.value {
        Some(dimension::Value::DimValue(v)) if v as usize == traced => {
            dim.value = Some(dimension::Value::DimParam(symbol.to_string()));
            Ok(())
        }
        _ => Err(Error::tensor(
            &name,
            format!("axis {axis} does not have the traced size {traced}"),
        )),
    }
}

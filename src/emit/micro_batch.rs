//! `--micro-batch N`: the compiled model wrapped in one ONNX `Scan` whose iterations each run
//! N samples of the batch, so that a batch of any size needs the memory of N samples (plus its
//! outputs). The relevance pass keeps a few `[B, S, d_inner]` values per layer and each layer's
//! scan works on `[B, d_inner, S, state]` tensors: on the 130M model that is about 7 GiB of
//! working set per sample at 2048 tokens on a GPU, which a batch of 8 multiplied to 60 GiB.
//! Samples are independent, so running them a group at a time changes nothing but, at most,
//! float rounding (kernels may vectorise a different batch differently).
//!
//! The wrapper is built on the finished graph: its nodes become the Scan body (the weights stay
//! initializers of the outer graph, which the body reads from the enclosing scope, as ONNX
//! allows). Outside: the batch is padded to whole groups and reshaped to `[groups, N, ..]`;
//! the Scan stacks each group's outputs; they are reshaped back and cut to the batch. With one
//! sample per group nothing is padded and the body squeezes the sample axis from its outputs,
//! so the Scan's outputs are the model's: no copy of them is made (on a GPU the outer reshape
//! copied the logits, 3.3 GB at 8 x 2048 on the 130M model).
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::onnx::attributes::{make_graph, make_int, make_ints, make_tensor};
use crate::onnx::proto::tensor_shape_proto::{dimension, Dimension};
use crate::onnx::proto::{type_proto, GraphProto, NodeProto, ValueInfoProto};
use crate::onnx::Tensor;

/// Prefix of every name the wrapper adds (outer nodes and the body's renamed inputs/outputs).
const PREFIX: &str = "mambalrp/micro_batch";

/// Wraps `graph` (inputs batch-first, every output with the batch on some axis, the batch
/// axis symbolic) so that it runs `samples` samples per Scan iteration.
pub fn wrap(graph: GraphProto, samples: usize) -> Result<GraphProto> {
    if samples == 0 {
        return Err(Error::Unsupported(
            "--micro-batch takes a positive number of samples".into(),
        ));
    }
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name()).collect();
    let inputs: Vec<ValueInfoProto> = graph
        .input
        .iter()
        .filter(|vi| !initializers.contains(vi.name()))
        .cloned()
        .collect();
    let batch_symbol = inputs.iter().find_map(leading_symbol).ok_or_else(|| {
        Error::Unsupported(
            "--micro-batch needs a symbolic batch axis (the first axis of the model's inputs)"
                .into(),
        )
    })?;
    let batched = |vi: &ValueInfoProto| leading_symbol(vi).as_deref() == Some(&batch_symbol);
    let unbatched: Vec<&str> = inputs
        .iter()
        .filter(|vi| !batched(vi))
        .map(|vi| vi.name())
        .collect();
    if !unbatched.is_empty() {
        return Err(Error::Unsupported(format!(
            "--micro-batch: input(s) {unbatched:?} have no leading '{batch_symbol}' axis, so the \
             batch cannot be split"
        )));
    }
    // Outputs may hold the batch on another axis (`relevance_layers` is [layers, batch, seq]).
    let mut output_axes = Vec::new();
    for vi in &graph.output {
        let axis = symbol_axis(vi, &batch_symbol).ok_or_else(|| {
            Error::Unsupported(format!(
                "--micro-batch: output '{}' has no '{batch_symbol}' axis, so the groups' \
                 outputs cannot be stacked",
                vi.name()
            ))
        })?;
        output_axes.push(axis);
    }

    let mut outer = Outer::default();
    let mut body = graph.clone();
    body.name = Some(format!("{PREFIX}/body"));
    body.initializer.clear();
    body.sparse_initializer.clear();
    body.input.clear();
    body.output.clear();
    let mut renames = HashMap::new();
    // Nodes at the body's entry and exit: identities, and with one sample per iteration a
    // Squeeze of the sample axis from each output.
    let mut entries = Vec::new();
    let mut exits = Vec::new();
    let one = samples == 1;
    let axes_constant = |local: &str, axis: usize| {
        let name = format!("{PREFIX}/{local}");
        let tensor = Tensor::I64(ndarray::arr1(&[axis as i64]).into_dyn()).to_proto(&name);
        NodeProto {
            name: Some(format!("{name}_node")),
            op_type: Some("Constant".into()),
            output: vec![name.clone()],
            attribute: vec![make_tensor("value", tensor)],
            ..Default::default()
        }
    };
    for vi in &inputs {
        let name = vi.name();
        let inner = format!("{PREFIX}/{name}");
        let value = format!("{inner}/value");
        renames.insert(name.to_string(), value.clone());
        entries.push(NodeProto {
            name: Some(format!("{value}_node")),
            op_type: Some("Identity".into()),
            input: vec![inner.clone()],
            output: vec![value],
            ..Default::default()
        });
        body.input
            .push(with_name(&with_axis(vi, 0, samples), &inner));
    }
    for (vi, &axis) in graph.output.iter().zip(&output_axes) {
        // The body's output is a node of its own, even where it is an identity: other body
        // nodes may read the value (the logits), and a runtime that rewires an output (tract
        // adds the scan axis there) then changes no other reader.
        let name = vi.name();
        let value = format!("{PREFIX}/{name}/value");
        let inner = format!("{PREFIX}/{name}");
        renames.insert(name.to_string(), value.clone());
        let (op, input) = if one {
            let axes = axes_constant(&format!("{name}/sample_axis"), axis);
            let input = vec![value.clone(), axes.output[0].clone()];
            exits.push(axes);
            ("Squeeze", input)
        } else {
            ("Identity", vec![value.clone()])
        };
        exits.push(NodeProto {
            name: Some(format!("{inner}_node")),
            op_type: Some(op.into()),
            input,
            output: vec![inner.clone()],
            ..Default::default()
        });
        let declared = with_axis(vi, axis, samples);
        body.output.push(with_name(
            &if one {
                without_axis(&declared, axis)
            } else {
                declared
            },
            &inner,
        ));
    }
    rename_values(&mut body, &renames);
    body.node.splice(0..0, entries);
    body.node.extend(exits);

    let output_axes_i64: Vec<i64> = output_axes.iter().map(|&a| a as i64).collect();
    let scan_input_count = inputs.len() as i64;
    let scan = |inputs: Vec<String>, outputs: Vec<String>| NodeProto {
        name: Some(format!("{PREFIX}/scan")),
        op_type: Some("Scan".into()),
        input: inputs,
        output: outputs,
        attribute: vec![
            make_graph("body", body),
            make_int("num_scan_inputs", scan_input_count),
            make_ints("scan_output_axes", &output_axes_i64),
        ],
        ..Default::default()
    };
    let one_i = outer.ints("one", &[1]);
    // The runtime batch (from the first input) and the rows of padding that fill the last
    // group (none with one sample per group).
    let padding = (!one).then(|| {
        let zero = outer.ints("zero", &[0]);
        let first = inputs[0].name().to_string();
        let shape = outer.node("Shape", "batch_shape", &[&first], vec![]);
        let batch = outer.node("Slice", "batch", &[&shape, &zero, &one_i], vec![]);
        let group_size = outer.ints("group_size", &[samples as i64]);
        let spare = outer.ints("spare", &[samples as i64 - 1]);
        let rounded_up = outer.node("Add", "batch_rounded_up", &[&batch, &spare], vec![]);
        let groups = outer.node("Div", "groups", &[&rounded_up, &group_size], vec![]);
        let padded = outer.node("Mul", "padded_batch", &[&groups, &group_size], vec![]);
        let pad_rows = outer.node("Sub", "pad_rows", &[&padded, &batch], vec![]);
        (batch, pad_rows, zero)
    });
    let grouped_lead = outer.ints("grouped_lead", &[-1, samples as i64]);
    let mut scan_inputs = Vec::new();
    for vi in &inputs {
        let name = vi.name();
        let rank = rank_of(vi).ok_or_else(|| {
            Error::Unsupported(format!(
                "--micro-batch: input '{name}' has no declared rank"
            ))
        })?;
        // Pad the batch to whole groups (zeros: any valid token id, target or pixel), then
        // [groups * N, ..] -> [groups, N, ..].
        let padded = if let Some((_, pad_rows, _)) = &padding {
            let before = outer.ints(&format!("{name}/pads_before"), &vec![0; rank]);
            let after_rest = outer.ints(&format!("{name}/pads_after_rest"), &vec![0; rank - 1]);
            let pads = outer.node(
                "Concat",
                &format!("{name}/pads"),
                &[&before, pad_rows, &after_rest],
                vec![make_int("axis", 0)],
            );
            outer.node("Pad", &format!("{name}/padded"), &[name, &pads], vec![])
        } else {
            name.to_string()
        };
        let full = outer.node("Shape", &format!("{name}/shape"), &[name], vec![]);
        let rank_end = outer.ints(&format!("{name}/rank"), &[rank as i64]);
        let rest = outer.node(
            "Slice",
            &format!("{name}/rest"),
            &[&full, &one_i, &rank_end],
            vec![],
        );
        let target = outer.node(
            "Concat",
            &format!("{name}/grouped_shape"),
            &[&grouped_lead, &rest],
            vec![make_int("axis", 0)],
        );
        scan_inputs.push(outer.node(
            "Reshape",
            &format!("{name}/grouped"),
            &[&padded, &target],
            vec![],
        ));
    }
    if one {
        // One sample per iteration: the Scan writes the outputs as they are, so no copy of
        // them (the logits: 3.3 GB at 8 x 2048 on the 130M model) is made outside it.
        let names = graph
            .output
            .iter()
            .map(|vi| vi.name().to_string())
            .collect();
        outer.nodes.push(scan(scan_inputs, names));
        return Ok(GraphProto {
            node: outer.nodes,
            value_info: vec![],
            ..graph
        });
    }

    let stacked: Vec<String> = graph
        .output
        .iter()
        .map(|vi| format!("{PREFIX}/{}/groups", vi.name()))
        .collect();
    outer.nodes.push(scan(scan_inputs, stacked.clone()));
    let (batch, _, zero) = padding.expect("more than one sample per group");
    // [.., groups, N, ..] -> [.., groups * N, ..] -> the first `batch` rows.
    let flat_batch = outer.ints("flat_batch", &[-1]);
    for ((vi, stacked), &axis) in graph.output.iter().zip(&stacked).zip(&output_axes) {
        let name = vi.name();
        let rank = rank_of(vi).unwrap_or(1);
        let full = outer.node("Shape", &format!("{name}/groups_shape"), &[stacked], vec![]);
        let mut parts = Vec::new();
        if axis > 0 {
            let end = outer.ints(&format!("{name}/lead_end"), &[axis as i64]);
            parts.push(outer.node(
                "Slice",
                &format!("{name}/lead"),
                &[&full, &zero, &end],
                vec![],
            ));
        }
        parts.push(flat_batch.clone());
        if axis + 1 < rank {
            let start = outer.ints(&format!("{name}/rest_start"), &[axis as i64 + 2]);
            let end = outer.ints(&format!("{name}/rest_end"), &[rank as i64 + 1]);
            parts.push(outer.node(
                "Slice",
                &format!("{name}/rest"),
                &[&full, &start, &end],
                vec![],
            ));
        }
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let target = outer.node(
            "Concat",
            &format!("{name}/flat_shape"),
            &parts,
            vec![make_int("axis", 0)],
        );
        let flat = outer.node(
            "Reshape",
            &format!("{name}/flat"),
            &[stacked, &target],
            vec![],
        );
        let axes = outer.ints(&format!("{name}/batch_axis"), &[axis as i64]);
        outer.named("Slice", name, &[&flat, &zero, &batch, &axes]);
    }

    Ok(GraphProto {
        node: outer.nodes,
        value_info: vec![],
        ..graph
    })
}

/// The outer graph's new nodes.
#[derive(Default)]
struct Outer {
    nodes: Vec<NodeProto>,
}

impl Outer {
    fn node(
        &mut self,
        op: &str,
        local: &str,
        inputs: &[&str],
        attribute: Vec<crate::onnx::proto::AttributeProto>,
    ) -> String {
        let output = format!("{PREFIX}/{local}");
        self.nodes.push(NodeProto {
            name: Some(format!("{output}_node")),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            attribute,
            ..Default::default()
        });
        output
    }

    /// A node whose output is the graph output `name`.
    fn named(&mut self, op: &str, name: &str, inputs: &[&str]) {
        self.nodes.push(NodeProto {
            name: Some(format!("{PREFIX}/{name}_node")),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            ..Default::default()
        });
    }

    fn ints(&mut self, local: &str, values: &[i64]) -> String {
        let name = format!("{PREFIX}/{local}");
        let tensor = Tensor::I64(ndarray::arr1(values).into_dyn()).to_proto(&name);
        self.node("Constant", local, &[], vec![make_tensor("value", tensor)])
    }
}

fn dims(vi: &ValueInfoProto) -> Option<&Vec<Dimension>> {
    match vi.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(&t.shape.as_ref()?.dim),
        _ => None,
    }
}

fn rank_of(vi: &ValueInfoProto) -> Option<usize> {
    dims(vi).map(Vec::len)
}

/// The symbol naming the first axis of `vi`, if it has one.
fn leading_symbol(vi: &ValueInfoProto) -> Option<String> {
    match dims(vi)?.first()?.value.as_ref()? {
        dimension::Value::DimParam(symbol) => Some(symbol.clone()),
        _ => None,
    }
}

/// The first axis of `vi` named `symbol`.
fn symbol_axis(vi: &ValueInfoProto, symbol: &str) -> Option<usize> {
    dims(vi)?
        .iter()
        .position(|d| matches!(&d.value, Some(dimension::Value::DimParam(s)) if s == symbol))
}

/// `vi` with axis `axis` fixed at `size` and every other axis left open: the outer graph's
/// symbols mean nothing inside the body, and a runtime that binds them per scope (tract) would
/// see a conflict between the outer value and the body's declared symbol.
fn with_axis(vi: &ValueInfoProto, axis: usize, size: usize) -> ValueInfoProto {
    let mut vi = vi.clone();
    if let Some(type_proto::Value::TensorType(t)) =
        vi.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        if let Some(shape) = t.shape.as_mut() {
            for (k, dim) in shape.dim.iter_mut().enumerate() {
                *dim = Dimension {
                    value: (k == axis).then_some(dimension::Value::DimValue(size as i64)),
                    ..Default::default()
                };
            }
        }
    }
    vi
}

/// `vi` without axis `axis`.
fn without_axis(vi: &ValueInfoProto, axis: usize) -> ValueInfoProto {
    let mut vi = vi.clone();
    if let Some(type_proto::Value::TensorType(t)) =
        vi.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        if let Some(shape) = t.shape.as_mut() {
            if axis < shape.dim.len() {
                shape.dim.remove(axis);
            }
        }
    }
    vi
}

fn with_name(vi: &ValueInfoProto, name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        ..vi.clone()
    }
}

/// Renames values throughout `graph` and the subgraphs it encloses (ONNX names are unique
/// across scopes, so a name means the same value in every nested body).
fn rename_values(graph: &mut GraphProto, renames: &HashMap<String, String>) {
    let rename = |name: &mut String| {
        if let Some(new) = renames.get(name.as_str()) {
            *name = new.clone();
        }
    };
    for node in &mut graph.node {
        node.input.iter_mut().for_each(rename);
        node.output.iter_mut().for_each(rename);
        for attribute in &mut node.attribute {
            if let Some(sub) = attribute.g.as_mut() {
                rename_values(sub, renames);
            }
            for sub in &mut attribute.graphs {
                rename_values(sub, renames);
            }
        }
    }
    for vi in &mut graph.value_info {
        if let Some(name) = vi.name.as_mut() {
            rename(name);
        }
    }
}

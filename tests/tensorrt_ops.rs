//! TensorRT cannot be installed on our machines, so its acceptance of the compiled graphs is
//! checked against its ONNX parser's published operator table (onnx/onnx-tensorrt,
//! docs/operators.md, TensorRT 10.0, opsets 9 to 20): every op of every scan form, Scan bodies
//! included, is one the parser supports, and the inputs the table requires to be build-time
//! constants (the axes of CumSum, Slice, ReduceSum/Mean, Squeeze/Unsqueeze and Pad) are.
mod common;

use std::collections::HashSet;

use common::*;
use mambalrp::onnx::proto::{GraphProto, ModelProto};
use mambalrp::{compile, Options};

/// The operators onnx-tensorrt's table marks supported ("Y").
const TENSORRT_OPS: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "Cosh",
    "CumSum",
    "DeformConv",
    "DepthToSpace",
    "DequantizeLinear",
    "Div",
    "Dropout",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "EyeLike",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GridSample",
    "GroupNormalization",
    "GRU",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "If",
    "ImageScaler",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "Loop",
    "LRN",
    "LSTM",
    "LpNormalization",
    "LpPool",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "MeanVarianceNormalization",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "NonMaxSuppression",
    "NonZero",
    "Not",
    "OneHot",
    "Or",
    "Pad",
    "ParametricSoftplus",
    "Pow",
    "PRelu",
    "QuantizeLinear",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Range",
    "Reciprocal",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "ReverseSequence",
    "RNN",
    "RoiAlign",
    "Round",
    "ScaledTanh",
    "Scan",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "Selu",
    "Shape",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Upsample",
    "Where",
    "Xor",
];

/// (op, input slot) pairs the table requires to be an initializer (or a constant tensor).
const CONSTANT_INPUTS: &[(&str, usize)] = &[
    ("CumSum", 1),
    ("Slice", 3),
    ("ReduceSum", 1),
    ("ReduceMean", 1),
    ("Squeeze", 1),
    ("Unsqueeze", 1),
    ("Pad", 3),
];

/// Every problem in `graph` (and its subgraphs), given the constants of the enclosing scopes.
fn problems(graph: &GraphProto, outer: &HashSet<String>, found: &mut Vec<String>) {
    let mut constants = outer.clone();
    constants.extend(graph.initializer.iter().map(|t| t.name().to_string()));
    for node in &graph.node {
        if node.op_type() == "Constant" {
            constants.extend(node.output.iter().cloned());
        }
    }
    for node in &graph.node {
        if !TENSORRT_OPS.contains(&node.op_type()) {
            found.push(format!(
                "{} '{}' is not in the table",
                node.op_type(),
                node.name()
            ));
        }
        for &(op, slot) in CONSTANT_INPUTS {
            let input = node.input.get(slot).filter(|i| !i.is_empty());
            if node.op_type() == op && input.is_some_and(|i| !constants.contains(i)) {
                found.push(format!(
                    "{op} '{}': input {slot} ('{}') is computed at run time",
                    node.name(),
                    input.unwrap()
                ));
            }
        }
        for attribute in &node.attribute {
            for body in attribute.g.iter().chain(&attribute.graphs) {
                problems(body, &constants, found);
            }
        }
    }
}

fn check(model: &ModelProto, what: &str) {
    let mut found = Vec::new();
    problems(model.graph.as_ref().unwrap(), &HashSet::new(), &mut found);
    found.sort();
    found.dedup();
    assert!(found.is_empty(), "{what}:\n{}", found.join("\n"));
}

#[test]
fn every_scan_form_uses_only_ops_tensorrt_parses() {
    for exporter in EXPORTERS {
        let model = load("tiny_zerobias", exporter);
        for scan in [
            ScanForm::Rolled,
            ScanForm::Chunked,
            ScanForm::Parallel,
            ScanForm::Unrolled,
        ] {
            // Fixed axes, symbolic axes, and symbolic axes with `--micro-batch` (the graph
            // inside one more Scan), one sample and two per group.
            for (dynamic, micro_batch) in [
                (false, None),
                (true, None),
                (true, Some(1)),
                (true, Some(2)),
            ] {
                if dynamic && scan == ScanForm::Unrolled {
                    continue;
                }
                let options = Options {
                    scan,
                    dynamic_sequence: dynamic,
                    dynamic_batch: dynamic,
                    micro_batch,
                    ..Options::default()
                };
                let compiled = compile(&model, &options)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .model;
                check(
                    &compiled,
                    &format!(
                        "tiny_zerobias{exporter} --scan {scan} (dynamic axes: {dynamic}, micro-batch: {micro_batch:?})"
                    ),
                );
            }
        }
    }
}

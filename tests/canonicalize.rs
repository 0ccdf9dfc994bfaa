//! Each canonicalising rewrite on a one-op graph: the op is gone, the canonical form is there,
//! the graph output keeps its name, and tract computes the op's value (from its definition,
//! written out here) to float rounding.
use mambalrp::canon::canonicalize;
use mambalrp::ir::{DType, Graph};
use mambalrp::onnx::attributes::make_int;
use mambalrp::onnx::proto::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto,
};
use mambalrp::onnx::{value_info, Tensor};
use ndarray::{ArrayD, Axis, IxDyn};

const SHAPE: [usize; 3] = [2, 3, 4];

fn float_attr(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

fn node(op: &str, domain: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(format!("{op}_{}", outputs[0])),
        op_type: Some(op.into()),
        domain: Some(domain.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn values(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed;
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    })
}

/// A model with float inputs `inputs`, the given nodes and initializers, and output `y`.
fn model(
    opset: i64,
    inputs: &[(&str, &[usize])],
    nodes: Vec<NodeProto>,
    initializers: Vec<(&str, Tensor)>,
    y_shape: &[usize],
) -> ModelProto {
    let mut opset_import = vec![OperatorSetIdProto {
        domain: Some(String::new()),
        version: Some(opset),
    }];
    opset_import.push(OperatorSetIdProto {
        domain: Some("com.microsoft".into()),
        version: Some(1),
    });
    ModelProto {
        ir_version: Some(if opset >= 24 { 11 } else { 8 }),
        opset_import,
        graph: Some(GraphProto {
            name: Some("canon".into()),
            node: nodes,
            initializer: initializers
                .into_iter()
                .map(|(name, t)| t.to_proto(name))
                .collect(),
            input: inputs
                .iter()
                .map(|(name, shape)| value_info(name, DType::Float, shape))
                .collect(),
            output: vec![value_info("y", DType::Float, y_shape)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Canonicalises `model`, checks `gone` no longer appears and `expected_ops` do, and returns
/// what tract computes for `y` on `inputs`.
fn canonical_value(
    model: &ModelProto,
    gone: &str,
    expected_ops: &[&str],
    inputs: &[(&str, ArrayD<f32>)],
) -> ArrayD<f32> {
    let mut graph = Graph::from_model(model).unwrap();
    let fired = canonicalize(&mut graph).unwrap();
    assert_eq!(fired.values().sum::<usize>(), 1, "{fired:?}");
    let ops: Vec<&str> = graph.nodes().iter().map(|n| n.op_type()).collect();
    assert!(!ops.contains(&gone), "{gone} still there: {ops:?}");
    for op in expected_ops {
        assert!(ops.contains(op), "no {op} in {ops:?}");
    }
    assert!(graph.producer("y").is_some(), "the output keeps its name");
    let mut rewritten = model.clone();
    graph.into_model(&mut rewritten);
    let feeds: Vec<(String, Tensor)> = inputs
        .iter()
        .map(|(name, v)| (name.to_string(), Tensor::F32(v.clone())))
        .collect();
    let out = mambalrp::verify::run_tract(&rewritten, &feeds).unwrap();
    out.into_iter().find(|(n, _)| n == "y").unwrap().1
}

fn assert_close(got: &ArrayD<f32>, want: &ArrayD<f32>) {
    assert_eq!(got.shape(), want.shape());
    let err = got
        .iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(err < 1e-5, "relative error {err}");
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

#[test]
fn swish_becomes_x_times_sigmoid_x() {
    let mut swish = node("Swish", "", &["x"], &["y"]);
    swish.attribute.push(float_attr("alpha", 1.0));
    let m = model(24, &[("x", &SHAPE)], vec![swish], vec![], &SHAPE);
    let x = values(&SHAPE, 1);
    let y = canonical_value(&m, "Swish", &["Sigmoid", "Mul"], &[("x", x.clone())]);
    assert_close(&y, &x.mapv(|v| v * sigmoid(v)));
}

#[test]
fn x_over_one_plus_exp_of_minus_x_becomes_silu() {
    let one = Tensor::F32(ndarray::arr0(1.0f32).into_dyn());
    let nodes = vec![
        node("Neg", "", &["x"], &["nx"]),
        node("Exp", "", &["nx"], &["e"]),
        node("Add", "", &["one", "e"], &["d"]),
        node("Div", "", &["x", "d"], &["y"]),
    ];
    let m = model(17, &[("x", &SHAPE)], nodes, vec![("one", one)], &SHAPE);
    let x = values(&SHAPE, 2);
    let y = canonical_value(&m, "Div", &["Sigmoid", "Mul"], &[("x", x.clone())]);
    assert_close(&y, &x.mapv(|v| v * sigmoid(v)));
}

#[test]
fn log_of_one_plus_exp_becomes_softplus() {
    let one = Tensor::F32(ndarray::arr0(1.0f32).into_dyn());
    let nodes = vec![
        node("Exp", "", &["x"], &["e"]),
        node("Add", "", &["e", "one"], &["s"]),
        node("Log", "", &["s"], &["y"]),
    ];
    let m = model(17, &[("x", &SHAPE)], nodes, vec![("one", one)], &SHAPE);
    let x = values(&SHAPE, 3);
    let y = canonical_value(&m, "Log", &["Softplus"], &[("x", x.clone())]);
    assert_close(&y, &x.mapv(|v| (1.0 + v.exp()).ln()));
}

/// RMSNorm over the last axis, by its definition.
fn rms_norm(x: &ArrayD<f32>, scale: &ArrayD<f32>, eps: f32) -> ArrayD<f32> {
    let last = Axis(x.ndim() - 1);
    let mean = x.mapv(|v| v * v).mean_axis(last).unwrap().insert_axis(last);
    let normalised = x / &mean.mapv(|m| (m + eps).sqrt());
    normalised * scale
}

#[test]
fn opset23_rms_normalization_becomes_the_decomposed_norm() {
    let mut norm = node("RMSNormalization", "", &["x", "scale"], &["y"]);
    norm.attribute.push(float_attr("epsilon", 1e-3));
    norm.attribute.push(make_int("axis", -1));
    let scale = values(&[4], 4);
    let m = model(
        23,
        &[("x", &SHAPE)],
        vec![norm],
        vec![("scale", Tensor::F32(scale.clone()))],
        &SHAPE,
    );
    let x = values(&SHAPE, 5);
    let y = canonical_value(
        &m,
        "RMSNormalization",
        &["ReduceMean", "Sqrt", "Reciprocal"],
        &[("x", x.clone())],
    );
    assert_close(&y, &rms_norm(&x, &scale, 1e-3));
}

#[test]
fn simplified_layer_normalization_becomes_the_decomposed_norm() {
    let mut norm = node("SimplifiedLayerNormalization", "", &["x", "scale"], &["y"]);
    norm.attribute.push(float_attr("epsilon", 1e-5));
    let scale = values(&[4], 6);
    let m = model(
        17,
        &[("x", &SHAPE)],
        vec![norm],
        vec![("scale", Tensor::F32(scale.clone()))],
        &SHAPE,
    );
    let x = values(&SHAPE, 7);
    let y = canonical_value(
        &m,
        "SimplifiedLayerNormalization",
        &["ReduceMean", "Sqrt"],
        &[("x", x.clone())],
    );
    assert_close(&y, &rms_norm(&x, &scale, 1e-5));
}

#[test]
fn skip_simplified_layer_normalization_becomes_add_and_norm_keeping_the_residual() {
    let skip_norm = node(
        "SkipSimplifiedLayerNormalization",
        "com.microsoft",
        &["x", "skip", "gamma"],
        &["normed", "", "", "residual"],
    );
    // y = normed + residual reads both outputs.
    let add = node("Add", "", &["normed", "residual"], &["y"]);
    let gamma = values(&[4], 8);
    let m = model(
        17,
        &[("x", &SHAPE), ("skip", &SHAPE)],
        vec![skip_norm, add],
        vec![("gamma", Tensor::F32(gamma.clone()))],
        &SHAPE,
    );
    let (x, skip) = (values(&SHAPE, 9), values(&SHAPE, 10));
    let y = canonical_value(
        &m,
        "SkipSimplifiedLayerNormalization",
        &["ReduceMean", "Add"],
        &[("x", x.clone()), ("skip", skip.clone())],
    );
    let residual = &x + &skip;
    assert_close(&y, &(rms_norm(&residual, &gamma, 1e-5) + &residual));
}

#[test]
fn fused_matmul_becomes_matmul_with_its_transpose_and_scale() {
    let mut fused = node("FusedMatMul", "com.microsoft", &["x", "w"], &["y"]);
    fused.attribute.push(make_int("transB", 1));
    fused.attribute.push(float_attr("alpha", 0.5));
    let w = values(&[5, 4], 11);
    let m = model(
        17,
        &[("x", &SHAPE)],
        vec![fused],
        vec![("w", Tensor::F32(w.clone()))],
        &[2, 3, 5],
    );
    let x = values(&SHAPE, 12);
    let y = canonical_value(
        &m,
        "FusedMatMul",
        &["MatMul", "Transpose"],
        &[("x", x.clone())],
    );
    let x2 = x.clone().into_shape_with_order((6, 4)).unwrap();
    let w2 = w.clone().into_shape_with_order((5, 4)).unwrap();
    let want = (x2.dot(&w2.t()) * 0.5)
        .into_shape_with_order(IxDyn(&[2, 3, 5]))
        .unwrap();
    assert_close(&y, &want);
}

#[test]
fn a_graph_in_canonical_form_is_left_alone() {
    let nodes = vec![
        node("Sigmoid", "", &["x"], &["s"]),
        node("Mul", "", &["x", "s"], &["y"]),
    ];
    let m = model(17, &[("x", &SHAPE)], nodes, vec![], &SHAPE);
    let mut graph = Graph::from_model(&m).unwrap();
    assert!(canonicalize(&mut graph).unwrap().is_empty());
    assert_eq!(graph.nodes().len(), 2);
}

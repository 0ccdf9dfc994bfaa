//! Every vector-Jacobian rule, checked in tract against central finite differences of
//! `<gy, f(x)>` along a random direction (the dot-product test), on small graphs with
//! broadcasting, constant operands and repeated indices.
mod common;

use mambalrp::autodiff::{differentiate, Modifiers};
use mambalrp::ir::scan::{self, ScanKind};
use mambalrp::ir::{DType, Graph};
use mambalrp::onnx::attributes::{make_int, make_ints, make_string};
use mambalrp::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
};
use mambalrp::onnx::Tensor;
use ndarray::{ArrayD, IxDyn};

struct Case {
    name: &'static str,
    x_shape: Vec<usize>,
    /// (op, extra inputs after x (named constants below), attributes); chained x -> y.
    op: &'static str,
    operands: Vec<Operand>,
    attrs: Vec<AttributeProto>,
}

enum Operand {
    X,
    Const(Tensor),
}

fn lcg_values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn floats(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), lcg_values(n, seed, -1.0, 1.0)).unwrap())
}

fn ints(values: &[i64], shape: &[usize]) -> Tensor {
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).unwrap())
}

fn model_for(case: &Case) -> ModelProto {
    let mut initializers = Vec::new();
    let mut inputs = Vec::new();
    for (i, operand) in case.operands.iter().enumerate() {
        match operand {
            Operand::X => inputs.push("x".to_string()),
            Operand::Const(t) => {
                let name = format!("c{i}");
                initializers.push(t.to_proto(&name));
                inputs.push(name);
            }
        }
    }
    let outputs = if case.op == "Split" {
        vec!["y_first".to_string(), "y".to_string()]
    } else {
        vec!["y".to_string()]
    };
    let node = NodeProto {
        name: Some(format!("{}_under_test", case.op)),
        op_type: Some(case.op.into()),
        input: inputs,
        output: outputs,
        attribute: case.attrs.clone(),
        ..Default::default()
    };
    let graph = GraphProto {
        name: Some(case.name.into()),
        node: vec![node],
        initializer: initializers,
        input: vec![mambalrp::emit::value_info("x", DType::Float, &case.x_shape)],
        output: vec![],
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// Returns (<gx, dx>, finite-difference estimate of <gy, J dx>).
fn dot_product_test(case: &Case) -> (f64, f64) {
    let model = model_for(case);
    let graph = Graph::from_model(&model).unwrap();
    dot_product_test_on(&model, graph, "y", &case.x_shape, &[])
}

/// The dot-product test of `y` against the graph input `x` of shape `x_shape`.
/// `fixed` are other graph inputs and their values.
fn dot_product_test_on(
    model: &ModelProto,
    mut graph: Graph,
    y: &str,
    x_shape: &[usize],
    fixed: &[(String, Tensor)],
) -> (f64, f64) {
    let y_shape = graph.shape(y).unwrap().to_vec();
    graph.add_input("gy", DType::Float, &y_shape);
    let mut grads = differentiate(
        &mut graph,
        "x",
        &[(y.into(), "gy".into())],
        &Modifiers::default(),
    )
    .unwrap();
    let gx = grads
        .cotangent(&mut graph, "x")
        .unwrap()
        .expect("x receives a gradient");
    mambalrp::emit::add_output(&mut graph, y, "y_out", &y_shape);
    mambalrp::emit::add_output(&mut graph, &gx, "gx", x_shape);
    let mut compiled = model.clone();
    graph.into_model(&mut compiled);

    let Tensor::F32(x) = positive_floats(x_shape, 1) else {
        unreachable!()
    };
    let Tensor::F32(dx) = floats(x_shape, 2) else {
        unreachable!()
    };
    let Tensor::F32(gy) = floats(&y_shape, 3) else {
        unreachable!()
    };
    let run = |x: &ArrayD<f32>| {
        let mut inputs = vec![
            ("x".to_string(), Tensor::F32(x.clone())),
            ("gy".to_string(), Tensor::F32(gy.clone())),
        ];
        inputs.extend(fixed.iter().cloned());
        let out = mambalrp::verify::run_tract(&compiled, &inputs).unwrap();
        let get = |n: &str| out.iter().find(|(k, _)| k == n).unwrap().1.clone();
        (get("y_out"), get("gx"))
    };
    let dot = |a: &ArrayD<f32>, b: &ArrayD<f32>| {
        a.iter()
            .zip(b.iter())
            .map(|(p, q)| *p as f64 * *q as f64)
            .sum::<f64>()
    };
    let (_, grad) = run(&x);
    let h = 1e-2f32;
    let (plus, _) = run(&(&x + &(&dx * h)));
    let (minus, _) = run(&(&x - &(&dx * h)));
    (
        dot(&grad, &dx),
        (dot(&gy, &plus) - dot(&gy, &minus)) / (2.0 * h as f64),
    )
}

/// Values in [0.5, 1.5], so Div, Sqrt, Reciprocal and Pow stay smooth.
fn positive_floats(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), lcg_values(n, seed, 0.5, 1.5)).unwrap())
}

fn case(
    name: &'static str,
    op: &'static str,
    x_shape: &[usize],
    operands: Vec<Operand>,
    attrs: Vec<AttributeProto>,
) -> Case {
    Case {
        name,
        x_shape: x_shape.to_vec(),
        op,
        operands,
        attrs,
    }
}

fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(1),
        f: Some(v),
        ..Default::default()
    }
}

fn cases() -> Vec<Case> {
    use Operand::{Const, X};
    let s = [2, 3, 4];
    vec![
        case(
            "matmul_weight",
            "MatMul",
            &s,
            vec![X, Const(floats(&[4, 5], 9))],
            vec![],
        ),
        case(
            "matmul_broadcast_left",
            "MatMul",
            &s,
            vec![Const(floats(&[3, 3], 9)), X],
            vec![],
        ),
        case("matmul_square", "MatMul", &[2, 3, 3], vec![X, X], vec![]),
        case(
            "gemm",
            "Gemm",
            &[3, 4],
            vec![X, Const(floats(&[5, 4], 9)), Const(floats(&[5], 8))],
            vec![
                make_int("transB", 1),
                float_attr("alpha", 0.5),
                float_attr("beta", 2.0),
            ],
        ),
        case(
            "gemm_trans_a",
            "Gemm",
            &[4, 3],
            vec![X, Const(floats(&[4, 5], 9))],
            vec![make_int("transA", 1)],
        ),
        case(
            "add_broadcast",
            "Add",
            &s,
            vec![X, Const(floats(&[4], 9))],
            vec![],
        ),
        case(
            "sub_from_constant",
            "Sub",
            &s,
            vec![Const(floats(&[3, 1], 9)), X],
            vec![],
        ),
        case(
            "mul_broadcast",
            "Mul",
            &s,
            vec![X, Const(floats(&[3, 1], 9))],
            vec![],
        ),
        case("mul_square", "Mul", &s, vec![X, X], vec![]),
        case(
            "div_numerator",
            "Div",
            &s,
            vec![X, Const(positive_floats(&[4], 9))],
            vec![],
        ),
        case(
            "div_denominator",
            "Div",
            &s,
            vec![Const(floats(&[1], 9)), X],
            vec![],
        ),
        case("neg", "Neg", &s, vec![X], vec![]),
        case(
            "conv_depthwise_causal",
            "Conv",
            &s,
            vec![X, Const(floats(&[3, 1, 3], 9)), Const(floats(&[3], 8))],
            vec![
                make_int("group", 3),
                make_ints("pads", &[2, 2]),
                make_ints("kernel_shape", &[3]),
            ],
        ),
        case(
            "conv_strided",
            "Conv",
            &[2, 2, 7],
            vec![X, Const(floats(&[4, 2, 3], 9))],
            vec![make_ints("pads", &[1, 0]), make_ints("strides", &[2])],
        ),
        case(
            "slice",
            "Slice",
            &s,
            vec![
                X,
                Const(ints(&[1], &[1])),
                Const(ints(&[3], &[1])),
                Const(ints(&[2], &[1])),
            ],
            vec![],
        ),
        case(
            "slice_flipped",
            "Slice",
            &s,
            vec![
                X,
                Const(ints(&[-1], &[1])),
                Const(ints(&[i64::MIN], &[1])),
                Const(ints(&[2], &[1])),
                Const(ints(&[-1], &[1])),
            ],
            vec![],
        ),
        case(
            "slice_flipped_part",
            "Slice",
            &s,
            vec![
                X,
                Const(ints(&[2, 2], &[2])),
                Const(ints(&[0, 0], &[2])),
                Const(ints(&[1, 2], &[2])),
                Const(ints(&[-1, -1], &[2])),
            ],
            vec![],
        ),
        case(
            "slice_strided_two_axes",
            "Slice",
            &[2, 5, 7],
            vec![
                X,
                Const(ints(&[0, 6], &[2])),
                Const(ints(&[5, 0], &[2])),
                Const(ints(&[1, 2], &[2])),
                Const(ints(&[2, -3], &[2])),
            ],
            vec![],
        ),
        case(
            "split_second_part",
            "Split",
            &s,
            vec![X, Const(ints(&[1, 3], &[2]))],
            vec![make_int("axis", 2)],
        ),
        case(
            "concat_twice",
            "Concat",
            &s,
            vec![X, X],
            vec![make_int("axis", 1)],
        ),
        case(
            "gather_scalar",
            "Gather",
            &s,
            vec![X, Const(ints(&[1], &[]))],
            vec![make_int("axis", 1)],
        ),
        case(
            "gather_repeated_indices",
            "Gather",
            &s,
            vec![X, Const(ints(&[2, 0, 2], &[3]))],
            vec![make_int("axis", 2)],
        ),
        case(
            "unsqueeze",
            "Unsqueeze",
            &s,
            vec![X, Const(ints(&[1], &[1]))],
            vec![],
        ),
        case(
            "squeeze",
            "Squeeze",
            &[2, 1, 4],
            vec![X, Const(ints(&[1], &[1]))],
            vec![],
        ),
        case(
            "reshape",
            "Reshape",
            &s,
            vec![X, Const(ints(&[2, -1], &[2]))],
            vec![],
        ),
        case("flatten", "Flatten", &s, vec![X], vec![make_int("axis", 2)]),
        case(
            "transpose",
            "Transpose",
            &s,
            vec![X],
            vec![make_ints("perm", &[2, 0, 1])],
        ),
        case(
            "expand",
            "Expand",
            &[3, 1],
            vec![X, Const(ints(&[2, 3, 4], &[3]))],
            vec![],
        ),
        case("cast", "Cast", &s, vec![X], vec![make_int("to", 1)]),
        case("identity", "Identity", &s, vec![X], vec![]),
        case(
            "reduce_sum",
            "ReduceSum",
            &s,
            vec![X, Const(ints(&[1], &[1]))],
            vec![make_int("keepdims", 0)],
        ),
        case(
            "reduce_mean",
            "ReduceMean",
            &s,
            vec![X],
            vec![make_ints("axes", &[-1])],
        ),
        case(
            "pow",
            "Pow",
            &s,
            vec![X, Const(Tensor::F32(ndarray::arr0(3.0f32).into_dyn()))],
            vec![],
        ),
        case("sqrt", "Sqrt", &s, vec![X], vec![]),
        case("reciprocal", "Reciprocal", &s, vec![X], vec![]),
        case("sigmoid", "Sigmoid", &s, vec![X], vec![]),
        case("exp", "Exp", &s, vec![X], vec![]),
        case("softplus", "Softplus", &s, vec![X], vec![]),
        case("tanh", "Tanh", &s, vec![X], vec![]),
        case(
            "where",
            "Where",
            &s,
            vec![
                Const(Tensor::Bool(ArrayD::from_shape_fn(IxDyn(&[4]), |i| {
                    i[0] % 2 == 0
                }))),
                X,
                Const(floats(&[1], 9)),
            ],
            vec![],
        ),
        case("sum", "Sum", &s, vec![X, Const(floats(&[4], 9)), X], vec![]),
        case(
            "einsum_contract_with_weight",
            "Einsum",
            &s,
            vec![X, Const(floats(&[4, 5], 9))],
            vec![make_string("equation", "bij,jk->bik")],
        ),
        case(
            "einsum_weight_first_transposed_output",
            "Einsum",
            &s,
            vec![Const(floats(&[5, 4], 9)), X],
            vec![make_string("equation", "kj,bij->bki")],
        ),
        case(
            "einsum_sum_over_an_axis",
            "Einsum",
            &s,
            vec![X],
            vec![make_string("equation", "bij->bi")],
        ),
        case(
            "einsum_implicit_output",
            "Einsum",
            &s,
            vec![X, Const(floats(&[3], 9))],
            vec![make_string("equation", "bij,i")],
        ),
        case(
            "cumsum",
            "CumSum",
            &s,
            vec![X, Const(ints(&[1], &[]))],
            vec![],
        ),
        case(
            "cumsum_reverse_exclusive",
            "CumSum",
            &s,
            vec![X, Const(ints(&[-1], &[]))],
            vec![make_int("reverse", 1), make_int("exclusive", 1)],
        ),
        case(
            "max_with_a_floor",
            "Max",
            &s,
            vec![X, Const(floats(&[4], 5))],
            vec![],
        ),
        case(
            "min_with_a_ceiling",
            "Min",
            &s,
            vec![Const(Tensor::F32(ArrayD::zeros(IxDyn(&[1, 4])))), X],
            vec![],
        ),
        case(
            "pad_zero_fill",
            "Pad",
            &s,
            vec![X, Const(ints(&[0, 1, 0, 1, 0, 2], &[6]))],
            vec![],
        ),
    ]
}

/// Ops whose VJP is checked by a dedicated test below rather than a one-node case.
const CHECKED_ELSEWHERE: &[&str] = &["Scan"];

#[test]
fn every_registered_vjp_has_a_finite_difference_case() {
    let covered: std::collections::HashSet<&str> = cases()
        .iter()
        .map(|c| c.op)
        .chain(CHECKED_ELSEWHERE.iter().copied())
        .collect();
    let missing: Vec<&str> = mambalrp::ops::table()
        .filter(|def| def.vjp.is_some() && !covered.contains(def.op_type))
        .map(|def| def.op_type)
        .collect();
    assert!(
        missing.is_empty(),
        "ops with a VJP but no finite-difference case: {missing:?}"
    );
    for def in mambalrp::ops::table() {
        let registrations = mambalrp::ops::table()
            .filter(|other| other.op_type == def.op_type)
            .count();
        assert_eq!(registrations, 1, "{} is registered twice", def.op_type);
    }
}

#[test]
fn every_vjp_rule_agrees_with_finite_differences() {
    let mut failures = Vec::new();
    for case in cases() {
        let (analytic, numeric) = dot_product_test(&case);
        let err = (analytic - numeric).abs() / numeric.abs().max(1e-3);
        println!("{:<28} <J^T gy, dx> = {analytic:+.6}  finite difference {numeric:+.6}  rel err {err:.1e}", case.name);
        if err > 2e-3 {
            failures.push(case.name);
        }
    }
    assert!(
        failures.is_empty(),
        "VJP rules disagree with finite differences: {failures:?}"
    );
}

/// A forward selective scan as `reroll` emits it (2 chunks of 3 steps), with `x` in operand
/// `x_slot` and the other operands constant; dA and C need the stored states.
fn selective_scan_dot_product_test(kind: ScanKind, x_slot: usize) -> (f64, f64) {
    let (b, d, k, l, n) = (1, 2, 2, 3, 2);
    let shapes = [
        vec![b, d, n],
        vec![b, d, k, l, n],
        vec![b, d, k, l, n],
        vec![b, k, l, n],
    ];
    let value = |slot: usize| match (slot, kind) {
        // dA in (0.5, 1.5); the chunked form reads log dA, any real number.
        (scan::DECAY, ScanKind::Stepwise) => positive_floats(&shapes[slot], 20),
        _ => floats(&shapes[slot], 21 + slot as u64),
    };
    // The fixed operands are graph inputs too: tract's Scan optimisation rejects constant
    // scanned inputs, and in a compiled model they are computed anyway.
    let mut fixed = Vec::new();
    let mut operands = Vec::new();
    let mut declared = Vec::new();
    for (slot, shape) in shapes.iter().enumerate() {
        let name = if slot == x_slot {
            "x".to_string()
        } else {
            let name = format!("operand{slot}");
            fixed.push((name.clone(), value(slot)));
            name
        };
        declared.push(mambalrp::emit::value_info(&name, DType::Float, shape));
        operands.push(name);
    }
    let mut model = model_for(&case("scan", "Identity", &[1], vec![Operand::X], vec![]));
    let g = model.graph.as_mut().unwrap();
    g.node.clear();
    g.input = declared;
    let mut graph = Graph::from_model(&model).unwrap();
    let keep_states = x_slot == scan::DECAY || x_slot == scan::READOUT;
    let refs: Vec<&str> = operands.iter().map(String::as_str).collect();
    let outputs = mambalrp::reroll::selective_scan(
        &mut graph,
        kind,
        [refs[0], refs[1], refs[2], refs[3]],
        (b, d, n),
        l,
        keep_states,
    );
    dot_product_test_on(&model, graph, &outputs[scan::Y], &shapes[x_slot], &fixed)
}

#[test]
fn selective_scan_vjp_agrees_with_finite_differences_in_every_operand() {
    let mut failures = Vec::new();
    for kind in [ScanKind::Stepwise, ScanKind::Chunked] {
        for (slot, operand) in [
            (scan::H0, "h0"),
            (scan::DECAY, "decay"),
            (scan::INPUT, "dBu"),
            (scan::READOUT, "C"),
        ] {
            let (analytic, numeric) = selective_scan_dot_product_test(kind, slot);
            let err = (analytic - numeric).abs() / numeric.abs().max(1e-3);
            println!("{kind:?} scan, x = {operand:<5} <J^T gy, dx> = {analytic:+.6}  finite difference {numeric:+.6}  rel err {err:.1e}");
            if err > 2e-3 {
                failures.push(format!("{kind:?}/{operand}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "selective-scan VJP disagrees with finite differences: {failures:?}"
    );
}

/// Where else the product of `summed_product_test` reaches `y`.
#[derive(Debug, Clone, Copy)]
enum AlsoRead {
    No,
    /// Summed over all axes: another cotangent spread over (among others) the same axis.
    Summed,
    /// Through a Neg: a full-size cotangent.
    Negated,
}

/// `y = MatMul(Mul(x, other), ones[n, 1])`, the GPU form's readout `sum_N(h * C)`: the
/// MatMul's transpose leaves its cotangent unexpanded, and the product multiplies it as it is
/// where broadcasting gives the full product's result (expanding it first where not). Returns
/// the dot-product test and the op types of the backward pass.
fn summed_product_test(
    x_shape: &[usize],
    other: Option<&[usize]>,
    also_read: AlsoRead,
) -> ((f64, f64), Vec<String>) {
    let out_shape = match other {
        Some(other) => mambalrp::ops::broadcast(x_shape, other).unwrap(),
        None => x_shape.to_vec(),
    };
    let n = *out_shape.last().unwrap();
    let ones = Tensor::F32(ArrayD::ones(IxDyn(&[n, 1])));
    let mut model = model_for(&case(
        "summed_product",
        "Identity",
        &[1],
        vec![Operand::X],
        vec![],
    ));
    let g = model.graph.as_mut().unwrap();
    g.node.clear();
    g.input = vec![mambalrp::emit::value_info("x", DType::Float, x_shape)];
    g.initializer = vec![ones.to_proto("ones")];
    let factor = match other {
        Some(shape) => {
            g.initializer.push(floats(shape, 7).to_proto("other"));
            "other"
        }
        None => "x",
    };
    let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
        name: Some(output.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    g.node.push(node("Mul", &["x", factor], "p"));
    g.node.push(node("MatMul", &["p", "ones"], "summed"));
    match also_read {
        AlsoRead::No => g.node.push(node("Identity", &["summed"], "y")),
        AlsoRead::Summed => {
            g.node.push(node("ReduceSum", &["p"], "total"));
            g.node.push(node("Add", &["summed", "total"], "y"));
        }
        AlsoRead::Negated => {
            g.node.push(node("Neg", &["p"], "negated"));
            g.node.push(node("ReduceSum", &["negated"], "total"));
            g.node.push(node("Add", &["summed", "total"], "y"));
        }
    }
    let graph = Graph::from_model(&model).unwrap();
    let forward = graph.nodes().len();
    let mut backward = Graph::from_model(&model).unwrap();
    let y_shape = backward.shape("y").unwrap().to_vec();
    backward.add_input("gy", DType::Float, &y_shape);
    let mut grads = differentiate(
        &mut backward,
        "x",
        &[("y".into(), "gy".into())],
        &Modifiers::default(),
    )
    .unwrap();
    grads.cotangent(&mut backward, "x").unwrap().unwrap();
    let ops = backward.nodes()[forward..]
        .iter()
        .map(|n| n.op_type().to_string())
        .collect();
    (dot_product_test_on(&model, graph, "y", x_shape, &[]), ops)
}

#[test]
fn a_summed_product_multiplies_the_unexpanded_cotangent() {
    let mut failures = Vec::new();
    // (x, other, also read elsewhere, the product takes the small cotangent)
    use AlsoRead::{Negated, No, Summed};
    type Shape = &'static [usize];
    let cases: [(Shape, Option<Shape>, AlsoRead, bool); 7] = [
        // h [B, D, N] * C [B, 1, N]: C has the summed axis.
        (&[2, 3, 4], Some(&[2, 1, 4]), No, true),
        // x broadcasts along the summed axis itself.
        (&[2, 3, 1], Some(&[2, 3, 4]), No, true),
        (&[2, 3, 4], None, No, true),
        // The other factor is 1 along the summed axis: expanded first.
        (&[2, 3, 4], Some(&[2, 3, 1]), No, false),
        // A lower-rank factor.
        (&[2, 3, 4], Some(&[4]), No, true),
        // Two sums read the product: their cotangents add unexpanded.
        (&[2, 3, 4], Some(&[2, 1, 4]), Summed, true),
        // A full-size cotangent reaches the product as well: expanded as before.
        (&[2, 3, 4], Some(&[2, 1, 4]), Negated, false),
    ];
    for (x, other, also_read, small) in cases {
        let ((analytic, numeric), ops) = summed_product_test(x, other, also_read);
        let err = (analytic - numeric).abs() / numeric.abs().max(1e-3);
        println!(
            "x {x:?} * {other:?}: {analytic:+.6} vs {numeric:+.6}, rel err {err:.1e}; {ops:?}"
        );
        if err > 2e-3 {
            failures.push(format!("{x:?} * {other:?}: rel err {err:.1e}"));
        }
        let expanded = ops
            .iter()
            .any(|op| op == "Expand" || op == "MatMul" || op == "Einsum");
        if expanded == small {
            failures.push(format!(
                "{x:?} * {other:?} (also read: {also_read:?}): backward ops {ops:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

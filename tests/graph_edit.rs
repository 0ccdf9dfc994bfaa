//! The graph-edit API on tiny hand-built graphs: after each edit the producer and consumer
//! indexes and the value types are right, selective-scan records and minted names survive node
//! removal and re-analysis, and rule effects stay on their nodes when other nodes go.
use std::collections::HashSet;

use mambalrp::autodiff::{differentiate, input_dependent, Modifiers};
use mambalrp::ir::{node_key, topo, value_info, DType, Edge, Graph, ScanKind, SelectiveScan};
use mambalrp::onnx::proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
use mambalrp::onnx::Tensor;
use mambalrp::rules::{match_all, Effect};
use ndarray::{ArrayD, IxDyn};

const FLOAT: DType = DType::Float;
const SHAPE: [usize; 2] = [2, 3];

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: Some(format!("{op}_{output}")),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    }
}

/// A model reading float32 `x` [2, 3] (and `gy`, if asked), with `nodes` and `outputs`.
fn model(nodes: Vec<NodeProto>, outputs: &[&str], with_gy: bool) -> ModelProto {
    let mut input = vec![value_info("x", FLOAT, &SHAPE)];
    if with_gy {
        input.push(value_info("gy", FLOAT, &SHAPE));
    }
    let initializer = vec![Tensor::F32(ArrayD::from_elem(IxDyn(&[]), 2.0)).to_proto("two")];
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("tiny".into()),
            node: nodes,
            initializer,
            input,
            output: outputs
                .iter()
                .map(|o| value_info(o, FLOAT, &SHAPE))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// x -> a = Neg(x) -> b = Mul(a, two) -> c = Add(b, x); output c.
fn chain() -> Graph {
    let nodes = vec![
        node("Neg", &["x"], "a"),
        node("Mul", &["a", "two"], "b"),
        node("Add", &["b", "x"], "c"),
    ];
    Graph::from_model(&model(nodes, &["c"], false)).expect("the tiny graph loads")
}

fn producer_index(graph: &Graph, value: &str) -> Option<usize> {
    graph.producer(value).map(|(index, _)| index)
}

fn sorted(uses: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut uses = uses.to_vec();
    uses.sort();
    uses
}

#[test]
fn add_node_indexes_the_node_and_records_its_element_type() {
    let mut graph = chain();
    let d = graph.add_node("Neg", &["c"], vec![]);
    assert_eq!(producer_index(&graph, &d), Some(3));
    assert_eq!(graph.consumers("c"), &[(3, 0)]);
    assert_eq!(graph.dtype_of(&d), FLOAT);
    assert!(graph.is_minted(&d) && graph.is_minted_node(graph.node(3)));
    assert!(!graph.is_minted("c") && !graph.is_minted_node(graph.node(2)));
}

#[test]
fn replace_uses_rewires_every_reader_and_keeps_types() {
    let mut graph = chain();
    graph.replace_uses("x", "a");
    assert!(graph.consumers("x").is_empty());
    assert_eq!(sorted(graph.consumers("a")), vec![(0, 0), (1, 0), (2, 1)]);
    assert_eq!(graph.node(2).input, vec!["b", "a"]);
    assert_eq!(graph.shape("a").unwrap(), SHAPE);
}

#[test]
fn replace_uses_before_leaves_later_nodes_alone() {
    let mut graph = chain();
    let zero = graph.add_node("Sub", &["x", "x"], vec![]);
    // Only the nodes that existed before the Sub read the new value.
    graph.replace_uses_before("x", &zero, 3);
    assert_eq!(graph.consumers("x"), &[(3, 0), (3, 1)]);
    assert_eq!(sorted(graph.consumers(&zero)), vec![(0, 0), (2, 1)]);
    assert_eq!(graph.node(3).input, vec!["x", "x"]);
}

#[test]
fn set_node_input_moves_one_edge() {
    let mut graph = chain();
    graph.set_node_input(2, 1, "a");
    assert_eq!(graph.consumers("x"), &[(0, 0)]);
    assert_eq!(sorted(graph.consumers("a")), vec![(1, 0), (2, 1)]);
}

#[test]
fn rename_output_moves_the_producer_and_the_type_but_not_the_readers() {
    let mut graph = chain();
    graph.rename_output("b", "b2");
    assert_eq!(producer_index(&graph, "b2"), Some(1));
    assert_eq!(producer_index(&graph, "b"), None);
    assert_eq!(graph.shape("b2").unwrap(), SHAPE);
    assert!(graph.value_type("b").is_err());
    assert_eq!(graph.consumers("b"), &[(2, 0)]);
    assert!(graph.consumers("b2").is_empty());
}

#[test]
fn retain_nodes_reindexes_and_forgets_the_removed_outputs() {
    let mut graph = chain();
    graph.retain_nodes(|n| node_key(n) != "a");
    assert_eq!(graph.nodes().len(), 2);
    assert_eq!(producer_index(&graph, "b"), Some(0));
    assert_eq!(producer_index(&graph, "c"), Some(1));
    assert_eq!(producer_index(&graph, "a"), None);
    assert_eq!(graph.consumers("a"), &[(0, 0)]);
    assert_eq!(graph.consumers("x"), &[(1, 1)]);
    assert!(graph.value_type("a").is_err());
    assert_eq!(graph.shape("c").unwrap(), SHAPE);
}

#[test]
fn add_output_adds_an_indexed_identity_and_a_typed_graph_output() {
    let mut graph = chain();
    graph.add_output("b", "b_out", DType::Int64, &[4]);
    let (index, identity) = graph.producer("b_out").expect("indexed");
    assert_eq!((index, identity.op_type()), (3, "Identity"));
    assert_eq!(graph.consumers("b"), &[(2, 0), (3, 0)]);
    let t = graph.value_type("b_out").unwrap();
    assert_eq!((t.dtype, t.shape.clone()), (DType::Int64, vec![4]));
    assert_eq!(graph.output_names().collect::<Vec<_>>(), vec!["c", "b_out"]);
}

#[test]
fn add_input_declares_a_typed_graph_input() {
    let mut graph = chain();
    graph.add_input("target", DType::Int64, &[2]);
    assert!(graph.declares_input("target"));
    assert_eq!(graph.graph_input_names(), vec!["x", "target"]);
    assert_eq!(graph.value_type("target").unwrap().dtype, DType::Int64);
}

#[test]
fn retain_initializers_forgets_the_removed_constants() {
    let mut graph = chain();
    let three = graph.scalar_i64(3);
    graph.retain_initializers(|name| name != "two" && name != three);
    assert!(!graph.is_initializer("two") && graph.constant("two").is_none());
    assert!(graph.value_type("two").is_err());
    // A removed constant is not handed out again.
    assert_ne!(graph.scalar_i64(3), three);
}

#[test]
fn unused_minted_initializers_go_and_the_models_own_stay() {
    let mut graph = chain();
    let unused = graph.scalar_i64(5);
    let used = graph.scalar_i64(6);
    graph.add_node(
        "Cast",
        &[&used],
        vec![mambalrp::onnx::attributes::make_int(
            "to",
            DType::Float.onnx() as i64,
        )],
    );
    graph.retain_nodes(|n| node_key(n) != "b");
    graph.remove_unused_minted_initializers();
    let left: Vec<&str> = graph.initializer_names().collect();
    assert_eq!(left, vec!["two", used.as_str()]);
    assert!(!graph.is_initializer(&unused));
}

#[test]
fn dead_minted_nodes_go_and_the_models_own_dead_nodes_stay() {
    let mut graph = chain();
    graph.add_node("Neg", &["c"], vec![]);
    let nodes = vec![node("Neg", &["x"], "dead"), node("Neg", &["x"], "c")];
    let mut with_dead = Graph::from_model(&model(nodes, &["c"], false)).unwrap();
    with_dead.add_node("Neg", &["c"], vec![]);
    topo::remove_dead_minted_nodes(&mut graph).unwrap();
    topo::remove_dead_minted_nodes(&mut with_dead).unwrap();
    assert_eq!(graph.nodes().len(), 3);
    let keys: Vec<&str> = with_dead.nodes().iter().map(node_key).collect();
    assert_eq!(keys, vec!["dead", "c"]);
}

#[test]
fn selective_scan_records_survive_removal_reordering_and_reanalysis() {
    let mut graph = chain();
    let record = SelectiveScan::backward(ScanKind::Chunked);
    // An empty Scan body: the record is what is under test.
    let body = mambalrp::onnx::attributes::make_graph("body", GraphProto::default());
    let outputs = graph.add_selective_scan("scan", record, &["c"], 2, vec![body]);
    let before = graph.add_node("Neg", &["x"], vec![]);
    graph.set_node_input(3, 0, &before);
    topo::sort_nodes(&mut graph).unwrap();
    graph.retain_nodes(|n| node_key(n) != "a" && node_key(n) != "b");
    let (_, scan) = graph
        .producer(&outputs[0])
        .expect("the Scan is still there");
    assert_eq!(graph.selective_scan(scan), Some(&record));
    assert_eq!(graph.forward_scan_kind(scan), None);
    let other = graph.producer("c").unwrap().1;
    assert_eq!(graph.selective_scan(other), None);
}

#[test]
fn added_values_are_typed_at_once_and_reanalyse_keeps_minted_names() {
    let mut graph = chain();
    let neg = graph.add_node("Neg", &["c"], vec![]);
    assert_eq!(graph.shape(&neg).unwrap(), SHAPE);
    graph.reanalyse().unwrap();
    assert_eq!(graph.shape(&neg).unwrap(), SHAPE);
    assert!(graph.is_minted(&neg));
}

/// The relevance of `x` through `y = x * sigmoid(x)` under the SiLU rule, on a graph that also
/// holds a dead node before the product, removed (or not) between matching and differentiation.
fn silu_relevance(remove_dead_node: bool) -> ArrayD<f32> {
    let nodes = vec![
        node("Neg", &["x"], "dead"),
        node("Sigmoid", &["x"], "s"),
        node("Mul", &["x", "s"], "y"),
    ];
    let model = model(nodes, &["y"], true);
    let mut graph = Graph::from_model(&model).unwrap();
    let matches = match_all(&graph, &input_dependent(&graph, "x").unwrap());
    let mut modifiers = Modifiers::default();
    for site in &matches.sites {
        if let Effect::SiluIdentity { product, gate_slot } = &site.effect {
            modifiers.stop_edges.insert(Edge::new(product, *gate_slot));
        }
    }
    assert_eq!(modifiers.stop_edges, HashSet::from([Edge::new("y", 1)]));
    if remove_dead_node {
        graph.retain_nodes(|n| node_key(n) != "dead");
    }
    let seeds = [("y".to_string(), "gy".to_string())];
    let mut grads = differentiate(&mut graph, "x", &seeds, &modifiers).unwrap();
    let gx = grads
        .cotangent(&mut graph, "x")
        .unwrap()
        .expect("x gets one");
    let relevance = graph.op_binary("Mul", "x", &gx);
    graph.add_output(&relevance, "relevance", FLOAT, &SHAPE);
    let mut compiled = model.clone();
    graph.into_model(&mut compiled);
    let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.7 - 2.0).collect();
    let x = ArrayD::from_shape_vec(IxDyn(&SHAPE), values).unwrap();
    let gy = ArrayD::from_elem(IxDyn(&SHAPE), 1.0f32);
    let out = mambalrp::verify::run_tract(
        &compiled,
        &[
            ("x".into(), Tensor::F32(x.clone())),
            ("gy".into(), Tensor::F32(gy)),
        ],
    )
    .unwrap();
    let (_, relevance) = out.into_iter().find(|(n, _)| n == "relevance").unwrap();
    // The rule froze the gate: relevance is x * sigmoid(x) = y.
    let silu = x.mapv(|v| v / (1.0 + (-v).exp()));
    assert!(relevance
        .iter()
        .zip(silu.iter())
        .all(|(r, s)| (r - s).abs() < 1e-5));
    relevance
}

#[test]
fn removing_a_node_between_matching_and_differentiation_keeps_the_effects_in_place() {
    assert_eq!(silu_relevance(false), silu_relevance(true));
}

/// `read_sums_off_prefix_sums` on x [2, 3]: the compiler's sums over axis 1 beside a `CumSum`
/// over it (inclusive and reverse, keepdims 1 and 0) become one step of the prefix sum with the
/// same values; a sum over the other axis, and the model's own sum, stay `ReduceSum`s.
#[test]
fn sums_beside_prefix_sums_are_read_off_them_with_the_same_values() {
    let own_sum = NodeProto {
        attribute: vec![mambalrp::onnx::attributes::make_int("keepdims", 1)],
        ..node("ReduceSum", &["x", "axis_one"], "own")
    };
    let mut model = model(vec![own_sum], &["own"], false);
    let graph_proto = model.graph.as_mut().unwrap();
    graph_proto
        .initializer
        .push(Tensor::I64(ArrayD::from_elem(IxDyn(&[1]), 1)).to_proto("axis_one"));
    graph_proto
        .initializer
        .push(Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 1)).to_proto("cum_axis"));
    graph_proto
        .node
        .push(node("CumSum", &["x", "cum_axis"], "prefix"));
    let mut graph = Graph::from_model(&model).unwrap();
    let e = graph.add_node("Exp", &["x"], vec![]);
    let axis = graph.scalar_i64(1);
    let reverse = vec![mambalrp::onnx::attributes::make_int("reverse", 1)];
    let suffix = graph.add_node("CumSum", &[&e, &axis], reverse);
    let sums = [
        graph.op_reduce_sum("x", &[1], true),
        graph.op_reduce_sum("x", &[-1], false),
        graph.op_reduce_sum(&e, &[1], false),
        graph.op_reduce_sum(&e, &[1], true),
        graph.op_reduce_sum("x", &[0], true),
    ];
    let shapes: [&[usize]; 5] = [&[2, 1], &[2], &[2], &[2, 1], &[1, 3]];
    let names = ["fwd_keep", "fwd_drop", "rev_drop", "rev_keep", "other_axis"];
    for ((sum, shape), name) in sums.iter().zip(shapes).zip(names) {
        graph.add_output(sum, name, FLOAT, shape);
    }
    graph.add_output("prefix", "prefix_out", FLOAT, &SHAPE);
    graph.add_output(&suffix, "suffix_out", FLOAT, &SHAPE);
    let rewritten = mambalrp::emit::read_sums_off_prefix_sums(&mut graph).unwrap();
    assert_eq!(
        rewritten, 4,
        "the four sums over axis 1 of a prefix-summed value"
    );
    let mut compiled = model.clone();
    graph.into_model(&mut compiled);
    let nodes = &compiled.graph.as_ref().unwrap().node;
    let reduce_sums = nodes.iter().filter(|n| n.op_type() == "ReduceSum").count();
    assert_eq!(
        reduce_sums, 2,
        "the other axis's sum and the model's own stay"
    );
    let x: Vec<f32> = (0..6).map(|i| i as f32 * 0.3 - 0.8).collect();
    let x = ArrayD::from_shape_vec(IxDyn(&SHAPE), x).unwrap();
    let out =
        mambalrp::verify::run_tract(&compiled, &[("x".into(), Tensor::F32(x.clone()))]).unwrap();
    let e = x.mapv(f32::exp);
    let sum = |a: &ArrayD<f32>, axis: usize, keep: bool| {
        let s = a.sum_axis(ndarray::Axis(axis));
        if keep {
            s.insert_axis(ndarray::Axis(axis))
        } else {
            s
        }
    };
    let expected = [
        ("fwd_keep", sum(&x, 1, true)),
        ("fwd_drop", sum(&x, 1, false)),
        ("rev_drop", sum(&e, 1, false)),
        ("rev_keep", sum(&e, 1, true)),
        ("other_axis", sum(&x, 0, true)),
    ];
    for (name, want) in expected {
        let (_, got) = out.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}");
        let diff = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{name}: {diff}");
    }
}

//! The rule matchers on tiny hand-built graphs, one behaviour per test: each rule's accepted
//! forms (both operand orders, the float16 form with Casts around), and each near miss rejected
//! with the reason the matcher gives for it.
use mambalrp::autodiff::input_dependent;
use mambalrp::emit::value_info;
use mambalrp::ir::{DType, Graph};
use mambalrp::onnx::attributes::{make_int, make_ints};
use mambalrp::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto,
};
use mambalrp::onnx::Tensor;
use mambalrp::rules::{match_all, Edge, Effect, Matches, Rejection, Rule, Site};
use ndarray::{ArrayD, IxDyn};

const FLOAT: DType = DType::Float;
const INT64: DType = DType::Int64;
const FLOAT16: DType = DType::Float16;

/// Shape of the explained input `x` and of most values below.
const SHAPE: [usize; 3] = [1, 4, 8];

/// A graph under construction. Every node is named `<op>_<first output>`, so that the names in
/// sites and rejections can be checked.
struct Tiny {
    inputs: Vec<ValueInfoProto>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Tiny {
    /// A graph reading the explained float32 input `x` of shape [1, 4, 8].
    fn new() -> Self {
        Tiny::with_x(FLOAT)
    }

    /// A graph reading the explained input `x` of shape [1, 4, 8] and element type `dtype`.
    fn with_x(dtype: DType) -> Self {
        Tiny {
            inputs: vec![value_info("x", dtype, &SHAPE)],
            nodes: Vec::new(),
            initializers: Vec::new(),
        }
    }

    /// Another graph input, which the relevance does not start from.
    fn input(mut self, name: &str, dtype: DType, shape: &[usize]) -> Self {
        self.inputs.push(value_info(name, dtype, shape));
        self
    }

    fn op(self, op: &str, inputs: &[&str], output: &str) -> Self {
        self.node(op, inputs, &[output], vec![])
    }

    fn node(
        mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> Self {
        self.nodes.push(NodeProto {
            name: Some(format!("{op}_{}", outputs[0])),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
        self
    }

    fn cast(self, input: &str, output: &str, to: DType) -> Self {
        self.node(
            "Cast",
            &[input],
            &[output],
            vec![make_int("to", to.onnx() as i64)],
        )
    }

    /// `ReduceMean` over the last axis, keeping it (opset 17: axes is an attribute).
    fn mean(self, input: &str, output: &str) -> Self {
        self.node(
            "ReduceMean",
            &[input],
            &[output],
            vec![make_ints("axes", &[-1])],
        )
    }

    /// A float32 initializer of `shape` with every element `value`.
    fn floats(mut self, name: &str, shape: &[usize], value: f32) -> Self {
        let tensor = Tensor::F32(ArrayD::from_elem(IxDyn(shape), value));
        self.initializers.push(tensor.to_proto(name));
        self
    }

    /// An int64 vector initializer.
    fn ints(mut self, name: &str, values: &[i64]) -> Self {
        let tensor =
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap());
        self.initializers.push(tensor.to_proto(name));
        self
    }

    /// Loads the graph with `outputs` as its outputs and runs every matcher, the relevance
    /// starting from `x`.
    fn run(self, outputs: &[&str]) -> Found {
        let model = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                name: Some("tiny".into()),
                node: self.nodes,
                initializer: self.initializers,
                input: self.inputs,
                output: outputs
                    .iter()
                    .map(|o| ValueInfoProto {
                        name: Some(o.to_string()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let graph = Graph::from_model(&model).expect("the tiny graph loads");
        let dependent = input_dependent(&graph, "x").expect("the tiny graph has no cycle");
        let matches = match_all(&graph, &dependent);
        Found { graph, matches }
    }
}

struct Found {
    graph: Graph,
    matches: Matches,
}

impl Found {
    /// Index of the node producing `value`.
    fn index(&self, value: &str) -> usize {
        self.graph
            .producer(value)
            .unwrap_or_else(|| panic!("no node produces '{value}'"))
            .0
    }

    /// Key of the node producing `value` (its first output), as rule effects name nodes.
    fn key(&self, value: &str) -> String {
        self.graph.node_key(self.index(value)).to_string()
    }

    fn sites(&self, rule: Rule) -> Vec<&Site> {
        self.matches
            .sites
            .iter()
            .filter(|s| s.rule == rule)
            .collect()
    }

    fn rejections(&self, rule: Rule) -> Vec<&Rejection> {
        let rejections = self.matches.rejections.iter();
        rejections.filter(|r| r.rule == rule).collect()
    }

    /// The one site of `rule`, asserting there is exactly one and no rejection of that rule.
    fn only_site(&self, rule: Rule) -> &Site {
        let (sites, rejections) = (self.sites(rule), self.rejections(rule));
        assert_eq!(sites.len(), 1, "{rule:?} sites: {sites:#?}");
        assert!(
            rejections.is_empty(),
            "{rule:?} rejections: {rejections:#?}"
        );
        sites[0]
    }

    /// The one rejection of `rule`, asserting there is exactly one and no site of that rule.
    fn only_rejection(&self, rule: Rule) -> &Rejection {
        let (sites, rejections) = (self.sites(rule), self.rejections(rule));
        assert!(sites.is_empty(), "{rule:?} sites: {sites:#?}");
        assert_eq!(rejections.len(), 1, "{rule:?} rejections: {rejections:#?}");
        rejections[0]
    }

    /// Asserts `rule` neither matched nor rejected anything.
    fn assert_silent(&self, rule: Rule) {
        assert!(self.sites(rule).is_empty(), "{:#?}", self.sites(rule));
        assert!(
            self.rejections(rule).is_empty(),
            "{:#?}",
            self.rejections(rule)
        );
    }
}

fn assert_reason(rejection: &Rejection, node: &str, fragments: &[&str]) {
    assert_eq!(rejection.node, node, "{rejection:#?}");
    for fragment in fragments {
        assert!(
            rejection.reason.contains(fragment),
            "the reason should contain {fragment:?}: {rejection:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// R1 SiLU identity
// ---------------------------------------------------------------------------------------------

#[test]
fn silu_matches_sigmoid_on_either_side_of_the_mul() {
    for (operands, gate_slot) in [(["h", "s"], 1), (["s", "h"], 0)] {
        let found = Tiny::new()
            .op("Tanh", &["x"], "h")
            .op("Sigmoid", &["h"], "s")
            .op("Mul", &operands, "y")
            .run(&["y"]);
        let site = found.only_site(Rule::Silu);
        assert_eq!(site.node, "Mul_y");
        assert_eq!(
            site.effect,
            Effect::SiluIdentity {
                product: found.key("y"),
                gate_slot
            },
            "operands {operands:?}"
        );
        assert!(site.detail.contains("x = 'h'"), "{site:#?}");
        assert!(site.detail.contains("'Sigmoid_s'"), "{site:#?}");
        found.assert_silent(Rule::Gate);
    }
}

#[test]
fn silu_matches_the_float16_form_with_the_sigmoid_computed_in_float32() {
    // Exporters of float16 models compute the sigmoid in float32 and cast it back.
    for (operands, gate_slot) in [(["h", "s"], 1), (["s", "h"], 0)] {
        let found = Tiny::with_x(FLOAT16)
            .op("Tanh", &["x"], "h")
            .cast("h", "h32", FLOAT)
            .op("Sigmoid", &["h32"], "s32")
            .cast("s32", "s", FLOAT16)
            .op("Mul", &operands, "y")
            .run(&["y"]);
        let site = found.only_site(Rule::Silu);
        assert_eq!(site.node, "Mul_y");
        assert_eq!(
            site.effect,
            Effect::SiluIdentity {
                product: found.key("y"),
                gate_slot
            },
            "operands {operands:?}"
        );
        assert!(site.detail.contains("x = 'h'"), "{site:#?}");
    }
}

#[test]
fn silu_looks_through_identity_and_same_type_casts_on_both_operands() {
    let found = Tiny::new()
        .op("Tanh", &["x"], "h")
        .cast("h", "hc", FLOAT)
        .op("Sigmoid", &["hc"], "s")
        .op("Identity", &["s"], "si")
        .op("Identity", &["h"], "hi")
        .op("Mul", &["si", "hi"], "y")
        .run(&["y"]);
    let site = found.only_site(Rule::Silu);
    assert_eq!(
        site.effect,
        Effect::SiluIdentity {
            product: found.key("y"),
            gate_slot: 0
        }
    );
    assert!(site.detail.contains("x = 'h'"), "{site:#?}");
}

#[test]
fn silu_rejects_a_sigmoid_of_a_different_tensor_naming_the_node_and_both_tensors() {
    let found = Tiny::new()
        .op("Tanh", &["x"], "a")
        .op("Relu", &["x"], "b")
        .op("Sigmoid", &["b"], "s")
        .op("Mul", &["a", "s"], "y")
        .run(&["y"]);
    let rejection = found.only_rejection(Rule::Silu);
    assert_reason(
        rejection,
        "Mul_y",
        &[
            "one operand is Sigmoid 'Sigmoid_s' of 'b'",
            "the other operand is 'a', not the same tensor",
        ],
    );
    found.assert_silent(Rule::Gate);
}

#[test]
fn silu_does_not_look_through_a_round_trip_via_an_integer_cast() {
    // Casting to int64 and back changes the value: the sigmoid's input is not `h` any more.
    let found = Tiny::new()
        .op("Tanh", &["x"], "h")
        .cast("h", "hi", INT64)
        .cast("hi", "hf", FLOAT)
        .op("Sigmoid", &["hf"], "s")
        .op("Mul", &["h", "s"], "y")
        .run(&["y"]);
    let rejection = found.only_rejection(Rule::Silu);
    assert_reason(
        rejection,
        "Mul_y",
        &[
            "Sigmoid 'Sigmoid_s' of 'hf'",
            "the other operand is 'h', not the same tensor",
        ],
    );
}

#[test]
fn silu_ignores_products_without_a_sigmoid_operand() {
    let found = Tiny::new()
        .op("Tanh", &["x"], "a")
        .op("Relu", &["x"], "b")
        .op("Mul", &["a", "b"], "y")
        .run(&["y"]);
    found.assert_silent(Rule::Silu);
    found.assert_silent(Rule::Gate);
}

// ---------------------------------------------------------------------------------------------
// R2 norm denominator
// ---------------------------------------------------------------------------------------------

/// `r = Sqrt(ReduceMean(h^2) + eps)` with `h = Tanh(x)`, the square written with `square`
/// (`Pow` by 2 or `Mul(h, h)`).
fn rms_denominator(square: &str) -> Tiny {
    let tiny = Tiny::new().op("Tanh", &["x"], "h");
    let tiny = match square {
        "Pow" => tiny.floats("two", &[], 2.0).op("Pow", &["h", "two"], "sq"),
        "Mul" => tiny.op("Mul", &["h", "h"], "sq"),
        other => panic!("no square written with {other}"),
    };
    tiny.mean("sq", "m")
        .floats("eps", &[], 1e-5)
        .op("Add", &["m", "eps"], "var")
        .op("Sqrt", &["var"], "r")
}

/// Asserts the one norm site is at `Sqrt_r`, normalises `h` and stops exactly `stops`.
fn assert_norm_site(found: &Found, stops: Vec<(usize, usize)>) {
    let site = found.only_site(Rule::Norm);
    assert_eq!(site.node, "Sqrt_r");
    let stops = stops.iter().map(|&(i, s)| found.graph.edge(i, s)).collect();
    assert_eq!(site.effect, Effect::StopGradient(stops));
    assert!(site.detail.contains("x = 'h'"), "{site:#?}");
    assert_eq!(found.matches.norm_inputs, vec!["h".to_string()]);
}

#[test]
fn norm_matches_one_divided_by_the_sqrt_stopping_where_the_inverse_is_used() {
    let found = rms_denominator("Pow")
        .floats("one", &[], 1.0)
        .op("Div", &["one", "r"], "inv")
        .op("Mul", &["h", "inv"], "y")
        .run(&["y"]);
    assert_norm_site(&found, vec![(found.index("y"), 1)]);
}

#[test]
fn norm_matches_the_reciprocal_of_the_sqrt_in_either_operand_order() {
    for (operands, slot) in [(["h", "inv"], 1), (["inv", "h"], 0)] {
        let found = rms_denominator("Pow")
            .op("Reciprocal", &["r"], "inv")
            .op("Mul", &operands, "y")
            .run(&["y"]);
        assert_norm_site(&found, vec![(found.index("y"), slot)]);
    }
}

#[test]
fn norm_matches_a_division_by_the_sqrt_stopping_the_divisor() {
    let found = rms_denominator("Pow")
        .op("Div", &["h", "r"], "y")
        .run(&["y"]);
    assert_norm_site(&found, vec![(found.index("y"), 1)]);
}

#[test]
fn norm_matches_the_square_written_as_a_product_with_itself() {
    let found = rms_denominator("Mul")
        .op("Div", &["h", "r"], "y")
        .run(&["y"]);
    assert_norm_site(&found, vec![(found.index("y"), 1)]);
}

#[test]
fn norm_matches_a_sqrt_of_the_mean_without_eps() {
    let found = Tiny::new()
        .op("Tanh", &["x"], "h")
        .op("Mul", &["h", "h"], "sq")
        .mean("sq", "m")
        .op("Sqrt", &["m"], "r")
        .op("Div", &["h", "r"], "y")
        .run(&["y"]);
    assert_norm_site(&found, vec![(found.index("y"), 1)]);
}

#[test]
fn norm_matches_every_use_of_the_inverse() {
    // One inverse scaling two tensors: both products are stopped at the inverse's slot.
    let found = rms_denominator("Pow")
        .op("Reciprocal", &["r"], "inv")
        .op("Mul", &["h", "inv"], "y")
        .op("Relu", &["x"], "g")
        .op("Mul", &["inv", "g"], "z")
        .run(&["y", "z"]);
    assert_norm_site(&found, vec![(found.index("y"), 1), (found.index("z"), 0)]);
}

#[test]
fn norm_matches_layernorm_and_reports_the_uncentred_tensor_as_normalised() {
    let found = Tiny::new()
        .op("Tanh", &["x"], "h")
        .mean("h", "mu")
        .op("Sub", &["h", "mu"], "c")
        .floats("two", &[], 2.0)
        .op("Pow", &["c", "two"], "sq")
        .mean("sq", "m")
        .floats("eps", &[], 1e-5)
        .op("Add", &["eps", "m"], "var")
        .op("Sqrt", &["var"], "r")
        .op("Div", &["c", "r"], "y")
        .run(&["y"]);
    assert_norm_site(&found, vec![(found.index("y"), 1)]);
}

#[test]
fn norm_matches_the_float16_form_with_the_denominator_computed_in_float32() {
    let found = Tiny::with_x(FLOAT16)
        .op("Tanh", &["x"], "h")
        .cast("h", "h32", FLOAT)
        .floats("two", &[], 2.0)
        .op("Pow", &["h32", "two"], "sq")
        .mean("sq", "m")
        .floats("eps", &[], 1e-5)
        .op("Add", &["m", "eps"], "var")
        .op("Sqrt", &["var"], "r")
        .cast("r", "r16", FLOAT16)
        .op("Div", &["h", "r16"], "y")
        .run(&["y"]);
    assert_norm_site(&found, vec![(found.index("y"), 1)]);
}

#[test]
fn norm_rejects_an_eps_that_is_not_a_constant() {
    let found = Tiny::new()
        .input("e", FLOAT, &[1])
        .op("Tanh", &["x"], "h")
        .op("Mul", &["h", "h"], "sq")
        .mean("sq", "m")
        .op("Add", &["m", "e"], "var")
        .op("Sqrt", &["var"], "r")
        .op("Div", &["h", "r"], "y")
        .run(&["y"]);
    let rejection = found.only_rejection(Rule::Norm);
    assert_reason(
        rejection,
        "Sqrt_r",
        &["its input is an Add without a constant eps"],
    );
    assert!(found.matches.norm_inputs.is_empty());
}

#[test]
fn norm_rejects_a_sqrt_of_something_other_than_a_mean() {
    let found = Tiny::new()
        .op("Tanh", &["x"], "h")
        .floats("eps", &[], 1e-5)
        .op("Add", &["h", "eps"], "var")
        .op("Sqrt", &["var"], "r")
        .op("Div", &["h", "r"], "y")
        .run(&["y"]);
    let rejection = found.only_rejection(Rule::Norm);
    assert_reason(
        rejection,
        "Sqrt_r",
        &["its input is not ReduceMean(...) + eps"],
    );
}

#[test]
fn norm_rejects_a_mean_that_does_not_average_a_square() {
    let cube = |t: Tiny| t.floats("three", &[], 3.0).op("Pow", &["h", "three"], "sq");
    let product = |t: Tiny| t.op("Relu", &["x"], "g").op("Mul", &["h", "g"], "sq");
    let no_square = |t: Tiny| t.op("Relu", &["h"], "sq");
    for (what, make) in [
        ("cube", &cube as &dyn Fn(Tiny) -> Tiny),
        ("product of two tensors", &product),
        ("no product", &no_square),
    ] {
        let found = make(Tiny::new().op("Tanh", &["x"], "h"))
            .mean("sq", "m")
            .floats("eps", &[], 1e-5)
            .op("Add", &["m", "eps"], "var")
            .op("Sqrt", &["var"], "r")
            .op("Div", &["h", "r"], "y")
            .run(&["y"]);
        let rejection = found.only_rejection(Rule::Norm);
        assert_eq!(rejection.node, "Sqrt_r", "{what}");
        assert!(
            rejection
                .reason
                .contains("ReduceMean 'ReduceMean_m' does not average a square"),
            "{what}: {rejection:#?}"
        );
    }
}

#[test]
fn norm_rejects_a_sqrt_used_other_than_as_a_divisor() {
    for (op, operands) in [("Mul", ["h", "r"]), ("Div", ["r", "h"])] {
        let found = rms_denominator("Pow").op(op, &operands, "y").run(&["y"]);
        let rejection = found.only_rejection(Rule::Norm);
        let feeds = format!("its output feeds {op} '{op}_y', not a reciprocal or a divisor");
        assert_reason(rejection, "Sqrt_r", &[&feeds]);
        assert!(found.matches.norm_inputs.is_empty());
    }
}

#[test]
fn norm_keeps_the_divisor_and_rejects_a_second_reader_of_the_sqrt() {
    let found = rms_denominator("Pow")
        .op("Div", &["h", "r"], "y")
        .op("Mul", &["r", "h"], "z")
        .run(&["y", "z"]);
    let sites = found.sites(Rule::Norm);
    assert_eq!(sites.len(), 1, "{sites:#?}");
    assert_eq!(
        sites[0].effect,
        Effect::StopGradient(vec![Edge::new(&found.key("y"), 1)])
    );
    let rejections = found.rejections(Rule::Norm);
    assert_eq!(rejections.len(), 1, "{rejections:#?}");
    assert_reason(
        rejections[0],
        "Sqrt_r",
        &["its output feeds Mul 'Mul_z', not a reciprocal or a divisor"],
    );
}

// ---------------------------------------------------------------------------------------------
// R3 SSM selection parameters
// ---------------------------------------------------------------------------------------------

/// x_proj: `xp = x @ wx`, [1, 4, 8] with dt_in, B, C = 2, 3, 3 channels of it.
fn x_proj() -> Tiny {
    Tiny::new()
        .floats("wx", &[8, 8], 0.1)
        .op("MatMul", &["x", "wx"], "xp")
}

/// `x_proj` split by one `Split` into `dt_in`, `bm`, `cm`.
fn split_x_proj() -> Tiny {
    x_proj().ints("sizes", &[2, 3, 3]).node(
        "Split",
        &["xp", "sizes"],
        &["dt_in", "bm", "cm"],
        vec![make_int("axis", -1)],
    )
}

/// `delta = Softplus(dt_in @ wdt + bdt)`, and `bc = bm * cm` reading B and C.
fn selection(tiny: Tiny) -> Tiny {
    tiny.floats("wdt", &[2, 8], 0.1)
        .op("MatMul", &["dt_in", "wdt"], "dt")
        .floats("bdt", &[8], 0.5)
        .op("Add", &["dt", "bdt"], "dtb")
        .op("Softplus", &["dtb"], "delta")
        .op("Mul", &["bm", "cm"], "bc")
}

#[test]
fn ssm_matches_softplus_of_dt_proj_of_a_split_of_x_proj() {
    let found = selection(split_x_proj()).run(&["delta", "bc"]);
    let site = found.only_site(Rule::Ssm);
    assert_eq!(site.node, "Split_dt_in");
    let (dt_proj, bc) = (found.key("dt"), found.key("bc"));
    assert_eq!(
        site.effect,
        Effect::StopGradient(vec![
            Edge::new(&dt_proj, 0),
            Edge::new(&bc, 0),
            Edge::new(&bc, 1)
        ])
    );
    assert!(site.detail.contains("'dt_in', 'bm', 'cm'"), "{site:#?}");
    assert!(
        site.detail.contains("Softplus 'Softplus_delta'"),
        "{site:#?}"
    );
}

#[test]
fn ssm_matches_dt_proj_without_a_bias() {
    let found = split_x_proj()
        .floats("wdt", &[2, 8], 0.1)
        .op("MatMul", &["dt_in", "wdt"], "dt")
        .op("Softplus", &["dt"], "delta")
        .op("Mul", &["bm", "cm"], "bc")
        .run(&["delta", "bc"]);
    let site = found.only_site(Rule::Ssm);
    assert_eq!(site.node, "Split_dt_in");
    let (dt_proj, bc) = (found.key("dt"), found.key("bc"));
    assert_eq!(
        site.effect,
        Effect::StopGradient(vec![
            Edge::new(&dt_proj, 0),
            Edge::new(&bc, 0),
            Edge::new(&bc, 1)
        ])
    );
}

#[test]
fn ssm_matches_three_slices_of_x_proj() {
    let mut tiny = x_proj().ints("axes", &[-1]);
    for (name, start, end) in [("dt_in", 0, 2), ("bm", 2, 5), ("cm", 5, 8)] {
        let (starts, ends) = (format!("{name}_start"), format!("{name}_end"));
        tiny = tiny.ints(&starts, &[start]).ints(&ends, &[end]).op(
            "Slice",
            &["xp", &starts, &ends, "axes"],
            name,
        );
    }
    let found = selection(tiny).run(&["delta", "bc"]);
    let site = found.only_site(Rule::Ssm);
    assert_eq!(site.node, "Slice_dt_in+Slice_bm+Slice_cm");
    let (dt_proj, bc) = (found.key("dt"), found.key("bc"));
    assert_eq!(
        site.effect,
        Effect::StopGradient(vec![
            Edge::new(&dt_proj, 0),
            Edge::new(&bc, 0),
            Edge::new(&bc, 1)
        ])
    );
}

#[test]
fn ssm_matches_the_float16_form_with_softplus_computed_in_float32() {
    let found = Tiny::with_x(FLOAT16)
        .cast("x", "x32", FLOAT)
        .floats("wx", &[8, 8], 0.1)
        .op("MatMul", &["x32", "wx"], "xp")
        .ints("sizes", &[2, 3, 3])
        .node(
            "Split",
            &["xp", "sizes"],
            &["dt_in", "bm", "cm"],
            vec![make_int("axis", -1)],
        )
        .cast("dt_in", "dt_in16", FLOAT16)
        .cast("dt_in16", "dt_in32", FLOAT)
        .floats("wdt", &[2, 8], 0.1)
        .op("MatMul", &["dt_in32", "wdt"], "dt")
        .floats("bdt", &[8], 0.5)
        .op("Add", &["dt", "bdt"], "dtb")
        .cast("dtb", "dtb16", FLOAT16)
        .cast("dtb16", "dtb32", FLOAT)
        .op("Softplus", &["dtb32"], "delta")
        .op("Mul", &["bm", "cm"], "bc")
        .run(&["delta", "bc"]);
    let site = found.only_site(Rule::Ssm);
    assert_eq!(site.node, "Split_dt_in");
    let (cast, bc) = (found.key("dt_in16"), found.key("bc"));
    assert_eq!(
        site.effect,
        Effect::StopGradient(vec![
            Edge::new(&cast, 0),
            Edge::new(&bc, 0),
            Edge::new(&bc, 1)
        ])
    );
}

#[test]
fn ssm_reports_one_site_for_two_softplus_reading_the_same_split() {
    let found = selection(split_x_proj())
        .op("Softplus", &["dtb"], "delta2")
        .run(&["delta", "delta2", "bc"]);
    let site = found.only_site(Rule::Ssm);
    assert_eq!(site.node, "Split_dt_in");
}

#[test]
fn ssm_rejects_a_softplus_not_fed_by_a_matmul() {
    let found = Tiny::new()
        .op("Tanh", &["x"], "h")
        .floats("bias", &[8], 0.5)
        .op("Add", &["h", "bias"], "hb")
        .op("Softplus", &["hb"], "delta")
        .run(&["delta"]);
    let rejection = found.only_rejection(Rule::Ssm);
    assert_reason(
        rejection,
        "Softplus_delta",
        &["its input depends on the graph input 'x' (read by Tanh 'Tanh_h') other than through a Split/Slice of the x_proj output"],
    );
}

#[test]
fn ssm_rejects_a_dt_proj_without_a_constant_weight() {
    let found = split_x_proj()
        .input("w", FLOAT, &[2, 8])
        .op("MatMul", &["dt_in", "w"], "dt")
        .op("Softplus", &["dt"], "delta")
        .run(&["delta"]);
    let rejection = found.only_rejection(Rule::Ssm);
    assert_reason(
        rejection,
        "Softplus_delta",
        &["MatMul 'MatMul_dt' has no constant dt_proj weight"],
    );
}

#[test]
fn ssm_rejects_a_dt_proj_reading_a_graph_input() {
    let found = Tiny::new()
        .floats("wdt", &[8, 8], 0.1)
        .op("MatMul", &["x", "wdt"], "dt")
        .op("Softplus", &["dt"], "delta")
        .run(&["delta"]);
    let rejection = found.only_rejection(Rule::Ssm);
    assert_reason(
        rejection,
        "Softplus_delta",
        &["its input depends on the graph input 'x' (read by MatMul 'MatMul_dt') other than through a Split/Slice"],
    );
}

#[test]
fn ssm_rejects_a_dt_proj_reading_something_other_than_a_split() {
    let found = Tiny::new()
        .op("Relu", &["x"], "r")
        .floats("wdt", &[8, 8], 0.1)
        .op("MatMul", &["r", "wdt"], "dt")
        .op("Softplus", &["dt"], "delta")
        .run(&["delta"]);
    let rejection = found.only_rejection(Rule::Ssm);
    assert_reason(
        rejection,
        "Softplus_delta",
        &["its input depends on the graph input 'x' (read by Relu 'Relu_r') other than through a Split/Slice"],
    );
}

// ---------------------------------------------------------------------------------------------
// R4 gate half rule
// ---------------------------------------------------------------------------------------------

/// `sz = silu(z)` with `z = Relu(x)`, and `res = Tanh(x)`: both depend on the input.
fn silu_and_residual() -> Tiny {
    Tiny::new()
        .op("Tanh", &["x"], "res")
        .op("Relu", &["x"], "z")
        .op("Sigmoid", &["z"], "sig")
        .op("Mul", &["z", "sig"], "sz")
}

#[test]
fn gate_halves_the_gradient_of_a_product_with_a_silu_in_either_operand_order() {
    for operands in [["res", "sz"], ["sz", "res"]] {
        let found = silu_and_residual().op("Mul", &operands, "g").run(&["g"]);
        let site = found.only_site(Rule::Gate);
        assert_eq!(site.node, "Mul_g", "operands {operands:?}");
        assert_eq!(site.effect, Effect::HalfGradient(found.key("g")));
        assert!(site.detail.contains("'res' * silu 'sz'"), "{site:#?}");
        // The SiLU inside is its own site, and not a gate.
        assert_eq!(found.only_site(Rule::Silu).node, "Mul_sz");
    }
}

#[test]
fn gate_matches_the_float16_form_with_casts_between_the_silu_and_the_product() {
    for operands in [["res", "sz16"], ["sz16", "res"]] {
        let found = Tiny::with_x(FLOAT16)
            .op("Tanh", &["x"], "res")
            .op("Relu", &["x"], "z")
            .cast("z", "z32", FLOAT)
            .op("Sigmoid", &["z32"], "sig")
            .op("Mul", &["z32", "sig"], "sz")
            .cast("sz", "sz16", FLOAT16)
            .op("Mul", &operands, "g")
            .run(&["g"]);
        let site = found.only_site(Rule::Gate);
        assert_eq!(site.node, "Mul_g", "operands {operands:?}");
        assert_eq!(site.effect, Effect::HalfGradient(found.key("g")));
        assert_eq!(found.only_site(Rule::Silu).node, "Mul_sz");
    }
}

#[test]
fn gate_rejects_a_silu_scaled_by_a_constant() {
    for operands in [["c", "sz"], ["sz", "c"]] {
        let found = silu_and_residual()
            .floats("c", &[8], 0.5)
            .op("Mul", &operands, "g")
            .run(&["g"]);
        let rejection = found.only_rejection(Rule::Gate);
        assert_reason(
            rejection,
            "Mul_g",
            &[
                "multiplies SiLU 'sz' by 'c'",
                "which does not depend on the input (already linear)",
            ],
        );
        assert_eq!(found.only_site(Rule::Silu).node, "Mul_sz");
    }
}

#[test]
fn gate_rejects_a_silu_scaled_by_an_input_other_than_the_explained_one() {
    let found = silu_and_residual()
        .input("mask", FLOAT, &SHAPE)
        .op("Mul", &["mask", "sz"], "g")
        .run(&["g"]);
    let rejection = found.only_rejection(Rule::Gate);
    assert_reason(
        rejection,
        "Mul_g",
        &["multiplies SiLU 'sz' by 'mask', which does not depend on the input"],
    );
}

#[test]
fn gate_ignores_a_product_with_no_silu_operand() {
    let found = silu_and_residual()
        .op("Mul", &["res", "z"], "g")
        .run(&["g", "sz"]);
    found.assert_silent(Rule::Gate);
    assert_eq!(found.only_site(Rule::Silu).node, "Mul_sz");
}

#[test]
fn gate_rejects_a_silu_of_a_tensor_that_does_not_depend_on_the_input() {
    let found = Tiny::new()
        .input("other", FLOAT, &SHAPE)
        .op("Tanh", &["x"], "res")
        .op("Sigmoid", &["other"], "sig")
        .op("Mul", &["other", "sig"], "sz")
        .op("Mul", &["res", "sz"], "g")
        .run(&["g"]);
    let rejection = found.only_rejection(Rule::Gate);
    assert_reason(rejection, "Mul_g", &["does not depend on the input"]);
}

//! The reference comparison can fail: leaving any one rule out moves the relevances well beyond
//! the tolerance, and an unruled non-linearity is rejected in MambaLRP mode, naming the node.
mod common;

use common::*;
use mambalrp::{compile, Error, Options};

#[test]
fn leaving_out_any_rule_breaks_agreement_with_the_reference() {
    let reference = Reference::load("tiny_bigxproj");
    let expected = reference.f32("mambalrp_relevance_embedding");
    for exporter in EXPORTERS {
        let model = load("tiny_bigxproj", exporter);
        for ablation in [
            "norm,ssm,gate",
            "silu,ssm,gate",
            "silu,norm,gate",
            "silu,norm,ssm",
        ] {
            let outputs = run(&compile_with(&model, ablation, true), &reference.inputs());
            let err = relative_error(output(&outputs, "relevance_embedding"), &expected);
            println!("tiny_bigxproj{exporter} rules {ablation}: relative error {err:.2e}");
            assert!(
                err > 1e-3,
                "rules {ablation} should differ from full MambaLRP, got {err:.2e}"
            );
        }
    }
}

/// Rewires block 0's gate SiLU `z * sigmoid(z)` into `x * sigmoid(z)`, with x the conv-branch
/// SiLU input (same shape): the product is no longer a SiLU and `sigmoid(z)` sits unruled on the
/// relevance path. Returns the Sigmoid's node name.
fn break_one_silu(model: &mut mambalrp::onnx::proto::ModelProto) -> String {
    let graph = model.graph.as_mut().unwrap();
    let sigmoid_of = |graph: &mambalrp::onnx::proto::GraphProto, value: &str| {
        graph
            .node
            .iter()
            .find(|n| n.op_type() == "Sigmoid" && n.output[0] == value)
            .map(|n| n.name().to_string())
    };
    let silus: Vec<(usize, usize, String)> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type() == "Mul")
        .filter_map(|(i, n)| {
            (0..2).find_map(|slot| sigmoid_of(graph, &n.input[slot]).map(|s| (i, 1 - slot, s)))
        })
        .collect();
    let (conv_silu, conv_x_slot, _) = silus[0].clone();
    let (gate_silu, gate_x_slot, gate_sigmoid) = silus[1].clone();
    graph.node[gate_silu].input[gate_x_slot] = graph.node[conv_silu].input[conv_x_slot].clone();
    gate_sigmoid
}

#[test]
fn broken_silu_site_is_rejected_naming_the_node() {
    for exporter in EXPORTERS {
        let mut model = load("tiny_zerobias", exporter);
        let sigmoid = break_one_silu(&mut model);
        match compile(&model, &Options::default()) {
            Err(Error::NotLinear { node, op, why }) => {
                println!("rejected: {node} ({op}) {why}");
                assert_eq!(node, sigmoid, "the unruled Sigmoid must be named");
            }
            Err(other) => panic!("expected a linearity error, got {other}"),
            Ok(_) => panic!("a model with a broken SiLU must be rejected in mambalrp mode"),
        }
        // Plain gradient x input differentiates everything and still compiles.
        assert!(compile(
            &model,
            &Options {
                rules: "gi".parse().unwrap(),
                ..Options::default()
            }
        )
        .is_ok());
    }
}

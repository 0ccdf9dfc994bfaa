//! Reductions along axes: Reduce*, ArgMax/ArgMin, CumSum, Softmax.
use super::attrs::{self, Attrs};
use super::support::{input_type, normalize_axis, one, reduction, same_as_input};
use super::{Arity, Linearity, OpDef, Step, Vjp};
use crate::error::Result;
use crate::ir::{DType, Graph, ValueType};
use crate::onnx::attributes::make_int;
use crate::onnx::proto::NodeProto;

const UNARY: Arity = Arity::new(1, 1);

pub(super) static OPS: &[OpDef] = &[
    OpDef::new("ReduceSum", UNARY, infer_reduce)
        .with_parse(attrs::reduce)
        .with_vjp(Linearity::Linear, reduce_back),
    OpDef::new("ReduceMean", UNARY, infer_reduce)
        .with_parse(attrs::reduce)
        .with_vjp(Linearity::Linear, reduce_back),
    OpDef::new("ReduceMax", UNARY, infer_reduce).with_parse(attrs::reduce),
    OpDef::new("ReduceMin", UNARY, infer_reduce).with_parse(attrs::reduce),
    OpDef::new("ReduceProd", UNARY, infer_reduce).with_parse(attrs::reduce),
    OpDef::new("ReduceL2", UNARY, infer_reduce).with_parse(attrs::reduce),
    OpDef::new("ArgMax", UNARY, infer_arg_reduce).with_parse(attrs::arg_reduce),
    OpDef::new("ArgMin", UNARY, infer_arg_reduce).with_parse(attrs::arg_reduce),
    OpDef::new("CumSum", Arity::new(2, 1), same_as_input)
        .with_parse(attrs::cumsum)
        .with_vjp(
            Linearity::LinearIn {
                slots: &[0],
                why: "its axis",
            },
            cumsum_back,
        )
        .recomputable(),
    OpDef::new("Softmax", UNARY, same_as_input).with_parse(attrs::softmax_axis),
    OpDef::new("LogSoftmax", UNARY, same_as_input).with_parse(attrs::softmax_axis),
];

/// Keeps (as 1) or drops the dims at `removed`.
fn reduced_shape(shape: &[usize], removed: &[usize], keep: bool) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| {
            if removed.contains(&i) {
                keep.then_some(1)
            } else {
                Some(d)
            }
        })
        .collect()
}

fn infer_reduce(graph: &Graph, node: &NodeProto, attrs: &Attrs) -> Result<Vec<Option<ValueType>>> {
    let Attrs::Reduce(reduce) = attrs else {
        unreachable!("parsed by attrs::reduce")
    };
    let x = input_type(graph, node, 0)?;
    let (axes, keep) = reduction(graph, node, reduce, &x.shape)?;
    one(ValueType {
        dtype: x.dtype,
        shape: reduced_shape(&x.shape, &axes, keep),
    })
}

fn infer_arg_reduce(
    graph: &Graph,
    node: &NodeProto,
    attrs: &Attrs,
) -> Result<Vec<Option<ValueType>>> {
    let &Attrs::ArgReduce { axis, keepdims } = attrs else {
        unreachable!("parsed by attrs::arg_reduce")
    };
    let x = input_type(graph, node, 0)?;
    let axis = normalize_axis(axis, x.rank(), node)?;
    one(ValueType {
        dtype: DType::Int64,
        shape: reduced_shape(&x.shape, &[axis], keepdims),
    })
}

/// ReduceSum spreads the cotangent back over the reduced axes; ReduceMean also divides it by
/// their size. The spreading is left to broadcasting where the input has other gradients.
fn reduce_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let node = step.node;
    let Attrs::Reduce(reduce) = step.attrs else {
        unreachable!("parsed by attrs::reduce")
    };
    let g = step.grad()?;
    let shape = step.input_shape(graph, 0)?;
    let (axes, keep) = reduction(graph, node, reduce, &shape)?;
    let kept = if keep || axes.is_empty() {
        g
    } else {
        let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        graph.op_unsqueeze(&g, &axes)
    };
    let mut spread = kept;
    if node.op_type() == "ReduceMean" {
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        spread = graph.op_scale(&spread, 1.0 / count.max(1) as f32);
    }
    // Not expanded here: the other gradients of the input broadcast it when they add it.
    let mut vjp = Vjp::default();
    vjp.spread(0, spread, axes);
    Ok(vjp)
}

/// The transpose of a cumulative sum is the cumulative sum the other way along the same axis
/// (an exclusive sum stays exclusive).
fn cumsum_back(graph: &mut Graph, step: &mut Step) -> Result<Vjp> {
    let &Attrs::CumSum { exclusive, reverse } = step.attrs else {
        unreachable!("parsed by attrs::cumsum")
    };
    let g = step.grad()?;
    let mut vjp = Vjp::default();
    vjp.full(
        0,
        graph.add_node(
            "CumSum",
            &[&g, &step.node.input[1]],
            vec![
                make_int("exclusive", i64::from(exclusive)),
                make_int("reverse", i64::from(!reverse)),
            ],
        ),
    );
    Ok(vjp)
}

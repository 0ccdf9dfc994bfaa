//! How many inputs and outputs each op we look into must have, checked once when the graph is
//! built, so that the passes can index a node's required operands without panicking on a
//! malformed file.
use crate::error::{Error, Result};
use crate::onnx::proto::NodeProto;

/// (required inputs, required outputs) of the ops the compiler reads, for opset `opset`.
fn required(op: &str, opset: i64) -> Option<(usize, usize)> {
    Some(match op {
        "Constant" => (0, 1),
        "Identity" | "Cast" | "Neg" | "Sqrt" | "Reciprocal" | "Exp" | "Log" | "Sigmoid"
        | "Softplus" | "Tanh" | "Relu" | "Abs" | "Erf" | "Softmax" | "LogSoftmax" | "Swish"
        | "Transpose" | "Flatten" | "Squeeze" | "Concat" | "Split" | "Shape"
        | "ConstantOfShape" | "ArgMax" | "ArgMin" | "Sum" | "Mean" | "ReduceMean" | "ReduceSum"
        | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2" => (1, 1),
        "CumSum" => (2, 1),
        "Unsqueeze" if opset >= 13 => (2, 1),
        "Unsqueeze" => (1, 1),
        "Slice" if opset >= 10 => (3, 1),
        "Slice" => (1, 1),
        "Pad" if opset >= 11 => (2, 1),
        "Pad" => (1, 1),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Greater" | "Less" | "Equal"
        | "GreaterOrEqual" | "LessOrEqual" | "And" | "Or" | "MatMul" | "Gemm" | "Gather"
        | "GatherElements" | "Reshape" | "Expand" | "Conv" => (2, 1),
        "Where" | "Range" => (3, 1),
        _ => return None,
    })
}

pub fn check(node: &NodeProto, opset: i64) -> Result<()> {
    let Some((inputs, outputs)) = required(node.op_type(), opset) else {
        return Ok(());
    };
    if node.input.len() < inputs || node.input[..inputs].iter().any(String::is_empty) {
        return Err(Error::node(
            node,
            format!("needs {inputs} input(s), has {:?}", node.input),
        ));
    }
    if node.output.len() < outputs || node.output[..outputs].iter().any(String::is_empty) {
        return Err(Error::node(
            node,
            format!("needs {outputs} output(s), has {:?}", node.output),
        ));
    }
    Ok(())
}

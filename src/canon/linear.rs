//! Linear layers in ONNX Runtime's fused form: `FusedMatMul` (what its extended offline
//! optimisation makes of a Transpose or a scale next to a MatMul) becomes MatMul with the
//! transposes and the scale written out.
use crate::error::Result;
use crate::ir::Graph;
use crate::onnx::attributes;

pub fn fused_matmul(graph: &mut Graph, index: usize) -> Result<bool> {
    let node = graph.node(index).clone();
    if node.domain() != "com.microsoft" || node.input.len() < 2 {
        return Ok(false);
    }
    let flag = |name: &str| attributes::int(&node, name).unwrap_or(0) != 0;
    if flag("transBatchA") || flag("transBatchB") {
        return Ok(false);
    }
    let mut operands = Vec::new();
    for (slot, transposed) in [(0, flag("transA")), (1, flag("transB"))] {
        let value = node.input[slot].clone();
        operands.push(if transposed {
            let Ok(shape) = graph.shape(&value) else {
                return Ok(false);
            };
            let rank = shape.len();
            graph.op_transpose_last_two(&value, rank)
        } else {
            value
        });
    }
    let mut product = graph.op_binary("MatMul", &operands[0], &operands[1]);
    let alpha = attributes::float(&node, "alpha").unwrap_or(1.0);
    if alpha != 1.0 {
        product = graph.op_scale(&product, alpha);
    }
    graph.substitute(&node.output[0], &product);
    Ok(true)
}

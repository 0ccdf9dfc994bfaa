//! Node attributes decoded once, with the ONNX defaults filled in. Axes stay as written (they
//! may be negative); [`super::normalize_axis`] resolves them against a rank, in one place.
use crate::error::{Error, Result};
use crate::ir::DType;
use crate::onnx::attributes::{find, float, int, ints, string};
use crate::onnx::proto::NodeProto;

#[derive(Debug, Clone, PartialEq)]
pub enum Attrs {
    None,
    /// Target element type of a Cast.
    Cast {
        to: DType,
    },
    /// The single `axis` of Concat, Gather, GatherElements, Flatten, Softmax, LogSoftmax.
    Axis(i64),
    /// ArgMax / ArgMin.
    ArgReduce {
        axis: i64,
        keepdims: bool,
    },
    /// The `axes` attribute of Squeeze / Unsqueeze (opsets that had one).
    Axes(Option<Vec<i64>>),
    Split(SplitAttrs),
    Transpose {
        perm: Option<Vec<i64>>,
    },
    Gemm(GemmAttrs),
    Conv(ConvAttrs),
    Reduce(ReduceAttrs),
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Pad {
        constant_mode: bool,
    },
    Reshape {
        allowzero: bool,
    },
    /// Slice bounds given as attributes (opsets before 10).
    Slice {
        starts: Option<Vec<i64>>,
        ends: Option<Vec<i64>>,
        axes: Option<Vec<i64>>,
    },
    ConstantOfShape {
        dtype: DType,
    },
    /// CumSum's direction flags (the axis is an input).
    CumSum {
        exclusive: bool,
        reverse: bool,
    },
    Einsum(EinsumSpec),
    Scan {
        scan_inputs: usize,
        input_axes: Vec<i64>,
        output_axes: Vec<i64>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SplitAttrs {
    pub axis: i64,
    /// Sizes given as an attribute (before opset 13); later opsets pass them as input 1.
    pub sizes: Option<Vec<i64>>,
    pub num_outputs: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmAttrs {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConvAttrs {
    /// Defaults depend on the spatial rank, known only with the input's type.
    pub pads: Option<Vec<i64>>,
    pub strides: Option<Vec<i64>>,
    pub dilations: Option<Vec<i64>>,
    pub group: i64,
    /// `auto_pad` other than NOTSET: the output size would depend on rules we do not model.
    pub auto_pad: Option<String>,
}

impl ConvAttrs {
    /// (pads, strides, dilations) with the defaults for `spatial` spatial axes.
    pub fn geometry(&self, spatial: usize) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        (
            self.pads.clone().unwrap_or_else(|| vec![0; 2 * spatial]),
            self.strides.clone().unwrap_or_else(|| vec![1; spatial]),
            self.dilations.clone().unwrap_or_else(|| vec![1; spatial]),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReduceAttrs {
    pub keepdims: bool,
    pub noop_with_empty_axes: bool,
    /// Axes given as an attribute; opset 18 (ReduceSum: 13) moved them to input 1.
    pub axes: Option<Vec<i64>>,
}

pub fn none(_: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::None)
}

pub fn cast(node: &NodeProto, _: i64) -> Result<Attrs> {
    let to = int(node, "to").ok_or_else(|| Error::node(node, "Cast without 'to'"))?;
    Ok(Attrs::Cast {
        to: DType::from_onnx(to as i32),
    })
}

pub fn axis_default_0(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Axis(int(node, "axis").unwrap_or(0)))
}

pub fn axis_default_1(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Axis(int(node, "axis").unwrap_or(1)))
}

/// Softmax and LogSoftmax: the last axis since opset 13, axis 1 before.
pub fn softmax_axis(node: &NodeProto, opset: i64) -> Result<Attrs> {
    let default = if opset >= 13 { -1 } else { 1 };
    Ok(Attrs::Axis(int(node, "axis").unwrap_or(default)))
}

pub fn cumsum(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::CumSum {
        exclusive: int(node, "exclusive").unwrap_or(0) == 1,
        reverse: int(node, "reverse").unwrap_or(0) == 1,
    })
}

pub fn arg_reduce(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::ArgReduce {
        axis: int(node, "axis").unwrap_or(0),
        keepdims: int(node, "keepdims").unwrap_or(1) == 1,
    })
}

pub fn axes(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Axes(ints(node, "axes")))
}

pub fn split(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Split(SplitAttrs {
        axis: int(node, "axis").unwrap_or(0),
        sizes: ints(node, "split"),
        num_outputs: int(node, "num_outputs"),
    }))
}

pub fn transpose(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Transpose {
        perm: ints(node, "perm"),
    })
}

pub fn gemm(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Gemm(GemmAttrs {
        alpha: float(node, "alpha").unwrap_or(1.0),
        beta: float(node, "beta").unwrap_or(1.0),
        trans_a: int(node, "transA").unwrap_or(0) != 0,
        trans_b: int(node, "transB").unwrap_or(0) != 0,
    }))
}

pub fn conv(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Conv(ConvAttrs {
        pads: ints(node, "pads"),
        strides: ints(node, "strides"),
        dilations: ints(node, "dilations"),
        group: int(node, "group").unwrap_or(1),
        auto_pad: string(node, "auto_pad").filter(|p| p != "NOTSET"),
    }))
}

pub fn reduce(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Reduce(ReduceAttrs {
        keepdims: int(node, "keepdims").unwrap_or(1) == 1,
        noop_with_empty_axes: int(node, "noop_with_empty_axes") == Some(1),
        axes: ints(node, "axes"),
    }))
}

pub fn shape(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Shape {
        start: int(node, "start").unwrap_or(0),
        end: int(node, "end"),
    })
}

pub fn pad(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Pad {
        constant_mode: string(node, "mode").is_none_or(|m| m == "constant"),
    })
}

pub fn reshape(node: &NodeProto, _: i64) -> Result<Attrs> {
    Ok(Attrs::Reshape {
        allowzero: int(node, "allowzero").unwrap_or(0) == 1,
    })
}

pub fn slice(node: &NodeProto, opset: i64) -> Result<Attrs> {
    if opset >= 10 {
        return Ok(Attrs::None);
    }
    Ok(Attrs::Slice {
        starts: ints(node, "starts"),
        ends: ints(node, "ends"),
        axes: ints(node, "axes"),
    })
}

pub fn constant_of_shape(node: &NodeProto, _: i64) -> Result<Attrs> {
    let dtype = find(node, "value")
        .and_then(|a| a.t.as_ref())
        .map_or(DType::Float, |t| DType::from_onnx(t.data_type()));
    Ok(Attrs::ConstantOfShape { dtype })
}

pub fn scan(node: &NodeProto, _: i64) -> Result<Attrs> {
    if find(node, "body").and_then(|a| a.g.as_ref()).is_none() {
        return Err(Error::node(node, "Scan without a body"));
    }
    Ok(Attrs::Scan {
        scan_inputs: int(node, "num_scan_inputs").unwrap_or(0).max(0) as usize,
        input_axes: ints(node, "scan_input_axes").unwrap_or_default(),
        output_axes: ints(node, "scan_output_axes").unwrap_or_default(),
    })
}

/// An Einsum equation without ellipsis: the subscripts of each operand and of the output.
#[derive(Debug, Clone, PartialEq)]
pub struct EinsumSpec {
    pub operands: Vec<Vec<char>>,
    pub output: Vec<char>,
}

impl EinsumSpec {
    /// The equation written back (`ij,jk->ik`).
    pub fn equation(operands: &[&[char]], output: &[char]) -> String {
        let terms: Vec<String> = operands.iter().map(|t| t.iter().collect()).collect();
        format!("{}->{}", terms.join(","), output.iter().collect::<String>())
    }
}

pub fn einsum(node: &NodeProto, _: i64) -> Result<Attrs> {
    let equation =
        string(node, "equation").ok_or_else(|| Error::node(node, "Einsum without an equation"))?;
    let equation: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    if equation.contains("...") {
        return Err(Error::node(
            node,
            format!("Einsum '{equation}': ellipsis is not supported"),
        ));
    }
    let (inputs, output) = match equation.split_once("->") {
        Some((inputs, output)) => (inputs.to_string(), Some(output.to_string())),
        None => (equation.clone(), None),
    };
    let operands: Vec<Vec<char>> = inputs.split(',').map(|t| t.chars().collect()).collect();
    let letters = |t: &[char]| t.iter().all(char::is_ascii_alphabetic);
    if !operands.iter().all(|t| letters(t)) || operands.len() != node.input.len() {
        return Err(Error::node(
            node,
            format!(
                "Einsum '{equation}' does not match its {} inputs",
                node.input.len()
            ),
        ));
    }
    // Implicit output: the letters used once, in alphabetical order.
    let output: Vec<char> = match output {
        Some(o) => o.chars().collect(),
        None => {
            let mut once: Vec<char> = operands
                .iter()
                .flatten()
                .copied()
                .filter(|c| operands.iter().flatten().filter(|d| *d == c).count() == 1)
                .collect();
            once.sort_unstable();
            once
        }
    };
    if !letters(&output)
        || output
            .iter()
            .any(|c| !operands.iter().flatten().any(|d| d == c))
    {
        return Err(Error::node(
            node,
            format!("Einsum '{equation}' has an output letter no input has"),
        ));
    }
    Ok(Attrs::Einsum(EinsumSpec { operands, output }))
}

//! The op table: every ONNX op the compiler looks into is registered once, as one [`OpDef`]
//! holding all the compiler knows about it: how many operands it needs, its attributes decoded,
//! its output types, whether it is linear in its relevance-carrying inputs, its
//! vector-Jacobian rule and, for integer shape arithmetic, its compile-time value. The graph
//! parses each node once into an [`Op`]; passes ask the table, never the op-type string.
//!
//! Adding an op is one entry in the table of its family (and the functions it names): shape
//! inference, linearity and the VJP cannot drift apart, and `tests/vjp_rules.rs` walks the
//! table to check every VJP against finite differences.
mod attrs;
mod elementwise;
mod layout;
mod linear;
mod reduce;
mod scan;
mod source;
pub(crate) mod support;

use std::collections::HashMap;
use std::sync::OnceLock;

pub use attrs::{Attrs, ConvAttrs, EinsumSpec, GemmAttrs, ReduceAttrs, SplitAttrs};
pub use support::{broadcast, normalize_axis, slice_spec, split_sizes};

use crate::autodiff::Contribution;
use crate::error::{Error, Result};
use crate::ir::{Graph, ValueType};
use crate::onnx::proto::NodeProto;
use crate::onnx::Tensor;

/// Output types of a node from its inputs' (`None` for an output it cannot type).
pub type InferFn = fn(&Graph, &NodeProto, &Attrs) -> Result<Vec<Option<ValueType>>>;
/// Emits the cotangents of a node's relevance-carrying inputs.
pub type VjpFn = fn(&mut Graph, &mut Step) -> Result<Vjp>;
/// The value of the node's first output when it can be computed at compile time.
pub type FoldFn = fn(&Graph, &NodeProto, &Attrs) -> Result<Option<Tensor>>;
/// Decodes a node's attributes (and checks them).
pub type ParseFn = fn(&NodeProto, i64) -> Result<Attrs>;

/// How an op's output depends on its relevance-carrying inputs: what the proof of
/// conservation (`autodiff::linearity`) needs, declared next to the VJP as JAX does.
#[derive(Debug, Clone, Copy)]
pub enum Linearity {
    /// Linear in all its float inputs together (sums, layout, selection).
    Linear,
    /// A product: linear in each operand alone, not in both at once (unless a rule halves it).
    Bilinear,
    /// Linear only in the listed input slots; `why` says what relevance anywhere else means.
    LinearIn {
        slots: &'static [usize],
        why: &'static str,
    },
    /// Linearity depends on the node itself (a selective scan is linear in h0 and dBu).
    Decided(fn(&Graph, &NodeProto, &[usize]) -> std::result::Result<(), String>),
    NonLinear,
}

/// Operand and result counts an op must have: checked once, when the graph is built, so passes
/// can index required operands without panicking on a malformed file.
#[derive(Debug, Clone, Copy)]
pub struct Arity {
    pub inputs: usize,
    pub outputs: usize,
    /// Before this opset the op took its trailing operands as attributes and needed only
    /// `.1` inputs (Slice before 10, Pad before 11, Unsqueeze before 13).
    pub older: Option<(i64, usize)>,
}

impl Arity {
    pub const fn new(inputs: usize, outputs: usize) -> Arity {
        Arity {
            inputs,
            outputs,
            older: None,
        }
    }

    pub const fn until(self, opset: i64, inputs: usize) -> Arity {
        Arity {
            older: Some((opset, inputs)),
            ..self
        }
    }

    fn required_inputs(&self, opset: i64) -> usize {
        match self.older {
            Some((since, fewer)) if opset < since => fewer,
            _ => self.inputs,
        }
    }
}

/// Everything the compiler knows about one op type.
#[derive(Debug)]
pub struct OpDef {
    pub op_type: &'static str,
    pub arity: Arity,
    pub parse: ParseFn,
    pub infer: InferFn,
    pub linearity: Linearity,
    pub vjp: Option<VjpFn>,
    pub fold: Option<FoldFn>,
    /// Cheap per element, so the backward pass may recompute its output instead of keeping it.
    pub recomputable: bool,
}

impl OpDef {
    /// An op the compiler only types: no VJP, non-linear, no folding, no attributes.
    pub const fn new(op_type: &'static str, arity: Arity, infer: InferFn) -> OpDef {
        OpDef {
            op_type,
            arity,
            parse: attrs::none,
            infer,
            linearity: Linearity::NonLinear,
            vjp: None,
            fold: None,
            recomputable: false,
        }
    }

    pub const fn with_parse(self, parse: ParseFn) -> OpDef {
        OpDef { parse, ..self }
    }

    pub const fn with_vjp(self, linearity: Linearity, vjp: VjpFn) -> OpDef {
        OpDef {
            linearity,
            vjp: Some(vjp),
            ..self
        }
    }

    pub const fn with_fold(self, fold: FoldFn) -> OpDef {
        OpDef {
            fold: Some(fold),
            ..self
        }
    }

    pub const fn recomputable(self) -> OpDef {
        OpDef {
            recomputable: true,
            ..self
        }
    }
}

/// A node's op, parsed once when the graph indexes the node.
#[derive(Debug, Clone)]
pub enum Op {
    Known {
        def: &'static OpDef,
        attrs: Attrs,
    },
    /// Not in the table (or not in the default domain): passes leave it alone, and needing
    /// its type or its derivative is an error naming it.
    Other,
}

impl Op {
    /// Parses `node` (imported at `opset`), checking its arity and attributes.
    pub fn parse(node: &NodeProto, opset: i64) -> Result<Op> {
        let default_domain = matches!(node.domain(), "" | "ai.onnx");
        let Some(def) = lookup(node.op_type()).filter(|_| default_domain) else {
            return Ok(Op::Other);
        };
        check_arity(node, def.arity.required_inputs(opset), def.arity.outputs)?;
        let attrs = (def.parse)(node, opset)?;
        Ok(Op::Known { def, attrs })
    }

    pub fn def(&self) -> Option<&'static OpDef> {
        match self {
            Op::Known { def, .. } => Some(def),
            Op::Other => None,
        }
    }

    pub fn attrs(&self) -> &Attrs {
        match self {
            Op::Known { attrs, .. } => attrs,
            Op::Other => &Attrs::None,
        }
    }

    /// Output types of `node`, which this op was parsed from.
    pub fn infer(&self, graph: &Graph, node: &NodeProto) -> Result<Vec<Option<ValueType>>> {
        match self {
            Op::Known { def, attrs } => (def.infer)(graph, node, attrs),
            Op::Other => Err(Error::node(node, "no shape inference for this op")),
        }
    }

    pub fn fold(&self, graph: &Graph, node: &NodeProto) -> Result<Option<Tensor>> {
        match self {
            Op::Known {
                def: OpDef {
                    fold: Some(fold), ..
                },
                attrs,
            } => fold(graph, node, attrs),
            _ => Ok(None),
        }
    }
}

fn check_arity(node: &NodeProto, inputs: usize, outputs: usize) -> Result<()> {
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

/// Every registered op, family by family.
pub fn table() -> impl Iterator<Item = &'static OpDef> {
    [
        elementwise::OPS,
        linear::OPS,
        layout::OPS,
        reduce::OPS,
        source::OPS,
        scan::OPS,
    ]
    .into_iter()
    .flatten()
}

/// The registration of `op_type` in the default domain.
pub fn lookup(op_type: &str) -> Option<&'static OpDef> {
    static INDEX: OnceLock<HashMap<&'static str, &'static OpDef>> = OnceLock::new();
    INDEX
        .get_or_init(|| table().map(|def| (def.op_type, def)).collect())
        .get(op_type)
        .copied()
}

/// One node of the backward pass: what its VJP rule reads.
pub struct Step<'a> {
    pub node: &'a NodeProto,
    pub attrs: &'a Attrs,
    /// Per input slot: does relevance flow back into it?
    pub carries: &'a [bool],
    /// Per output: its cotangent, if anything reached it.
    pub out_grads: &'a [Option<String>],
    /// The axes along which `out_grads[0]` has size 1 and stands for its broadcast to the
    /// output's shape (see `Gradients::cotangent_unexpanded`); empty when it is full-size. Only
    /// plain products (`Mul`) are handed such a cotangent, and only their rule reads it.
    pub out_spread: Vec<usize>,
    /// The gate half rule applies to this product.
    pub half: bool,
    /// This is a SiLU product under the stabilized identity rule.
    pub stabilized_silu: bool,
    /// This Conv is an image's patch embedding under the LRP-gamma rule with this gamma.
    pub gamma: Option<f32>,
    pub batch: usize,
    /// Large forward values already rebuilt for the backward pass (see `autodiff::remat`).
    pub recomputed: &'a mut crate::autodiff::remat::Remat,
}

impl Step<'_> {
    /// The cotangent of a single-output op. An op with more outputs must handle them itself:
    /// a cotangent reaching any other output is an error, never silently dropped.
    pub fn grad(&self) -> Result<String> {
        if !self.out_spread.is_empty() {
            return Err(Error::node(
                self.node,
                "internal: an unexpanded cotangent reached a rule that needs a full-size one",
            ));
        }
        self.spread_grad().map(|(g, _)| g)
    }

    /// The cotangent of a single-output op as it was handed over: possibly unexpanded, with the
    /// axes along which it is to be broadcast to the output (`out_spread`).
    pub fn spread_grad(&self) -> Result<(String, Vec<usize>)> {
        if self.out_grads.iter().skip(1).any(Option::is_some) {
            return Err(Error::node(
                self.node,
                "a gradient reaches an output other than the first; this op's rule handles only the first",
            ));
        }
        self.out_grads
            .first()
            .cloned()
            .flatten()
            .map(|g| (g, self.out_spread.clone()))
            .ok_or_else(|| Error::node(self.node, "differentiated with no cotangent"))
    }

    pub fn input_shape(&self, graph: &Graph, slot: usize) -> Result<Vec<usize>> {
        Ok(graph.shape(&self.node.input[slot])?.to_vec())
    }

    pub fn output_shape(&self, graph: &Graph) -> Result<Vec<usize>> {
        Ok(graph.shape(&self.node.output[0])?.to_vec())
    }

    /// The error for a case this op's rule does not cover.
    pub fn unsupported(&self, detail: &str) -> Error {
        Error::NoVjp {
            node: self.node.name().to_string(),
            op: self.node.op_type().to_string(),
            detail: detail.to_string(),
        }
    }
}

/// What a VJP rule emitted: contributions to input cotangents, and the per-sample relevance
/// that constant additive terms absorb.
#[derive(Default)]
pub struct Vjp {
    pub contributions: Vec<(usize, Contribution)>,
    pub bias: Option<String>,
}

impl Vjp {
    pub fn full(&mut self, slot: usize, value: String) {
        self.contributions.push((slot, Contribution::Full(value)));
    }

    /// A contribution that broadcasts to the input's shape along `axes`, the input's axes on
    /// which `value` has size 1 (see [`Contribution::Spread`]).
    pub fn spread(&mut self, slot: usize, value: String, axes: Vec<usize>) {
        self.contributions
            .push((slot, Contribution::Spread { value, axes }));
    }
}

use std::collections::{HashMap, HashSet};

use super::scan::SelectiveScan;
use super::symbols::ExportedAxis;
use super::DType;
use crate::error::{Error, Result};
use crate::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::onnx::tensor::{tensor_from_proto, validate_tensor};
use crate::onnx::{attributes, Tensor};
use crate::ops::Op;

/// Constants above this many elements are never decoded: the compiler only needs small ones
/// (axes, indices, exponents, eps) and must not copy the weights.
const MAX_DECODED_ELEMENTS: usize = 4096;

/// Element type and static shape of a value.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueType {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl ValueType {
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Name of the symbolic sequence axis in models compiled with `--dynamic-seq`.
pub const SEQUENCE_AXIS: &str = "sequence";
/// Name of the symbolic batch axis in models compiled with `--dynamic-batch`.
pub const BATCH_AXIS: &str = "batch";
/// Metadata keys recording the sizes such models were traced at.
pub use crate::onnx::metadata::{BATCH_SIZE_KEY, SEQUENCE_LENGTH_KEY};

/// A model's main graph with its indexes. Passes edit it through the methods in `edit.rs`,
/// which keep the indexes and types valid. `Default` is an empty graph.
#[derive(Default)]
pub struct Graph {
    pub(super) proto: GraphProto,
    /// Values of named dims (only the traced sequence length, for `--dynamic-seq` models).
    pub symbolic_dims: HashMap<String, usize>,
    /// Version of the default-domain opset the model imports.
    pub opset: i64,
    pub(super) types: HashMap<String, ValueType>,
    pub(super) constants: HashMap<String, Tensor>,
    pub(super) initializer_names: HashSet<String>,
    /// Values computed by known ops from constants only (see `note_constant_expression`).
    pub(super) constant_expressions: HashSet<String>,
    /// Each node's op, parsed once when the node is indexed (parallel to `proto.node`).
    pub(super) ops: Vec<Op>,
    pub(super) producers: HashMap<String, (usize, usize)>,
    pub(super) consumers: HashMap<String, Vec<(usize, usize)>>,
    pub(super) used_names: HashSet<String>,
    pub(super) constant_cache: HashMap<String, String>,
    /// Element types of values the compiler created (their shapes are not tracked).
    pub(super) created_dtypes: HashMap<String, DType>,
    next_id: usize,
    /// Every node, value and initializer name the compiler minted (the rest came with the
    /// model): dead-code sweeps remove only these.
    pub(super) minted: HashSet<String>,
    /// The selective-scan `Scan`s the compiler emitted, by their first output.
    pub(super) selective_scans: HashMap<String, SelectiveScan>,
    /// The export's symbolic input dims and the sizes analysis gave them.
    pub(super) exported_axes: Vec<ExportedAxis>,
    /// Sum short last axes of large tensors by MatMul (`op_sum_last_axis`): set for the
    /// parallel (GPU) form; on the CPU ONNX Runtime's ReduceSum is the faster one.
    pub sums_by_matmul: bool,
}

impl Graph {
    /// Builds the view of `model`'s main graph and infers static types for every value.
    pub fn from_model(model: &ModelProto) -> Result<Graph> {
        let mut shell = ModelProto {
            metadata_props: model.metadata_props.clone(),
            graph: model.graph.clone(),
            opset_import: model.opset_import.clone(),
            ..Default::default()
        };
        Graph::take_from(&mut shell)
    }

    /// Like [`Graph::from_model`], but moves the graph out of `model` instead of copying the
    /// weights; [`Graph::into_model`] puts it back.
    pub fn take_from(model: &mut ModelProto) -> Result<Graph> {
        let proto = model
            .graph
            .take()
            .ok_or_else(|| Error::InvalidModel("model holds no graph".into()))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map(|o| o.version())
            .ok_or_else(|| {
                Error::Unsupported("model imports no default-domain (ai.onnx) opset".into())
            })?;
        // A model compiled with a symbolic sequence axis records the length it was traced at;
        // analysis runs at that length.
        let symbolic_dims = model
            .metadata_props
            .iter()
            .filter_map(|p| match p.key() {
                SEQUENCE_LENGTH_KEY => Some((SEQUENCE_AXIS.to_string(), p.value().parse().ok()?)),
                BATCH_SIZE_KEY => Some((BATCH_AXIS.to_string(), p.value().parse().ok()?)),
                _ => None,
            })
            .collect();
        Graph::analyse(proto, opset, symbolic_dims)
    }

    /// Indexes `proto` and infers its static types.
    fn analyse(
        proto: GraphProto,
        opset: i64,
        symbolic_dims: HashMap<String, usize>,
    ) -> Result<Graph> {
        let mut graph = Graph {
            proto,
            opset,
            symbolic_dims,
            ..Default::default()
        };
        graph.index()?;
        graph.exported_axes = super::symbols::infer_with_traced_sizes(&mut graph)?;
        Ok(graph)
    }

    /// Re-derives every index, static type and known constant from the nodes, as loading the
    /// graph anew would (after a rewrite that added nodes of unknown shapes); what the compiler
    /// minted and the selective scans it recorded are kept.
    pub fn reanalyse(&mut self) -> Result<()> {
        let proto = std::mem::take(&mut self.proto);
        let symbolic_dims = std::mem::take(&mut self.symbolic_dims);
        let mut fresh = Graph::analyse(proto, self.opset, symbolic_dims)?;
        fresh.minted = std::mem::take(&mut self.minted);
        fresh.selective_scans = std::mem::take(&mut self.selective_scans);
        fresh.exported_axes = std::mem::take(&mut self.exported_axes);
        fresh.sums_by_matmul = self.sums_by_matmul;
        *self = fresh;
        Ok(())
    }

    /// Writes the graph back into `model`, replacing its main graph.
    pub fn into_model(self, model: &mut ModelProto) {
        model.graph = Some(self.proto);
    }

    pub(super) fn index(&mut self) -> Result<()> {
        for init in &self.proto.initializer {
            validate_tensor(init)?;
            let name = init.name().to_string();
            self.used_names.insert(name.clone());
            self.initializer_names.insert(name.clone());
            let count: i64 = init.dims.iter().product();
            if init.data_location != Some(1) && (0..=MAX_DECODED_ELEMENTS as i64).contains(&count) {
                if let Some(t) = tensor_from_proto(init)? {
                    self.constants.insert(name.clone(), t);
                }
            }
            if init.dims.iter().all(|&d| d >= 0) {
                let shape = init.dims.iter().map(|&d| d as usize).collect();
                self.types.insert(
                    name,
                    ValueType {
                        dtype: DType::from_onnx(init.data_type()),
                        shape,
                    },
                );
            }
        }
        for vi in self
            .proto
            .input
            .iter()
            .chain(&self.proto.output)
            .chain(&self.proto.value_info)
        {
            self.used_names.insert(vi.name().to_string());
        }
        for index in 0..self.proto.node.len() {
            self.index_node(index)?;
        }
        Ok(())
    }

    /// Rebuilds the producer and consumer indexes after nodes were removed.
    pub fn reindex(&mut self) {
        // The parsed ops stay when they still line up with the nodes (removal and reordering
        // keep them in step); otherwise every node is parsed again.
        if self.ops.len() != self.proto.node.len() {
            self.ops = self
                .proto
                .node
                .iter()
                .map(|node| Op::parse(node, self.opset))
                .collect::<Result<_>>()
                .expect("the graph was valid before the edit");
        }
        self.producers.clear();
        self.consumers.clear();
        for index in 0..self.proto.node.len() {
            self.index_edges(index)
                .expect("the graph was valid before the edit");
        }
    }

    /// Parses node `index` (the last one, or one being re-indexed in order) and indexes it.
    pub(super) fn index_node(&mut self, index: usize) -> Result<()> {
        let op = Op::parse(&self.proto.node[index], self.opset)?;
        self.ops.truncate(index);
        self.ops.push(op);
        self.index_edges(index)
    }

    /// Records node `index` as the producer of its outputs and a consumer of its inputs.
    fn index_edges(&mut self, index: usize) -> Result<()> {
        let node = &self.proto.node[index];
        self.used_names.insert(node.name().to_string());
        for (slot, output) in node.output.iter().enumerate() {
            if output.is_empty() {
                continue;
            }
            if self
                .producers
                .insert(output.clone(), (index, slot))
                .is_some()
            {
                return Err(Error::node(
                    node,
                    format!("value '{output}' is produced twice"),
                ));
            }
            self.used_names.insert(output.clone());
        }
        for (slot, input) in node.input.iter().enumerate() {
            if !input.is_empty() {
                self.consumers
                    .entry(input.clone())
                    .or_default()
                    .push((index, slot));
            }
        }
        Ok(())
    }

    /// Reorders the nodes (and their parsed ops) to `order`, a permutation of the indexes.
    pub(super) fn permute_nodes(&mut self, order: &[usize]) {
        let mut nodes: Vec<Option<NodeProto>> = std::mem::take(&mut self.proto.node)
            .into_iter()
            .map(Some)
            .collect();
        let mut ops: Vec<Option<Op>> = std::mem::take(&mut self.ops)
            .into_iter()
            .map(Some)
            .collect();
        self.proto.node = order.iter().filter_map(|&i| nodes[i].take()).collect();
        self.ops = order
            .iter()
            .filter_map(|&i| ops.get_mut(i)?.take())
            .collect();
        self.reindex();
    }

    pub fn nodes(&self) -> &[NodeProto] {
        &self.proto.node
    }

    pub fn node(&self, index: usize) -> &NodeProto {
        &self.proto.node[index]
    }

    /// The symbolic (dynamic) input axes the export declared, with the traced sizes the
    /// analysis uses; the declarations now carry those sizes.
    pub fn exported_axes(&self) -> &[ExportedAxis] {
        &self.exported_axes
    }

    /// The parsed op of node `index`.
    pub fn op(&self, index: usize) -> &Op {
        &self.ops[index]
    }

    pub fn producer(&self, value: &str) -> Option<(usize, &NodeProto)> {
        self.producers
            .get(value)
            .map(|&(i, _)| (i, &self.proto.node[i]))
    }

    pub fn consumers(&self, value: &str) -> &[(usize, usize)] {
        self.consumers.get(value).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_initializer(&self, value: &str) -> bool {
        self.initializer_names.contains(value)
    }

    /// True when the value is fixed at compile time (initializer, Constant, folded arithmetic,
    /// or a known op of constants).
    pub fn is_constant(&self, value: &str) -> bool {
        self.is_initializer(value)
            || self.constants.contains_key(value)
            || self.constant_expressions.contains(value)
            || self
                .producer(value)
                .is_some_and(|(_, n)| n.op_type() == "Constant")
    }

    /// The value of a small constant, if known.
    pub fn constant(&self, value: &str) -> Option<&Tensor> {
        self.constants.get(value)
    }

    pub fn value_type(&self, value: &str) -> Result<&ValueType> {
        self.types.get(value).ok_or_else(|| {
            let from = match self.producer(value) {
                Some((_, n)) => format!(" (output of node '{}', {})", n.name(), n.op_type()),
                None => String::new(),
            };
            Error::tensor(
                value,
                format!("its shape is unknown{from}; only static shapes are supported"),
            )
        })
    }

    pub fn shape(&self, value: &str) -> Result<&[usize]> {
        Ok(&self.value_type(value)?.shape)
    }

    pub fn graph_input_names(&self) -> Vec<String> {
        self.proto
            .input
            .iter()
            .map(|v| v.name().to_string())
            .filter(|n| !self.is_initializer(n))
            .collect()
    }

    /// A name not used anywhere in the graph, starting with `mambalrp/` (for readers of the
    /// file; the compiler itself remembers what it minted, see [`Graph::is_minted`]).
    pub fn fresh_name(&mut self, hint: &str) -> String {
        loop {
            let name = format!("mambalrp/{hint}_{}", self.next_id);
            self.next_id += 1;
            if self.used_names.insert(name.clone()) {
                self.minted.insert(name.clone());
                return name;
            }
        }
    }

    /// Appends a node and returns the names of its outputs.
    pub fn add_node_multi(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        self.add_node_named(op, op, inputs, outputs, attrs)
    }

    /// Appends a node named `mambalrp/{hint}_N` and returns the names of its outputs.
    pub fn add_node_named(
        &mut self,
        hint: &str,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let name = self.fresh_name(hint);
        let outputs: Vec<String> = (0..outputs)
            .map(|_| self.fresh_name(&format!("{op}_out")))
            .collect();
        let node = NodeProto {
            name: Some(name),
            op_type: Some(op.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            attribute: attrs,
            ..Default::default()
        };
        if let Some(dtype) = self.created_dtype(&node) {
            for output in &outputs {
                self.created_dtypes.insert(output.clone(), dtype);
            }
        }
        self.proto.node.push(node);
        let index = self.proto.node.len() - 1;
        self.index_node(index)
            .expect("nodes the compiler builds are well-formed and freshly named");
        self.type_new_node(index);
        outputs
    }

    /// Records the types (and any compile-time value) of a node just added, as loading would
    /// have: later passes may read its shape without a reload.
    fn type_new_node(&mut self, index: usize) {
        let node = &self.proto.node[index];
        if let Ok(types) = self.ops[index].infer(self, node) {
            let typed: Vec<(String, ValueType)> = node
                .output
                .iter()
                .zip(types)
                .filter_map(|(name, t)| Some((name.clone(), t?)))
                .collect();
            self.types.extend(typed);
        }
        let node = &self.proto.node[index];
        if let Ok(Some(value)) = self.ops[index].fold(self, node) {
            let output = node.output[0].clone();
            self.constants.insert(output, value);
        }
        self.note_constant_expression(index);
    }

    /// Types the readers of `value` (and theirs, transitively) that had no type yet: after a
    /// rewrite replaced an untyped value (the output of an op the compiler does not know) by a
    /// typed one, the values computed from it can be typed too.
    pub fn propagate_types(&mut self, value: &str) {
        let mut pending: Vec<usize> = self.consumers(value).iter().map(|&(i, _)| i).collect();
        while let Some(index) = pending.pop() {
            let node = &self.proto.node[index];
            if node
                .output
                .iter()
                .all(|o| o.is_empty() || self.types.contains_key(o))
            {
                continue;
            }
            let Ok(types) = self.ops[index].infer(self, node) else {
                continue;
            };
            let typed: Vec<(String, ValueType)> = node
                .output
                .iter()
                .zip(types)
                .filter_map(|(name, t)| Some((name.clone(), t?)))
                .filter(|(name, _)| !self.types.contains_key(name))
                .collect();
            for (name, t) in typed {
                pending.extend(self.consumers(&name).iter().map(|&(i, _)| i));
                self.types.insert(name, t);
            }
            let node = &self.proto.node[index];
            if let Ok(Some(folded)) = self.ops[index].fold(self, node) {
                let output = node.output[0].clone();
                self.constants.insert(output, folded);
            }
            self.note_constant_expression(index);
        }
    }

    /// Records node `index`'s outputs as constant when the op is a known (deterministic) one
    /// and all its operands are constant: a transposed or reshaped weight is still a weight.
    pub(super) fn note_constant_expression(&mut self, index: usize) {
        let node = &self.proto.node[index];
        let operands: Vec<&String> = node.input.iter().filter(|i| !i.is_empty()).collect();
        if self.ops[index].def().is_none()
            || operands.is_empty()
            || !operands.iter().all(|i| self.is_constant(i))
        {
            return;
        }
        let outputs: Vec<String> = node
            .output
            .iter()
            .filter(|o| !o.is_empty())
            .cloned()
            .collect();
        self.constant_expressions.extend(outputs);
    }

    /// Element type of a node the compiler creates, from its op and inputs.
    fn created_dtype(&self, node: &NodeProto) -> Option<DType> {
        match node.op_type() {
            "Cast" => attributes::int(node, "to").map(|t| DType::from_onnx(t as i32)),
            "Shape" | "ArgMax" | "ArgMin" => Some(DType::Int64),
            "Equal" | "Greater" | "Less" | "GreaterOrEqual" | "LessOrEqual" => Some(DType::Bool),
            "Where" => node.input.get(1).map(|v| self.dtype_of(v)),
            _ => node.input.first().map(|v| self.dtype_of(v)),
        }
    }

    /// Element type of any value: recorded, created by the compiler, or float32 by default.
    pub fn dtype_of(&self, value: &str) -> DType {
        self.types
            .get(value)
            .map(|t| t.dtype)
            .or_else(|| self.created_dtypes.get(value).copied())
            .unwrap_or(DType::Float)
    }

    /// A scalar constant of element type `dtype` (float32, float64, float16 or bfloat16).
    pub fn scalar_float(&mut self, value: f64, dtype: DType) -> String {
        let (raw, dtype): (Vec<u8>, DType) = match dtype {
            DType::Float16 => (half::f16::from_f64(value).to_le_bytes().to_vec(), dtype),
            DType::BFloat16 => (half::bf16::from_f64(value).to_le_bytes().to_vec(), dtype),
            DType::Double => (value.to_le_bytes().to_vec(), dtype),
            _ => ((value as f32).to_le_bytes().to_vec(), DType::Float),
        };
        let key = format!("scalar {} {raw:?}", dtype.onnx());
        if let Some(name) = self.constant_cache.get(&key) {
            return name.clone();
        }
        let name = self.fresh_name("const");
        self.add_initializer(TensorProto {
            name: Some(name.clone()),
            data_type: Some(dtype.onnx()),
            raw_data: Some(raw.into()),
            ..Default::default()
        });
        self.created_dtypes.insert(name.clone(), dtype);
        self.constant_cache.insert(key, name.clone());
        name
    }

    /// A scalar of the same element type as `like`.
    pub fn scalar_like(&mut self, value: f64, like: &str) -> String {
        let dtype = self.dtype_of(like);
        self.scalar_float(value, dtype)
    }

    pub fn add_node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.add_node_multi(op, inputs, 1, attrs).remove(0)
    }

    /// Adds (or reuses) an initializer holding `tensor`.
    pub fn add_constant(&mut self, tensor: Tensor) -> String {
        let key = format!("{:?}", tensor);
        if let Some(name) = self.constant_cache.get(&key) {
            return name.clone();
        }
        let name = self.fresh_name("const");
        self.add_initializer(tensor.to_proto(&name));
        self.constants.insert(name.clone(), tensor);
        self.constant_cache.insert(key, name.clone());
        name
    }

    pub fn add_initializer(&mut self, proto: TensorProto) {
        let name = proto.name().to_string();
        self.used_names.insert(name.clone());
        self.initializer_names.insert(name);
        self.proto.initializer.push(proto);
    }

    pub fn const_i64(&mut self, values: &[i64]) -> String {
        self.add_constant(Tensor::I64(
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[values.len()]), values.to_vec())
                .expect("1-D"),
        ))
    }

    pub fn scalar_i64(&mut self, value: i64) -> String {
        self.add_constant(Tensor::I64(ndarray::arr0(value).into_dyn()))
    }
}

//! Edits of the main graph that keep the producer and consumer indexes and the value types
//! valid. Passes outside `ir` change the graph only through these (and the `add_*` builders).
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use prost::Message;

use super::scan::{ScanKind, SelectiveScan};
use super::{DType, Graph, ValueType};
use crate::error::Result;
use crate::onnx::proto::{AttributeProto, NodeProto, ValueInfoProto};
use crate::onnx::value_info;

/// A node, named by its first output value: unlike its index, this survives the removal and
/// reordering of other nodes.
pub fn node_key(node: &NodeProto) -> &str {
    node.output.first().map_or("", String::as_str)
}

/// An input edge of a node: input `slot` of the node whose first output is `consumer`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Edge {
    pub consumer: String,
    pub slot: usize,
}

impl Edge {
    pub fn new(consumer: &str, slot: usize) -> Edge {
        Edge {
            consumer: consumer.to_string(),
            slot,
        }
    }

    /// Input `slot` of `node`.
    pub fn of(node: &NodeProto, slot: usize) -> Edge {
        Edge::new(node_key(node), slot)
    }
}

impl Graph {
    /// The key of node `index` (its first output).
    pub fn node_key(&self, index: usize) -> &str {
        node_key(self.node(index))
    }

    /// Input `slot` of node `index`, as an edge that survives node removal.
    pub fn edge(&self, index: usize, slot: usize) -> Edge {
        Edge::new(self.node_key(index), slot)
    }

    /// True for a node, value or initializer name the compiler created.
    pub fn is_minted(&self, name: &str) -> bool {
        self.minted.contains(name)
    }

    /// True for a node the compiler created.
    pub fn is_minted_node(&self, node: &NodeProto) -> bool {
        self.is_minted(node.name())
    }

    /// Appends a selective-scan `Scan` node (named `mambalrp/{hint}_N`) and records what it is.
    pub fn add_selective_scan(
        &mut self,
        hint: &str,
        scan: SelectiveScan,
        inputs: &[&str],
        outputs: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let produced = self.add_node_named(hint, "Scan", inputs, outputs, attrs);
        self.selective_scans.insert(produced[0].clone(), scan);
        produced
    }

    /// What the compiler recorded about `node`, if it is one of its selective scans.
    pub fn selective_scan(&self, node: &NodeProto) -> Option<&SelectiveScan> {
        if node.op_type() != "Scan" {
            return None;
        }
        self.selective_scans.get(node_key(node))
    }

    /// The kind of a forward selective scan the compiler emitted; `None` for any other node.
    pub fn forward_scan_kind(&self, node: &NodeProto) -> Option<ScanKind> {
        self.selective_scan(node)
            .filter(|s| s.direction == super::scan::ScanDirection::Forward)
            .map(|s| s.kind)
    }

    /// Makes every node read `new` where it read `old`.
    pub fn replace_uses(&mut self, old: &str, new: &str) {
        self.replace_uses_before(old, new, self.proto.node.len());
    }

    /// Like [`Graph::replace_uses`], but only in nodes before index `end` (those that existed
    /// before a rewrite appended the nodes computing `new` from `old`).
    pub fn replace_uses_before(&mut self, old: &str, new: &str, end: usize) {
        let uses: Vec<(usize, usize)> = self
            .consumers(old)
            .iter()
            .copied()
            .filter(|&(index, _)| index < end)
            .collect();
        for (index, slot) in uses {
            self.set_node_input(index, slot, new);
        }
    }

    /// Makes everything that reads `old` read `new` instead, graph outputs included: when `old`
    /// is a graph output, `new`'s producer takes over its name (the output keeps its name) and
    /// the old producer's output is renamed to an unused name. Readers left untyped (they read
    /// an op the compiler could not type) get their types from `new`.
    pub fn substitute(&mut self, old: &str, new: &str) {
        let now_read = if self.output_names().any(|o| o == old) {
            let retired = self.fresh_name("replaced");
            self.rename_output(old, &retired);
            self.replace_uses(new, old);
            self.rename_output(new, old);
            old.to_string()
        } else {
            self.replace_uses(old, new);
            new.to_string()
        };
        self.propagate_types(&now_read);
    }

    /// Makes input `slot` of node `index` read `value`.
    pub fn set_node_input(&mut self, index: usize, slot: usize, value: &str) {
        let old = std::mem::replace(&mut self.proto.node[index].input[slot], value.to_string());
        if let Some(uses) = self.consumers.get_mut(&old) {
            uses.retain(|&edge| edge != (index, slot));
            if uses.is_empty() {
                self.consumers.remove(&old);
            }
        }
        if !value.is_empty() {
            self.consumers
                .entry(value.to_string())
                .or_default()
                .push((index, slot));
        }
    }

    /// Renames the value `old` where it is produced (its readers keep reading `old`); its type
    /// moves with it. `new` must not be produced by another node.
    pub fn rename_output(&mut self, old: &str, new: &str) {
        let (index, slot) = *self
            .producers
            .get(old)
            .unwrap_or_else(|| panic!("no node produces '{old}'"));
        assert!(
            !self.producers.contains_key(new),
            "'{new}' is already produced"
        );
        self.proto.node[index].output[slot] = new.to_string();
        self.producers.remove(old);
        self.producers.insert(new.to_string(), (index, slot));
        self.used_names.insert(new.to_string());
        if let Some(t) = self.types.remove(old) {
            self.types.insert(new.to_string(), t);
        }
        if let Some(dtype) = self.created_dtypes.remove(old) {
            self.created_dtypes.insert(new.to_string(), dtype);
        }
        if let Some(scan) = self.selective_scans.remove(old) {
            self.selective_scans.insert(new.to_string(), scan);
        }
    }

    /// Merges the `Shape` nodes that read one value (with the same attributes) into the first
    /// in topological order, and re-sorts. The backward pass asks for the runtime shapes of
    /// forward values; merged, it reads the copy the forward pass took while the value was
    /// live, instead of keeping a [B, D, S, N] tensor per layer alive for a late read (see
    /// [`Graph::op_shape_of`]). Returns how many nodes went.
    pub fn merge_duplicate_shapes(&mut self) -> Result<usize> {
        let outputs: HashSet<String> = self.output_names().map(str::to_string).collect();
        let mut first: HashMap<(String, Vec<Vec<u8>>), String> = HashMap::new();
        let mut merged: HashMap<String, String> = HashMap::new();
        for index in super::topo::order(self)? {
            let node = &self.proto.node[index];
            if node.op_type() != "Shape"
                || node.input.len() != 1
                || node.output.len() != 1
                || outputs.contains(&node.output[0])
            {
                continue;
            }
            let mut attrs: Vec<Vec<u8>> =
                node.attribute.iter().map(|a| a.encode_to_vec()).collect();
            attrs.sort();
            match first.entry((node.input[0].clone(), attrs)) {
                Entry::Occupied(kept) => {
                    merged.insert(node.output[0].clone(), kept.get().clone());
                }
                Entry::Vacant(slot) => {
                    slot.insert(node.output[0].clone());
                }
            }
        }
        for (duplicate, kept) in &merged {
            self.replace_uses(duplicate, kept);
        }
        self.retain_nodes(|node| !node.output.iter().any(|o| merged.contains_key(o)));
        super::topo::sort_nodes(self)?;
        Ok(merged.len())
    }

    /// Keeps the nodes for which `keep` is true (in order) and reindexes; the outputs of the
    /// removed nodes lose their types.
    pub fn retain_nodes(&mut self, mut keep: impl FnMut(&NodeProto) -> bool) {
        let mut removed = Vec::new();
        let kept: Vec<bool> = self.proto.node.iter().map(&mut keep).collect();
        let mut index = 0;
        self.proto.node.retain(|node| {
            index += 1;
            if !kept[index - 1] {
                removed.extend(node.output.iter().cloned());
            }
            kept[index - 1]
        });
        if self.ops.len() == kept.len() {
            let mut index = 0;
            self.ops.retain(|_| {
                index += 1;
                kept[index - 1]
            });
        }
        for value in removed {
            self.types.remove(&value);
            self.created_dtypes.remove(&value);
        }
        self.reindex();
    }

    /// Keeps the initializers whose name `keep` accepts.
    pub fn retain_initializers(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let mut removed = HashSet::new();
        self.proto.initializer.retain(|t| {
            let kept = keep(t.name());
            if !kept {
                removed.insert(t.name().to_string());
            }
            kept
        });
        for name in &removed {
            self.initializer_names.remove(name);
            self.constants.remove(name);
            self.types.remove(name);
            self.created_dtypes.remove(name);
        }
        // A removed constant must not be handed out again.
        self.constant_cache
            .retain(|_, name| !removed.contains(name.as_str()));
    }

    /// Removes the initializers the compiler created that no node reads.
    pub fn remove_unused_minted_initializers(&mut self) {
        let read: HashSet<String> = self
            .proto
            .node
            .iter()
            .flat_map(|n| n.input.iter().cloned())
            .collect();
        let minted = std::mem::take(&mut self.minted);
        self.retain_initializers(|name| !minted.contains(name) || read.contains(name));
        self.minted = minted;
    }

    /// Initializer names, in file order.
    pub fn initializer_names(&self) -> impl Iterator<Item = &str> {
        self.proto.initializer.iter().map(|t| t.name())
    }

    /// Exposes `value` as graph output `name` (of element type `dtype` and static `shape`)
    /// through an Identity node, so the output name is ours whatever node computes it.
    pub fn add_output(&mut self, value: &str, name: &str, dtype: DType, shape: &[usize]) {
        let node_name = format!("mambalrp/output/{name}");
        self.used_names.insert(node_name.clone());
        self.minted.insert(node_name.clone());
        self.minted.insert(name.to_string());
        self.proto.node.push(NodeProto {
            name: Some(node_name),
            op_type: Some("Identity".into()),
            input: vec![value.to_string()],
            output: vec![name.to_string()],
            ..Default::default()
        });
        self.index_node(self.proto.node.len() - 1)
            .expect("the output name is unused");
        self.types.insert(
            name.to_string(),
            ValueType {
                dtype,
                shape: shape.to_vec(),
            },
        );
        self.proto.output.push(value_info(name, dtype, shape));
    }

    /// Names of the graph outputs.
    pub fn output_names(&self) -> impl Iterator<Item = &str> {
        self.proto.output.iter().map(|o| o.name())
    }

    /// Declares a new graph input `name` of element type `dtype` and static `shape`.
    pub fn add_input(&mut self, name: &str, dtype: DType, shape: &[usize]) {
        self.used_names.insert(name.to_string());
        self.minted.insert(name.to_string());
        self.types.insert(
            name.to_string(),
            ValueType {
                dtype,
                shape: shape.to_vec(),
            },
        );
        self.proto.input.push(value_info(name, dtype, shape));
    }

    /// The declaration of graph input `name`.
    pub fn input_declaration(&self, name: &str) -> Option<&ValueInfoProto> {
        self.proto.input.iter().find(|i| i.name() == name)
    }

    /// True when `name` is declared as a graph input (initializers included in old models).
    pub fn declares_input(&self, name: &str) -> bool {
        self.proto.input.iter().any(|i| i.name() == name)
    }

    /// The graph input declarations, to edit their types (not their names).
    pub fn input_declarations_mut(&mut self) -> impl Iterator<Item = &mut ValueInfoProto> {
        self.proto.input.iter_mut()
    }

    /// The graph output declarations, to edit their types (not their names).
    pub fn output_declarations_mut(&mut self) -> impl Iterator<Item = &mut ValueInfoProto> {
        self.proto.output.iter_mut()
    }

    /// Drops the declared types of intermediate values (stale after an axis became symbolic).
    pub fn clear_value_info(&mut self) {
        self.proto.value_info.clear();
    }

    /// The attributes of node `index`, to edit (its subgraphs' declarations, for instance;
    /// the indexes do not look into attributes).
    pub fn node_attributes_mut(&mut self, index: usize) -> &mut Vec<AttributeProto> {
        &mut self.proto.node[index].attribute
    }
}

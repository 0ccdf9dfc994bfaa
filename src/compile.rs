//! The pipeline: load -> match rules -> differentiate -> emit. Verification lives in `verify`.
use std::collections::BTreeMap;

use crate::autodiff::{self, Modifiers};
use crate::emit::{self, TargetMode};
use crate::error::{Error, Result};
use crate::ir::{topo, Graph};
use crate::onnx::proto::ModelProto;
use crate::reroll::{reroll, ScanForm};
use crate::rules::{self, Effect, Matches, RuleSet, SiluRule};

pub const MAX_IR_VERSION: i64 = 11;
pub const OPSET_RANGE: std::ops::RangeInclusive<i64> = 13..=24;

#[derive(Debug, Clone)]
pub struct Options {
    pub rules: RuleSet,
    /// The SiLU identity rule's multiplier: the official stabilized form or the exact sigmoid.
    pub silu_rule: SiluRule,
    pub target: TargetMode,
    pub emit_embedding: bool,
    pub emit_layers: bool,
    pub scan: ScanForm,
    /// Tokens per Scan iteration of the rolled and chunked forms (`None`: the form's default).
    pub chunk_len: Option<usize>,
    /// Emit a symbolic sequence axis (needs a rolled or chunked scan).
    pub dynamic_sequence: bool,
    /// Emit a symbolic batch axis (needs a rolled or chunked scan).
    pub dynamic_batch: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rules: RuleSet::mambalrp(),
            silu_rule: SiluRule::default(),
            target: TargetMode::Argmax,
            emit_embedding: false,
            emit_layers: false,
            scan: ScanForm::Rolled,
            chunk_len: None,
            dynamic_sequence: false,
            dynamic_batch: false,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CompileReport {
    pub tool_version: String,
    pub rules: String,
    pub silu_rule: SiluRule,
    pub target: TargetMode,
    pub site_counts: BTreeMap<String, usize>,
    pub sites: Vec<String>,
    pub rejected_candidates: Vec<String>,
    pub blocks: usize,
    pub scan: ScanForm,
    /// Tokens per Scan iteration of the rolled or chunked form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_len: Option<usize>,
    /// Selective-scan chains replaced by a `Scan` node.
    pub rerolled_scans: usize,
    pub nodes_original: usize,
    pub nodes_compiled: usize,
    /// Batch size and sequence length of the export (the traced sizes).
    pub batch_size: usize,
    pub sequence_length: usize,
    pub relevance_path_nodes: usize,
    pub opset: i64,
    pub outputs: Vec<String>,
    /// Element type of the embeddings: the float type the model computes in.
    pub float_type: i32,
}

pub struct Compiled {
    pub model: ModelProto,
    pub report: CompileReport,
}

fn check_versions(model: &ModelProto, graph: &Graph) -> Result<()> {
    if model.ir_version() > MAX_IR_VERSION {
        return Err(Error::Unsupported(format!(
            "IR version {} is newer than the supported {MAX_IR_VERSION}",
            model.ir_version()
        )));
    }
    if !OPSET_RANGE.contains(&graph.opset) {
        return Err(Error::Unsupported(format!(
            "default-domain opset {} is outside the supported range {}..={}",
            graph.opset,
            OPSET_RANGE.start(),
            OPSET_RANGE.end()
        )));
    }
    Ok(())
}

/// Finds the rule sites of a model without compiling it.
pub fn find_matches(graph: &Graph) -> Result<(String, Matches)> {
    let embeddings = emit::find_embeddings(graph)?;
    let dependent = autodiff::input_dependent(graph, &embeddings)?;
    Ok((embeddings, rules::match_all(graph, &dependent)))
}

/// Compiles a copy of `model`.
pub fn compile(model: &ModelProto, options: &Options) -> Result<Compiled> {
    compile_owned(model.clone(), options)
}

/// Compiles `model` in place of itself: the weights are never copied.
pub fn compile_owned(mut model: ModelProto, options: &Options) -> Result<Compiled> {
    let mut graph = Graph::take_from(&mut model)?;
    check_versions(&model, &graph)?;
    let nodes_original = graph.nodes().len();
    let requested_len = options
        .chunk_len
        .unwrap_or_else(|| options.scan.default_chunk_len());
    let (rerolled_scans, chunk_len) = match options.scan.kind() {
        Some(kind) => {
            // Gradient x input needs the states to differentiate through dA and C.
            let keep_states = !options.rules.contains(rules::Rule::Ssm);
            let rerolled = reroll(
                &mut graph,
                kind,
                requested_len,
                keep_states,
                options.dynamic_sequence,
            )?;
            if rerolled.scans > 0 {
                graph.into_model(&mut model);
                graph = Graph::take_from(&mut model)?;
            }
            (rerolled.scans, rerolled.chunk_len)
        }
        None => (0, requested_len),
    };
    for name in [
        emit::RELEVANCE,
        emit::RELEVANCE_TARGET_LOGIT,
        emit::RELEVANCE_BIAS,
        emit::RELEVANCE_EMBEDDING,
        emit::RELEVANCE_LAYERS,
        emit::TARGET_INPUT,
    ] {
        if graph.producer(name).is_some() || graph.proto.input.iter().any(|i| i.name() == name) {
            return Err(Error::Unsupported(format!(
                "the model already has a value named '{name}' (compiled twice?)"
            )));
        }
    }
    let (embeddings, matches) = find_matches(&graph)?;
    if matches.count(rules::Rule::Ssm) == 0 {
        return Err(Error::Unsupported(
            "no Mamba block found: looked for a selective scan (Softplus(dt_proj(dt)) with dt split from the x_proj \
             output), SiLU Mul(x, Sigmoid(x)) and RMSNorm x / sqrt(mean(x^2) + eps)"
                .into(),
        ));
    }
    let mut modifiers = Modifiers {
        prove_linear: options.rules.is_complete(),
        ..Default::default()
    };
    for site in matches.enabled(&options.rules) {
        match &site.effect {
            Effect::StopGradient(edges) => modifiers.stop_edges.extend(edges.iter().copied()),
            Effect::HalfGradient(node) => {
                modifiers.half_nodes.insert(*node);
            }
            Effect::SiluIdentity { product, gate_slot } => {
                modifiers.stop_edges.insert((*product, *gate_slot));
                if options.silu_rule == SiluRule::Stabilized {
                    modifiers.stabilized_silu.insert(*product);
                }
            }
        }
    }

    let explained = emit::explain_target(&mut graph, options.target)?;
    let mut grads = autodiff::differentiate(&mut graph, &embeddings, &explained.seeds, &modifiers)?;
    let embedding_grad = grads.cotangent(&mut graph, &embeddings)?.ok_or_else(|| {
        Error::Unsupported(format!(
            "output '{}' does not depend on the embeddings '{embeddings}'",
            explained.logits_output
        ))
    })?;

    let embedding_dtype = graph.dtype_of(&embeddings);
    let shape = graph.shape(&embeddings)?.to_vec();
    let (batch, seq) = (shape[0], shape[1]);
    // Relevance outputs are float32 whatever the model computes in (products and sums of
    // float16 values are formed in float32).
    let per_token = |graph: &mut Graph, value: &str, grad: &str| {
        let (value, grad) = (graph.op_to_float32(value), graph.op_to_float32(grad));
        let r = graph.op_binary("Mul", &value, &grad);
        let tokens = graph.op_reduce_sum(&r, &[-1], false);
        (r, tokens)
    };
    let (relevance_embedding, relevance) = per_token(&mut graph, &embeddings, &embedding_grad);
    let explained_logit = graph.op_to_float32(&explained.logit);
    let bias = match grads.bias_terms.as_slice() {
        [] => graph.op_zeros_like(&explained_logit),
        terms => graph.op_sum(terms),
    };
    let mut outputs = vec![
        (relevance, emit::RELEVANCE, vec![batch, seq]),
        (explained_logit, emit::RELEVANCE_TARGET_LOGIT, vec![batch]),
        (bias, emit::RELEVANCE_BIAS, vec![batch]),
    ];
    if options.emit_embedding {
        outputs.push((
            relevance_embedding,
            emit::RELEVANCE_EMBEDDING,
            shape.clone(),
        ));
    }
    if options.emit_layers {
        if matches.norm_inputs.is_empty() {
            return Err(Error::Unsupported(
                "--emit layers needs the blocks' RMSNorms, and none was found".into(),
            ));
        }
        let mut rows = Vec::new();
        for value in &matches.norm_inputs {
            let grad = match grads.cotangent(&mut graph, value)? {
                Some(g) => g,
                None => graph.op_zeros_like(value),
            };
            let (_, tokens) = per_token(&mut graph, value, &grad);
            rows.push(graph.op_unsqueeze(&tokens, &[0]));
        }
        let stacked = graph.op_concat(&rows, 0);
        outputs.push((
            stacked,
            emit::RELEVANCE_LAYERS,
            vec![rows.len(), batch, seq],
        ));
    }
    for (value, name, shape) in &outputs {
        emit::add_output(&mut graph, value, name, shape);
    }
    topo::remove_dead_nodes(&mut graph, |n| n.name().starts_with("mambalrp/"))?;
    if options.dynamic_sequence || options.dynamic_batch {
        let ssm_sites = matches.count(rules::Rule::Ssm);
        if rerolled_scans < ssm_sites {
            return Err(Error::Unsupported(format!(
                "--dynamic-seq/--dynamic-batch need every selective scan re-rolled ({rerolled_scans} of {ssm_sites} were; use --scan rolled)"
            )));
        }
        let token_inputs: Vec<String> = match graph.producer(&embeddings) {
            Some((_, gather)) => vec![gather.input[1].clone()],
            None => vec![embeddings.clone()],
        };
        if options.dynamic_sequence {
            emit::make_sequence_symbolic(&mut graph, seq, &token_inputs)?;
        }
        if options.dynamic_batch {
            let mut batch_inputs = token_inputs.clone();
            if options.target == TargetMode::Input {
                batch_inputs.push(emit::TARGET_INPUT.to_string());
            }
            emit::make_batch_symbolic(&mut graph, batch, &batch_inputs, &token_inputs[0])?;
        }
        // Constants the rewrites replaced are now unused.
        topo::remove_dead_nodes(&mut graph, |n| n.op_type() == "Constant")?;
    }
    remove_unused_constants(&mut graph);

    let sites: Vec<String> = matches.enabled(&options.rules).map(|s| s.label()).collect();
    let mut site_counts = BTreeMap::new();
    for site in matches.enabled(&options.rules) {
        *site_counts.entry(site.rule.name().to_string()).or_insert(0) += 1;
    }
    let report = CompileReport {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        rules: options.rules.to_string(),
        silu_rule: options.silu_rule,
        target: options.target,
        site_counts,
        sites,
        rejected_candidates: matches
            .rejections
            .iter()
            .map(|r| format!("{} '{}': {}", r.rule.name(), r.node, r.reason))
            .collect(),
        blocks: matches.norm_inputs.len().saturating_sub(1),
        scan: if rerolled_scans > 0 {
            options.scan
        } else {
            ScanForm::Unrolled
        },
        chunk_len: (rerolled_scans > 0).then_some(chunk_len),
        rerolled_scans,
        nodes_original,
        nodes_compiled: graph.nodes().len(),
        batch_size: batch,
        sequence_length: seq,
        relevance_path_nodes: grads.path_nodes,
        opset: graph.opset,
        outputs: outputs.iter().map(|(_, n, _)| n.to_string()).collect(),
        float_type: embedding_dtype,
    };
    let mut compiled = model;
    graph.into_model(&mut compiled);
    emit::add_metadata(
        &mut compiled,
        &[
            ("mambalrp.version", report.tool_version.clone()),
            (
                "mambalrp.scan",
                match report.chunk_len {
                    Some(len) => format!("{}, {len} tokens per iteration", report.scan),
                    None => report.scan.to_string(),
                },
            ),
            ("mambalrp.rules", report.rules.clone()),
            (emit::SILU_RULE_KEY, silu_rule_metadata(&report)),
            (emit::BLOCKS_KEY, report.blocks.to_string()),
            (
                "mambalrp.target",
                format!("{}, last position", report.target),
            ),
            (
                crate::verify::FLOAT_TYPE_KEY,
                crate::verify::float_type_name(report.float_type).to_string(),
            ),
            ("mambalrp.sites", report.sites.join("\n")),
            (
                "mambalrp.site_counts",
                serde_json::to_string(&report.site_counts).unwrap_or_default(),
            ),
        ],
    );
    let mut dynamic = Vec::new();
    if options.dynamic_batch {
        dynamic.push((crate::ir::BATCH_AXIS, crate::ir::BATCH_SIZE_KEY, batch));
    }
    if options.dynamic_sequence {
        dynamic.push((
            crate::ir::SEQUENCE_AXIS,
            crate::ir::SEQUENCE_LENGTH_KEY,
            seq,
        ));
    }
    if !dynamic.is_empty() {
        let axes: Vec<&str> = dynamic.iter().map(|(axis, _, _)| *axis).collect();
        let mut entries = vec![("mambalrp.dynamic_axes", axes.join(","))];
        entries.extend(
            dynamic
                .iter()
                .map(|(_, key, traced)| (*key, traced.to_string())),
        );
        emit::add_metadata(&mut compiled, &entries);
    }
    Ok(Compiled {
        model: compiled,
        report,
    })
}

/// The SiLU rule in force, or why none is (no SiLU rule in the rule set).
fn silu_rule_metadata(report: &CompileReport) -> String {
    if report.site_counts.contains_key(rules::Rule::Silu.name()) {
        report.silu_rule.to_string()
    } else {
        "none (the silu rule is off)".to_string()
    }
}

fn remove_unused_constants(graph: &mut Graph) {
    let used: std::collections::HashSet<String> = graph
        .proto
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    graph
        .proto
        .initializer
        .retain(|t| !t.name().starts_with("mambalrp/") || used.contains(t.name()));
}

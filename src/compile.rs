//! The pipeline: load -> match rules -> differentiate -> emit. Verification lives in `verify`.
use std::collections::BTreeMap;

use crate::autodiff::{self, Modifiers};
use crate::emit::Source;
use crate::emit::{self, metadata, TargetMode};
use crate::error::{Error, Result};
use crate::ir::{topo, DType, Edge, Graph};
use crate::onnx::proto::ModelProto;
use crate::reroll::{reroll, ScanForm};
use crate::rules::{self, Effect, Matches, PatchRule, RuleSet, SiluRule};

pub const MAX_IR_VERSION: i64 = 12;
pub const OPSET_RANGE: std::ops::RangeInclusive<i64> = 13..=24;

#[derive(Debug, Clone)]
pub struct Options {
    pub rules: RuleSet,
    /// The SiLU identity rule's multiplier: the official stabilized form or the exact sigmoid.
    pub silu_rule: SiluRule,
    /// How relevance crosses an image model's patch embedding down to the pixels.
    pub patch_rule: PatchRule,
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
    /// Run the batch this many samples at a time (one outer `Scan`; implies a symbolic batch).
    pub micro_batch: Option<usize>,
    /// The longest sequence the parallel form serves with a symbolic length (`None`:
    /// [`reroll::parallel::DEFAULT_MAX_SYMBOLIC_LENGTH`]).
    pub max_seq_len: Option<usize>,
    /// The arithmetic of the compiled model: as exported, or a half-precision export widened
    /// to float32 (`onnx::widen`).
    pub precision: Precision,
    /// Keep the large forward values the relevance pass multiplies by (the scan's decay
    /// factors) instead of recomputing them there: fewer kernels, more memory.
    pub keep_forward_values: bool,
}

/// What the compiled model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// The export's own float type.
    #[default]
    AsExported,
    /// float32 throughout: a float16 or bfloat16 export's weights are widened (exactly) and
    /// every activation, output and relevance is float32. Half precision's rounding moves
    /// MambaLRP's relevance by 10-20% on a 24-layer model; the weights' rounding alone, about
    /// 1e-4. No effect on a float32 model.
    Float32,
}

impl Options {
    /// The longest sequence the parallel form serves with a symbolic length.
    pub fn longest_symbolic_length(&self) -> usize {
        self.max_seq_len
            .unwrap_or(crate::reroll::parallel::DEFAULT_MAX_SYMBOLIC_LENGTH)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rules: RuleSet::mambalrp(),
            silu_rule: SiluRule::default(),
            patch_rule: PatchRule::default(),
            target: TargetMode::Argmax,
            emit_embedding: false,
            emit_layers: false,
            scan: ScanForm::Rolled,
            chunk_len: None,
            dynamic_sequence: false,
            dynamic_batch: false,
            micro_batch: None,
            max_seq_len: None,
            precision: Precision::AsExported,
            keep_forward_values: false,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CompileReport {
    pub tool_version: String,
    pub rules: String,
    pub silu_rule: SiluRule,
    /// The patch-embedding rule, for an image model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_rule: Option<PatchRule>,
    pub target: TargetMode,
    /// The explained row of the logits (`last position` or `class logits`).
    pub explained_row: &'static str,
    /// What relevance is read at: `tokens` or `image`.
    pub source: &'static str,
    pub site_counts: BTreeMap<String, usize>,
    pub sites: Vec<String>,
    pub rejected_candidates: Vec<String>,
    pub blocks: usize,
    pub scan: ScanForm,
    /// Tokens per Scan iteration of the rolled or chunked form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_len: Option<usize>,
    /// The longest sequence a parallel-form model with a symbolic length serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sequence_length: Option<usize>,
    /// How often each canonicalising rewrite fired.
    pub canonicalized: BTreeMap<String, usize>,
    /// The export's symbolic input axes and the sizes they were analysed at.
    pub exported_axes: Vec<String>,
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
    /// Element type of the embeddings: the float type the compiled model computes in.
    pub float_type: DType,
    /// The float type the export computed in (differs from `float_type` under
    /// `--precision float32`): the original outputs' rounding, which their check allows for.
    pub exported_float_type: DType,
    /// What `--precision float32` changed (absent when it was not asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub widened: Option<crate::onnx::widen::Widened>,
    /// Wall time of each compiler phase, in order.
    pub phase_seconds: Vec<PhaseTime>,
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

/// Why no Mamba block was found: what the matchers looked for, what they did find, and the
/// nearest candidates of each rule with what each lacked.
fn no_block_found(matches: &Matches) -> String {
    const NEAREST: usize = 4;
    let mut text = String::from(
        "no Mamba block found: looked for a selective scan (Softplus(dt_proj(dt)) with dt split from the x_proj \
         output), SiLU Mul(x, Sigmoid(x)) and RMSNorm x / sqrt(mean(x^2) + eps)",
    );
    let found: Vec<String> = rules::Rule::ALL
        .iter()
        .map(|&rule| format!("{} {}", matches.count(rule), rule.name()))
        .collect();
    text.push_str(&format!("; found {} site(s)", found.join(", ")));
    for rule in rules::Rule::ALL {
        let near: Vec<_> = matches
            .rejections
            .iter()
            .filter(|r| r.rule == rule)
            .collect();
        if near.is_empty() {
            continue;
        }
        text.push_str(&format!("\n  nearest {} candidates:", rule.name()));
        for rejection in near.iter().take(NEAREST) {
            text.push_str(&format!(
                "\n    - '{}': {}",
                rejection.node, rejection.reason
            ));
        }
        if near.len() > NEAREST {
            text.push_str(&format!(
                "\n    ... and {} more (--explain-matches lists all)",
                near.len() - NEAREST
            ));
        }
    }
    text
}

/// A linearity failure at a node a matcher considered (or at the operand of one, as a Tanh
/// where a SiLU needs a Sigmoid) says why the matcher rejected it.
fn with_near_misses(error: Error, graph: &Graph, matches: &Matches) -> Error {
    let Error::NotLinear { node, op, mut why } = error else {
        return error;
    };
    let mut related = vec![node.clone()];
    if let Some(failing) = graph.nodes().iter().find(|n| n.name() == node) {
        for output in &failing.output {
            related.extend(
                graph
                    .consumers(output)
                    .iter()
                    .map(|&(i, _)| graph.node(i).name().to_string()),
            );
        }
    }
    for rejection in matches
        .rejections
        .iter()
        .filter(|r| related.contains(&r.node))
    {
        why.push_str(&format!(
            "; the {} rule considered '{}' and rejected it: {}",
            rejection.rule.name(),
            rejection.node,
            rejection.reason
        ));
    }
    Error::NotLinear { node, op, why }
}

/// Finds the rule sites of a model without compiling it.
pub fn find_matches(graph: &Graph) -> Result<(Source, Matches)> {
    let source = emit::find_source(graph)?;
    let dependent = autodiff::input_dependent(graph, source.value())?;
    Ok((source, rules::match_all(graph, &dependent)))
}

/// What the matchers see in `model` after canonicalisation: for `--explain-matches` when a
/// compile fails. Without embeddings every value counts as input-dependent.
pub fn explain(model: &ModelProto) -> Result<(crate::canon::Canonicalized, Matches)> {
    let mut graph = Graph::from_model(model)?;
    let canonicalized = crate::canon::canonicalize(&mut graph)?;
    let dependent = match emit::find_source(&graph) {
        Ok(source) => autodiff::input_dependent(&graph, source.value())?,
        Err(_) => graph
            .nodes()
            .iter()
            .flat_map(|n| n.output.iter().cloned())
            .collect(),
    };
    Ok((canonicalized, rules::match_all(&graph, &dependent)))
}

/// Compiles a copy of `model`.
pub fn compile(model: &ModelProto, options: &Options) -> Result<Compiled> {
    compile_owned(model.clone(), options)
}

/// Compiles `model` in place of itself: the weights are never copied. Runs [`PHASES`] in
/// order, timing each in the report.
pub fn compile_owned(model: ModelProto, options: &Options) -> Result<Compiled> {
    let mut run = Compilation::start(model, options)?;
    let mut phase_seconds = Vec::new();
    for (name, phase) in PHASES {
        let start = std::time::Instant::now();
        phase(&mut run)?;
        phase_seconds.push(PhaseTime {
            phase: name,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let start = std::time::Instant::now();
    let mut compiled = run.finish()?;
    phase_seconds.push(PhaseTime {
        phase: "metadata",
        seconds: start.elapsed().as_secs_f64(),
    });
    compiled.report.phase_seconds = phase_seconds;
    Ok(compiled)
}

/// One step of the pipeline over the compilation state.
pub type Phase = fn(&mut Compilation) -> Result<()>;

/// The compiler's phases, in order (after loading; `metadata` closes the list).
pub const PHASES: [(&str, Phase); 6] = [
    ("canonicalize", Compilation::canonicalize),
    ("reroll", Compilation::reroll),
    ("match", Compilation::match_rules),
    ("differentiate", Compilation::differentiate),
    ("outputs", Compilation::emit_outputs),
    ("dynamic axes", Compilation::dynamic_axes),
];

/// Wall time of one compiler phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseTime {
    pub phase: &'static str,
    pub seconds: f64,
}

/// The state the phases pass along.
pub struct Compilation {
    options: Options,
    /// The model without its graph, which `graph` holds while compiling.
    model: ModelProto,
    graph: Graph,
    nodes_original: usize,
    canonicalized: crate::canon::Canonicalized,
    rerolled_scans: usize,
    chunk_len: usize,
    source: Source,
    matches: Matches,
    modifiers: Modifiers,
    explained: Option<emit::Explained>,
    grads: Option<autodiff::Gradients>,
    /// (value, output name, shape) of each relevance output.
    outputs: Vec<(String, &'static str, Vec<usize>)>,
    /// Batch size and sequence length of the embeddings.
    batch: usize,
    seq: usize,
    /// What `--precision float32` changed.
    widened: Option<crate::onnx::widen::Widened>,
}

impl Compilation {
    fn start(mut model: ModelProto, options: &Options) -> Result<Compilation> {
        let widened = match options.precision {
            Precision::AsExported => None,
            Precision::Float32 => Some(crate::onnx::widen::widen_to_float32(&mut model)?),
        };
        let graph = Graph::take_from(&mut model)?;
        check_versions(&model, &graph)?;
        for name in [
            emit::RELEVANCE,
            emit::RELEVANCE_TARGET_LOGIT,
            emit::RELEVANCE_BIAS,
            emit::RELEVANCE_EMBEDDING,
            emit::RELEVANCE_LAYERS,
            emit::RELEVANCE_TOKENS,
            emit::RELEVANCE_PATCHES,
            emit::TARGET_INPUT,
        ] {
            if graph.producer(name).is_some() || graph.declares_input(name) {
                return Err(Error::Unsupported(format!(
                    "the model already has a value named '{name}' (compiled twice?)"
                )));
            }
        }
        let mut options = options.clone();
        let image = matches!(emit::find_source(&graph), Ok(Source::Image(_)));
        if image && options.dynamic_sequence {
            return Err(Error::Unsupported(
                "--dynamic-seq is for token sequences; an image model's token count follows from its image size, which stays the traced one".into(),
            ));
        }
        if options.micro_batch.is_some() {
            if !options.scan.is_compact() {
                return Err(Error::Unsupported(
                    "--micro-batch needs a symbolic batch axis, which the unrolled form does not have (use --scan rolled, chunked or parallel)".into(),
                ));
            }
            options.dynamic_batch = true;
        }
        let exported_batch = graph.exported_axes().iter().any(|a| a.axis == 0);
        if image && options.dynamic_batch && !exported_batch {
            let flag = if options.micro_batch.is_some() {
                "--micro-batch (which makes the batch axis symbolic)"
            } else {
                "--dynamic-batch"
            };
            return Err(Error::Unsupported(format!(
                "{flag} needs an image model exported with a symbolic batch axis (TorchScript \
                 dynamic_axes={{'{}': {{0: 'batch'}}}}, or dynamo dynamic_shapes): this export computes \
                 with its traced batch size written into the graph (the class token's expand, the reshapes)",
                graph.graph_input_names().first().cloned().unwrap_or_default()
            )));
        }
        // An export with symbolic axes compiles to a model with them (the compact scan forms
        // serve any length and batch; the unrolled form stays at the traced sizes). An image
        // model's axis 1 is its channels: only a symbolic batch carries over.
        if options.scan.is_compact() {
            for axis in graph.exported_axes() {
                match axis.axis {
                    0 => options.dynamic_batch = true,
                    1 if !image => options.dynamic_sequence = true,
                    _ => {}
                }
            }
        }
        if options.max_seq_len.is_some()
            && !(options.scan == ScanForm::Parallel && options.dynamic_sequence)
        {
            return Err(Error::Unsupported(
                "--max-seq-len applies to --scan parallel with a symbolic sequence axis \
                 (--dynamic-seq): the Scan forms serve any length, a fixed length serves itself"
                    .into(),
            ));
        }
        let chunk_len = options
            .chunk_len
            .unwrap_or_else(|| options.scan.default_chunk_len());
        Ok(Compilation {
            options,
            nodes_original: graph.nodes().len(),
            model,
            graph,
            canonicalized: Default::default(),
            rerolled_scans: 0,
            chunk_len,
            source: Source::Embeddings(String::new()),
            matches: Matches::default(),
            modifiers: Modifiers::default(),
            explained: None,
            grads: None,
            outputs: vec![],
            batch: 0,
            seq: 0,
            widened,
        })
    }

    /// Rewrites equivalent forms (fused norms, other spellings of SiLU and softplus) into the
    /// one form the matchers read.
    fn canonicalize(&mut self) -> Result<()> {
        self.canonicalized = crate::canon::canonicalize(&mut self.graph)?;
        Ok(())
    }

    /// Replaces the unrolled selective scans by `Scan`s (unless `--scan unrolled`).
    fn reroll(&mut self) -> Result<()> {
        if !self.options.scan.is_compact() {
            return Ok(());
        }
        // The GPU form sums over the state axis by MatMul (see `Graph::op_sum_last_axis`).
        self.graph.sums_by_matmul = self.options.scan == ScanForm::Parallel;
        // Gradient x input needs the states to differentiate through dA and C.
        let keep_states = !self.options.rules.contains(rules::Rule::Ssm);
        let longest = self.options.longest_symbolic_length();
        let rerolled = reroll(
            &mut self.graph,
            self.options.scan,
            self.chunk_len,
            keep_states,
            self.options.dynamic_sequence.then_some(longest),
        )?;
        if rerolled.scans > 0 {
            // The new nodes need their static types.
            self.graph.reanalyse()?;
        }
        self.rerolled_scans = rerolled.scans;
        self.chunk_len = rerolled.chunk_len;
        Ok(())
    }

    /// Finds the embeddings and the rule sites, and turns the enabled sites into modifiers.
    fn match_rules(&mut self) -> Result<()> {
        let (source, matches) = find_matches(&self.graph)?;
        if matches.count(rules::Rule::Ssm) == 0 {
            return Err(Error::Unsupported(no_block_found(&matches)));
        }
        let mut modifiers = Modifiers {
            prove_linear: self.options.rules.is_complete(),
            keep_forward_values: self.options.keep_forward_values,
            ..Default::default()
        };
        for site in matches.enabled(&self.options.rules) {
            match &site.effect {
                Effect::StopGradient(edges) => modifiers.stop_edges.extend(edges.iter().cloned()),
                Effect::HalfGradient(node) => {
                    modifiers.half_nodes.insert(node.clone());
                }
                Effect::SiluIdentity { product, gate_slot } => {
                    modifiers.stop_edges.insert(Edge::new(product, *gate_slot));
                    if self.options.silu_rule == SiluRule::Stabilized {
                        modifiers.stabilized_silu.insert(product.clone());
                    }
                }
            }
        }
        if let (Source::Image(image), Some(gamma)) = (&source, self.options.patch_rule.gamma()) {
            modifiers.gamma_convs.insert(image.patches.clone(), gamma);
        }
        let tokens = match &source {
            Source::Embeddings(embeddings) => embeddings.clone(),
            Source::Image(image) => image_tokens(&self.graph, image, &matches)?,
        };
        let shape = self.graph.shape(&tokens)?.to_vec();
        (self.batch, self.seq) = (shape[0], shape[1]);
        self.source = source;
        self.matches = matches;
        self.modifiers = modifiers;
        Ok(())
    }

    /// Seeds the explained logit and emits the relevance pass down to the embeddings.
    fn differentiate(&mut self) -> Result<()> {
        let explained = emit::explain_target(&mut self.graph, self.options.target)?;
        let grads = autodiff::differentiate(
            &mut self.graph,
            self.source.value(),
            &explained.seeds,
            &self.modifiers,
        );
        self.grads = Some(grads.map_err(|e| with_near_misses(e, &self.graph, &self.matches))?);
        self.explained = Some(explained);
        Ok(())
    }

    /// Relevance per token (and per embedding and layer, if asked), the explained logit and the
    /// bias share, as graph outputs.
    fn emit_outputs(&mut self) -> Result<()> {
        let graph = &mut self.graph;
        let grads = self.grads.as_mut().expect("differentiate ran");
        let explained = self.explained.as_ref().expect("differentiate ran");
        let mut reached = |graph: &mut Graph, value: &str| {
            grads.cotangent(graph, value)?.ok_or_else(|| {
                Error::Unsupported(format!(
                    "output '{}' does not depend on '{value}'",
                    explained.logits_output
                ))
            })
        };
        let (batch, seq) = (self.batch, self.seq);
        let mut relevance_outputs = Vec::new();
        let relevance_embedding;
        match &self.source {
            Source::Embeddings(embeddings) => {
                let grad = reached(graph, embeddings)?;
                let shape = graph.shape(embeddings)?.to_vec();
                let (per_element, per_token) = per_token(graph, embeddings, &grad);
                relevance_outputs.push((per_token, emit::RELEVANCE, vec![batch, seq]));
                relevance_embedding = (per_element, shape);
            }
            Source::Image(image) => {
                let grad = reached(graph, &image.pixels)?;
                let shape = graph.shape(&image.pixels)?.to_vec();
                let (x, g) = (
                    graph.op_to_float32(&image.pixels),
                    graph.op_to_float32(&grad),
                );
                let pixels = graph.op_binary("Mul", &x, &g);
                relevance_outputs.push((pixels, emit::RELEVANCE, shape));
                let tokens = image_tokens(graph, image, &self.matches)?;
                let grad = reached(graph, &tokens)?;
                let shape = graph.shape(&tokens)?.to_vec();
                let (per_element, per_token) = per_token(graph, &tokens, &grad);
                relevance_outputs.push((per_token, emit::RELEVANCE_TOKENS, vec![batch, seq]));
                relevance_embedding = (per_element, shape);
                let grad = reached(graph, &image.patches)?;
                let grid = graph.shape(&image.patches)?.to_vec();
                let (z, g) = (
                    graph.op_to_float32(&image.patches),
                    graph.op_to_float32(&grad),
                );
                let product = graph.op_binary("Mul", &z, &g);
                let per_patch = graph.op_reduce_sum(&product, &[1], false);
                let patches = grid[2..].iter().product::<usize>();
                // Flatten keeps the batch a runtime size (for --dynamic-batch).
                let flat = graph.add_node(
                    "Flatten",
                    &[&per_patch],
                    vec![crate::onnx::attributes::make_int("axis", 1)],
                );
                relevance_outputs.push((flat, emit::RELEVANCE_PATCHES, vec![batch, patches]));
            }
        }
        let explained_logit = graph.op_to_float32(&explained.logit);
        let bias = match grads.bias_terms.as_slice() {
            [] => graph.op_zeros_like(&explained_logit),
            terms => graph.op_sum(terms),
        };
        let mut outputs = relevance_outputs;
        outputs.insert(
            1,
            (explained_logit, emit::RELEVANCE_TARGET_LOGIT, vec![batch]),
        );
        outputs.insert(2, (bias, emit::RELEVANCE_BIAS, vec![batch]));
        if self.options.emit_embedding {
            let (value, shape) = relevance_embedding;
            outputs.push((value, emit::RELEVANCE_EMBEDDING, shape));
        }
        if self.options.emit_layers {
            if self.matches.norm_inputs.is_empty() {
                return Err(Error::Unsupported(
                    "--emit layers needs the blocks' RMSNorms, and none was found".into(),
                ));
            }
            let mut rows = Vec::new();
            for value in &self.matches.norm_inputs {
                let grad = match grads.cotangent(graph, value)? {
                    Some(g) => g,
                    None => graph.op_zeros_like(value),
                };
                let (_, tokens) = per_token(graph, value, &grad);
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
            emit::add_output(graph, value, name, shape);
        }
        emit::read_sums_off_prefix_sums(graph)?;
        topo::remove_dead_minted_nodes(graph)?;
        self.outputs = outputs;
        Ok(())
    }

    /// Makes the sequence and/or batch axes symbolic, if asked.
    fn dynamic_axes(&mut self) -> Result<()> {
        let options = &self.options;
        if options.dynamic_sequence || options.dynamic_batch {
            let ssm_sites = self.matches.count(rules::Rule::Ssm);
            if self.rerolled_scans < ssm_sites {
                return Err(Error::Unsupported(format!(
                    "--dynamic-seq/--dynamic-batch need every selective scan re-rolled ({} of {ssm_sites} were; use --scan rolled)",
                    self.rerolled_scans
                )));
            }
            let graph = &mut self.graph;
            let embeddings = self.source.value();
            let token_inputs: Vec<String> = match graph.producer(embeddings) {
                Some((_, gather)) => vec![gather.input[1].clone()],
                None => vec![embeddings.to_string()],
            };
            if options.dynamic_sequence {
                emit::make_sequence_symbolic(graph, self.seq, &token_inputs)?;
            }
            if options.dynamic_batch {
                let mut batch_inputs = token_inputs.clone();
                if options.target == TargetMode::Input {
                    batch_inputs.push(emit::TARGET_INPUT.to_string());
                }
                emit::make_batch_symbolic(graph, self.batch, &batch_inputs, &token_inputs[0])?;
            }
            // Constants the rewrites replaced are now unused.
            topo::remove_dead_nodes(graph, |n| n.op_type() == "Constant")?;
            // Shapes are runtime values now: the backward pass reads the forward's copies.
            graph.merge_duplicate_shapes()?;
        }
        self.graph.remove_unused_minted_initializers();
        Ok(())
    }

    /// The report, and the model with its graph back and the metadata recorded.
    fn finish(self) -> Result<Compiled> {
        let Compilation {
            options,
            mut model,
            graph,
            matches,
            ..
        } = self;
        let sites: Vec<String> = matches.enabled(&options.rules).map(|s| s.label()).collect();
        let mut site_counts = BTreeMap::new();
        for site in matches.enabled(&options.rules) {
            *site_counts.entry(site.rule.name().to_string()).or_insert(0) += 1;
        }
        let rerolled = self.rerolled_scans > 0;
        let report = CompileReport {
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            rules: options.rules.to_string(),
            silu_rule: options.silu_rule,
            patch_rule: self.source.is_image().then_some(options.patch_rule),
            target: options.target,
            explained_row: self.explained.as_ref().map_or("", |e| e.row),
            source: if self.source.is_image() {
                "image"
            } else {
                "tokens"
            },
            site_counts,
            sites,
            rejected_candidates: matches
                .rejections
                .iter()
                .map(|r| format!("{} '{}': {}", r.rule.name(), r.node, r.reason))
                .collect(),
            blocks: matches.norm_inputs.len().saturating_sub(1),
            scan: if rerolled {
                options.scan
            } else {
                ScanForm::Unrolled
            },
            chunk_len: rerolled.then_some(self.chunk_len),
            max_sequence_length: (rerolled
                && options.scan == ScanForm::Parallel
                && options.dynamic_sequence)
                .then(|| {
                    crate::reroll::parallel::served_length(
                        options.longest_symbolic_length(),
                        self.chunk_len,
                    )
                }),
            exported_axes: graph
                .exported_axes()
                .iter()
                .map(|a| format!("axis {} '{}' analysed at {}", a.axis, a.symbol, a.traced))
                .collect(),
            canonicalized: self
                .canonicalized
                .iter()
                .map(|(name, count)| (name.to_string(), *count))
                .collect(),
            rerolled_scans: self.rerolled_scans,
            nodes_original: self.nodes_original,
            nodes_compiled: graph.nodes().len(),
            batch_size: self.batch,
            sequence_length: self.seq,
            relevance_path_nodes: self.grads.as_ref().map_or(0, |g| g.path_nodes),
            opset: graph.opset,
            outputs: self.outputs.iter().map(|(_, n, _)| n.to_string()).collect(),
            float_type: graph.dtype_of(self.source.value()),
            exported_float_type: self
                .widened
                .as_ref()
                .and_then(|w| w.weights_were)
                .unwrap_or_else(|| graph.dtype_of(self.source.value())),
            widened: self.widened.clone(),
            phase_seconds: vec![],
        };
        graph.into_model(&mut model);
        if let Some(samples) = options.micro_batch {
            let graph = model.graph.take().expect("into_model set the graph");
            model.graph = Some(emit::micro_batch::wrap(graph, samples)?);
        }
        record_metadata(&mut model, &report, &options);
        Ok(Compiled { model, report })
    }
}

/// The token sequence of an image model: the residual stream entering the first block (patch
/// tokens with the class token and the position embeddings added), `[batch, tokens, hidden]`.
fn image_tokens(graph: &Graph, image: &emit::ImageSource, matches: &Matches) -> Result<String> {
    let batch = graph.shape(&image.pixels)?[0];
    let tokens = matches.norm_inputs.first().ok_or_else(|| {
        Error::Unsupported(format!(
            "image model: no RMSNorm found after the patch embedding '{}', so the token sequence entering the first block is unknown",
            image.patches
        ))
    })?;
    match graph.shape(tokens)? {
        [b, _, _] if *b == batch => Ok(tokens.clone()),
        shape => Err(Error::Unsupported(format!(
            "image model: the first block's input '{tokens}' has shape {shape:?}, not [batch {batch}, tokens, hidden]"
        ))),
    }
}

/// Relevance of `value` (float32): per element, and summed over its last axis (per token).
fn per_token(graph: &mut Graph, value: &str, grad: &str) -> (String, String) {
    // Relevance outputs are float32 whatever the model computes in (products and sums of
    // float16 values are formed in float32).
    let (value, grad) = (graph.op_to_float32(value), graph.op_to_float32(grad));
    let r = graph.op_binary("Mul", &value, &grad);
    let tokens = graph.op_reduce_sum(&r, &[-1], false);
    (r, tokens)
}

/// Records the tool, the rules, the sites and the traced sizes in `metadata_props`.
fn record_metadata(model: &mut ModelProto, report: &CompileReport, options: &Options) {
    metadata::add_metadata(
        model,
        &[
            (metadata::VERSION_KEY, report.tool_version.clone()),
            (
                metadata::SCAN_KEY,
                match report.chunk_len {
                    Some(len) => format!("{}, {len} tokens per iteration", report.scan),
                    None => report.scan.to_string(),
                },
            ),
            (metadata::RULES_KEY, report.rules.clone()),
            (metadata::SILU_RULE_KEY, silu_rule_metadata(report)),
            (metadata::BLOCKS_KEY, report.blocks.to_string()),
            (
                metadata::TARGET_KEY,
                format!("{}, {}", report.target, report.explained_row),
            ),
            (metadata::SOURCE_KEY, report.source.to_string()),
            (
                metadata::FLOAT_TYPE_KEY,
                crate::verify::float_type_name(report.float_type).to_string(),
            ),
            (metadata::SITES_KEY, report.sites.join("\n")),
            (
                metadata::SITE_COUNTS_KEY,
                serde_json::to_string(&report.site_counts).unwrap_or_default(),
            ),
        ],
    );
    if report.exported_float_type != report.float_type {
        metadata::add_metadata(
            model,
            &[(
                metadata::EXPORTED_FLOAT_TYPE_KEY,
                crate::verify::float_type_name(report.exported_float_type).to_string(),
            )],
        );
    }
    if let Some(rule) = report.patch_rule {
        metadata::add_metadata(model, &[(metadata::PATCH_RULE_KEY, rule.to_string())]);
    }
    if let Some(samples) = options.micro_batch {
        metadata::add_metadata(model, &[(metadata::MICRO_BATCH_KEY, samples.to_string())]);
    }
    if let Some(longest) = report.max_sequence_length {
        metadata::add_metadata(
            model,
            &[(metadata::MAX_SEQUENCE_LENGTH_KEY, longest.to_string())],
        );
    }
    let mut dynamic = Vec::new();
    if options.dynamic_batch {
        dynamic.push((
            crate::ir::BATCH_AXIS,
            metadata::BATCH_SIZE_KEY,
            report.batch_size,
        ));
    }
    if options.dynamic_sequence {
        dynamic.push((
            crate::ir::SEQUENCE_AXIS,
            metadata::SEQUENCE_LENGTH_KEY,
            report.sequence_length,
        ));
    }
    if !dynamic.is_empty() {
        let axes: Vec<&str> = dynamic.iter().map(|(axis, _, _)| *axis).collect();
        let mut entries = vec![(metadata::DYNAMIC_AXES_KEY, axes.join(","))];
        entries.extend(
            dynamic
                .iter()
                .map(|(_, key, traced)| (*key, traced.to_string())),
        );
        metadata::add_metadata(model, &entries);
    }
}

/// The SiLU rule in force, or why none is (no SiLU rule in the rule set).
fn silu_rule_metadata(report: &CompileReport) -> String {
    if report.site_counts.contains_key(rules::Rule::Silu.name()) {
        report.silu_rule.to_string()
    } else {
        "none (the silu rule is off)".to_string()
    }
}

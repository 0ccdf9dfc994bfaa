//! Rule matchers. Each finds the sites of one MambaLRP rule on dataflow meaning (so both
//! exporters match) and says why near misses were rejected. Matching never edits the graph: a
//! site is a value describing the rewrite, applied by the relevance pass.
mod gate;
mod norm;
mod patch;
pub use patch::PatchRule;
mod pattern;
pub use pattern::{consumers_through_noops, skip_noops};
mod silu;
mod ssm;

use std::collections::HashSet;
use std::fmt;

pub use crate::ir::Edge;
use crate::ir::Graph;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Silu,
    Norm,
    Ssm,
    Gate,
}

impl Rule {
    pub const ALL: [Rule; 4] = [Rule::Silu, Rule::Norm, Rule::Ssm, Rule::Gate];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Silu => "silu",
            Rule::Norm => "norm",
            Rule::Ssm => "ssm",
            Rule::Gate => "gate",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Rule::Silu => "R1 SiLU identity",
            Rule::Norm => "R2 norm denominator stop-gradient",
            Rule::Ssm => "R3 SSM selection stop-gradient",
            Rule::Gate => "R4 gate half rule",
        }
    }
}

/// The rules applied, parsed from `mambalrp`, `gi` or a comma list such as `silu,ssm,norm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet(pub Vec<Rule>);

impl RuleSet {
    pub fn mambalrp() -> Self {
        RuleSet(Rule::ALL.to_vec())
    }

    pub fn contains(&self, rule: Rule) -> bool {
        self.0.contains(&rule)
    }

    /// All four rules: the relevance path must then be provably linear.
    pub fn is_complete(&self) -> bool {
        Rule::ALL.iter().all(|r| self.contains(*r))
    }
}

impl std::str::FromStr for RuleSet {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "mambalrp" | "lrp" => return Ok(RuleSet::mambalrp()),
            "gi" | "none" => return Ok(RuleSet(vec![])),
            _ => {}
        }
        let mut rules = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let rule = Rule::ALL
                .into_iter()
                .find(|r| r.name() == part)
                .ok_or_else(|| format!("unknown rule '{part}': expected mambalrp, gi, or a list of silu,norm,ssm,gate"))?;
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
        rules.sort();
        Ok(RuleSet(rules))
    }
}

impl fmt::Display for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_complete() {
            write!(f, "mambalrp")
        } else if self.0.is_empty() {
            write!(f, "gi")
        } else {
            let names: Vec<_> = self.0.iter().map(|r| r.name()).collect();
            write!(f, "{}", names.join(","))
        }
    }
}

/// What a matched site changes in the backward pass. Nodes are named by their first output
/// value (see [`Edge`]), so effects stay in place when other nodes are removed or reordered
/// between matching and differentiation.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// No gradient flows along these input edges.
    StopGradient(Vec<Edge>),
    /// The gradient into this product node (its first output) is halved.
    HalfGradient(String),
    /// A SiLU product `x * sigmoid(x)` (named by its output): no gradient through the sigmoid
    /// operand (`gate_slot`); under the stabilized form the multiplier on `x` is
    /// `silu(x) / st(x)` instead.
    SiluIdentity { product: String, gate_slot: usize },
}

/// How the SiLU identity rule forms its frozen multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SiluRule {
    /// The official MambaLRP form: `st(x) * sg(silu(x) / st(x))` with
    /// `st(z) = z + (1[z = 0] + sign z) * 1e-6`; what the stabilizer absorbs is bias relevance.
    #[default]
    Stabilized,
    /// `x * sg(sigmoid(x))`: differs from the stabilized form only where |x| is below ~1e-5.
    Exact,
}

impl SiluRule {
    pub fn name(self) -> &'static str {
        match self {
            SiluRule::Stabilized => "stabilized",
            SiluRule::Exact => "exact",
        }
    }
}

impl fmt::Display for SiluRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub struct Site {
    pub rule: Rule,
    /// The node the site is anchored at (named in reports).
    pub node: String,
    pub detail: String,
    pub effect: Effect,
}

impl Site {
    pub fn label(&self) -> String {
        format!("{} at '{}': {}", self.rule.title(), self.node, self.detail)
    }
}

#[derive(Debug, Clone)]
pub struct Rejection {
    pub rule: Rule,
    pub node: String,
    pub reason: String,
}

/// Everything the matchers found, plus structure other passes use.
#[derive(Debug, Clone, Default)]
pub struct Matches {
    pub sites: Vec<Site>,
    pub rejections: Vec<Rejection>,
    /// Inputs of the normalisations in graph order: the residual stream entering each Mamba
    /// block, then the final norm.
    pub norm_inputs: Vec<String>,
}

impl Matches {
    pub fn count(&self, rule: Rule) -> usize {
        self.sites.iter().filter(|s| s.rule == rule).count()
    }

    pub fn enabled<'a>(&'a self, rules: &'a RuleSet) -> impl Iterator<Item = &'a Site> + 'a {
        self.sites.iter().filter(move |s| rules.contains(s.rule))
    }
}

/// Runs every matcher. `input_dependent` holds the values computed from the explained input.
pub fn match_all(graph: &Graph, input_dependent: &HashSet<String>) -> Matches {
    let mut matches = Matches::default();
    let silu_products = silu::find(graph, &mut matches);
    norm::find(graph, &mut matches);
    ssm::find(graph, &mut matches);
    // A product with dt, B or C (the re-rolled scan's `dt * u`) multiplies one carrying tensor:
    // it is linear under the SSM rule, not a gate.
    let frozen: HashSet<Edge> = matches
        .sites
        .iter()
        .filter_map(|site| match &site.effect {
            Effect::StopGradient(edges) if site.rule == Rule::Ssm => Some(edges.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect();
    let carrying = crate::autodiff::still_dependent(graph, input_dependent, &frozen)
        .unwrap_or_else(|_| input_dependent.clone());
    gate::find(graph, &carrying, &silu_products, &mut matches);
    matches
}

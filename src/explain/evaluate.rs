//! The token-flipping faithfulness test of the MambaLRP paper. For each input, tokens are
//! replaced by a flip token one at a time in order of relevance, most relevant first (MoRF) and
//! least relevant first (LeRF), and the explained logit (the logit of the token the unflipped
//! input predicts, at the last position) is tracked. A curve has S + 1 points (0..S tokens
//! flipped); its area is their mean; ΔA^F = A_LeRF - A_MoRF, averaged over the inputs. A
//! faithful explanation destroys the logit fast when the relevant tokens go first and keeps it
//! when they go last; a random order is the baseline. The flipped inputs of one curve run as
//! one batch (in groups of the model's batch size when it is static).
use std::path::Path;

use ndarray::ArrayD;

use super::{interface, output, Interface};
use crate::emit::RELEVANCE;
use crate::error::{Error, Result};
use crate::onnx::Tensor;
use crate::verify::OrtModel;

/// One method's curves, averaged over the inputs, and its areas.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MethodScore {
    pub method: String,
    pub area_morf: f32,
    pub area_lerf: f32,
    /// A_LeRF - A_MoRF, averaged over the inputs.
    pub delta_af: f32,
    pub mean_morf: Vec<f32>,
    pub mean_lerf: Vec<f32>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    pub inputs: usize,
    pub flip_id: i64,
    pub methods: Vec<MethodScore>,
}

/// A compiled model ready to run batches of token ids.
struct Runner {
    session: OrtModel,
    interface: Interface,
}

impl Runner {
    fn open(path: &Path) -> Result<Runner> {
        let model = crate::onnx::load_model(path)?;
        let interface = interface(&model, path)?;
        if interface.takes_target {
            return Err(Error::Unsupported(format!(
                "{} was compiled with --target input; evaluate needs a model that explains its own prediction",
                path.display()
            )));
        }
        Ok(Runner {
            session: OrtModel::new(&model)?,
            interface,
        })
    }

    /// Runs the rows (each a full input), in groups of the model's batch size when it is
    /// static, and returns each row's relevance and last-position logits.
    fn run(&mut self, rows: &[Vec<i64>]) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let len = rows[0].len();
        let group = self.interface.batch.unwrap_or(rows.len()).max(1);
        let mut results = Vec::new();
        for chunk in rows.chunks(group) {
            let mut ids: Vec<i64> = chunk.iter().flatten().copied().collect();
            // A static batch is filled up by repeating the last row.
            for _ in chunk.len()..group {
                ids.extend_from_slice(&chunk[chunk.len() - 1]);
            }
            let input = Tensor::I64(
                ArrayD::from_shape_vec(ndarray::IxDyn(&[group, len]), ids).expect("group x len"),
            );
            let outputs = self
                .session
                .run(&[(self.interface.ids_input.clone(), input)])?;
            let relevance = output(&outputs, RELEVANCE)?;
            let logits = output(&outputs, &self.interface.logits_output)?;
            for row in 0..chunk.len() {
                let r = relevance.slice(ndarray::s![row, ..]).to_vec();
                let l = logits.slice(ndarray::s![row, len - 1, ..]).to_vec();
                results.push((r, l));
            }
        }
        Ok(results)
    }
}

/// Positions sorted by relevance, descending (MoRF) or ascending (LeRF); ties keep position
/// order.
pub(super) fn order(relevance: &[f32], most_relevant_first: bool) -> Vec<usize> {
    let mut positions: Vec<usize> = (0..relevance.len()).collect();
    positions.sort_by(|&a, &b| {
        let (x, y) = (relevance[a], relevance[b]);
        let ordering = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
        if most_relevant_first {
            ordering.reverse()
        } else {
            ordering
        }
    });
    positions
}

/// A deterministic permutation of 0..n (xorshift, seeded).
pub(super) fn random_order(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut positions: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        positions.swap(i, (state % (i as u64 + 1)) as usize);
    }
    positions
}

/// The explained logit as the tokens at `order` are flipped one by one (S + 1 points).
fn curve(
    runner: &mut Runner,
    ids: &[i64],
    order: &[usize],
    target: usize,
    flip_id: i64,
) -> Result<Vec<f32>> {
    let mut rows = vec![ids.to_vec()];
    for &position in order {
        let mut next = rows[rows.len() - 1].clone();
        next[position] = flip_id;
        rows.push(next);
    }
    Ok(runner
        .run(&rows)?
        .into_iter()
        .map(|(_, logits)| logits[target])
        .collect())
}

fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len().max(1) as f32
}

/// Accumulates per-input curves into mean curves and areas.
#[derive(Default)]
pub(super) struct Accumulator {
    pub(super) morf: Vec<Vec<f32>>,
    pub(super) lerf: Vec<Vec<f32>>,
}

impl Accumulator {
    pub(super) fn score(&self, method: &str) -> MethodScore {
        let average = |curves: &[Vec<f32>]| -> Vec<f32> {
            let len = curves.first().map_or(0, Vec::len);
            (0..len)
                .map(|k| curves.iter().map(|c| c[k]).sum::<f32>() / curves.len() as f32)
                .collect()
        };
        let areas = |curves: &[Vec<f32>]| -> Vec<f32> { curves.iter().map(|c| mean(c)).collect() };
        let (morf, lerf) = (areas(&self.morf), areas(&self.lerf));
        let deltas: Vec<f32> = lerf.iter().zip(&morf).map(|(l, m)| l - m).collect();
        MethodScore {
            method: method.to_string(),
            area_morf: mean(&morf),
            area_lerf: mean(&lerf),
            delta_af: mean(&deltas),
            mean_morf: average(&self.morf),
            mean_lerf: average(&self.lerf),
        }
    }
}

/// Evaluates each `(method name, compiled model)` on the same inputs, plus a random order
/// (seeded) on the first model.
pub fn evaluate(
    models: &[(String, &Path)],
    inputs: &[Vec<i64>],
    flip_id: i64,
    seed: u64,
) -> Result<Evaluation> {
    if inputs.is_empty() {
        return Err(Error::InvalidModel("nothing to evaluate: no inputs".into()));
    }
    let mut methods = Vec::new();
    let mut random = Accumulator::default();
    for (index, (method, path)) in models.iter().enumerate() {
        let mut runner = Runner::open(path)?;
        let mut scores = Accumulator::default();
        for (n, ids) in inputs.iter().enumerate() {
            if let Some(length) = runner.interface.length.filter(|&l| l != ids.len()) {
                return Err(Error::Unsupported(format!(
                    "input {n} has {} tokens, but {} takes exactly {length}",
                    ids.len(),
                    path.display()
                )));
            }
            let (relevance, logits) = runner.run(std::slice::from_ref(ids))?.remove(0);
            let target = crate::verify::argmax(logits.iter());
            scores.morf.push(curve(
                &mut runner,
                ids,
                &order(&relevance, true),
                target,
                flip_id,
            )?);
            scores.lerf.push(curve(
                &mut runner,
                ids,
                &order(&relevance, false),
                target,
                flip_id,
            )?);
            if index == 0 {
                let shuffled = random_order(ids.len(), seed.wrapping_add(n as u64));
                let reversed: Vec<usize> = shuffled.iter().rev().copied().collect();
                random
                    .morf
                    .push(curve(&mut runner, ids, &shuffled, target, flip_id)?);
                random
                    .lerf
                    .push(curve(&mut runner, ids, &reversed, target, flip_id)?);
            }
        }
        methods.push(scores.score(method));
    }
    methods.push(random.score("random"));
    Ok(Evaluation {
        inputs: inputs.len(),
        flip_id,
        methods,
    })
}

/// The table the command prints.
pub fn table(evaluation: &Evaluation) -> String {
    let heading = format!(
        "token flipping over {} input(s), flip token id {}:",
        evaluation.inputs, evaluation.flip_id
    );
    method_table(&heading, &evaluation.methods)
}

/// A heading, then each method's areas and ΔA^F.
pub(super) fn method_table(heading: &str, methods: &[MethodScore]) -> String {
    let mut text = format!(
        "{heading}\n  {:<24} {:>10} {:>10} {:>10}\n",
        "method", "A_MoRF", "A_LeRF", "dA^F"
    );
    for m in methods {
        text.push_str(&format!(
            "  {:<24} {:>10.4} {:>10.4} {:>10.4}\n",
            m.method, m.area_morf, m.area_lerf, m.delta_af
        ));
    }
    text
}

/// The mean MoRF and LeRF curves of every method as an SVG line chart.
pub fn plot_svg(evaluation: &Evaluation, path: &Path) -> Result<()> {
    plot_curves(
        &evaluation.methods,
        "Token flipping: explained logit",
        "tokens flipped",
        path,
    )
}

/// Mean MoRF (solid) and LeRF (dashed) curves, one colour per method, as an SVG line chart.
pub(super) fn plot_curves(
    methods: &[MethodScore],
    title: &str,
    x_description: &str,
    path: &Path,
) -> Result<()> {
    use plotters::prelude::*;
    let failed = |e: &dyn std::fmt::Display| {
        Error::InvalidModel(format!("cannot draw {}: {e}", path.display()))
    };
    let steps = methods.first().map_or(1, |m| m.mean_morf.len()).max(2);
    let values = methods
        .iter()
        .flat_map(|m| m.mean_morf.iter().chain(&m.mean_lerf))
        .copied();
    let (low, high) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    let margin = ((high - low).abs() * 0.05).max(1e-3);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f32..(steps - 1) as f32, (low - margin)..(high + margin))
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_description)
        .y_desc("logit")
        .draw()
        .map_err(|e| failed(&e))?;
    for (i, m) in methods.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        for (curve, name, dashed) in [(&m.mean_morf, "MoRF", false), (&m.mean_lerf, "LeRF", true)] {
            let points: Vec<(f32, f32)> = curve
                .iter()
                .enumerate()
                .map(|(k, &v)| (k as f32, v))
                .collect();
            let label = format!("{} {name}", m.method);
            let style = if dashed {
                color.stroke_width(1)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(|e| failed(&e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

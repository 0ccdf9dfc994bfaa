//! Heatmaps of token relevance: diverging red (positive) / blue (negative), scaled per text by
//! its largest |relevance|, for the terminal and for a self-contained HTML page.
use super::Explanation;

/// How the terminal shows relevance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMode {
    /// 24-bit background colours.
    Truecolor,
    /// The xterm 256-colour cube.
    Palette256,
    /// No colours: each token followed by its relevance.
    Plain,
}

impl ColorMode {
    /// What the terminal supports: plain when asked, when `NO_COLOR` is set or when stdout is
    /// not a terminal; truecolor when `COLORTERM` says so; the 256-colour palette otherwise.
    pub fn detect(no_color: bool) -> ColorMode {
        use std::io::IsTerminal;
        if no_color || std::env::var_os("NO_COLOR").is_some() || !std::io::stdout().is_terminal() {
            return ColorMode::Plain;
        }
        match std::env::var("COLORTERM") {
            Ok(c) if c.contains("truecolor") || c.contains("24bit") => ColorMode::Truecolor,
            _ => ColorMode::Palette256,
        }
    }
}

/// The background colour of relevance `r` on a scale where `scale` is the strongest: white at
/// zero, red for positive, blue for negative.
fn rgb(r: f32, scale: f32) -> (u8, u8, u8) {
    let v = if scale > 0.0 {
        (r / scale).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let fade = |x: f32| (255.0 * (1.0 - x.abs())).round() as u8;
    if v >= 0.0 {
        (255, fade(v), fade(v))
    } else {
        (fade(v), fade(v), 255)
    }
}

/// `text` on the background colour of relevance `r` (black text); unchanged in plain mode.
pub(super) fn paint(text: &str, r: f32, scale: f32, mode: ColorMode) -> String {
    let (red, green, blue) = rgb(r, scale);
    match mode {
        ColorMode::Plain => text.to_string(),
        ColorMode::Truecolor => {
            format!("\x1b[48;2;{red};{green};{blue}m\x1b[38;2;0;0;0m{text}\x1b[0m")
        }
        ColorMode::Palette256 => {
            let level = |c: u8| (c as u16 * 5 / 255) as u8;
            let index = 16 + 36 * level(red) + 6 * level(green) + level(blue);
            format!("\x1b[48;5;{index}m\x1b[38;5;16m{text}\x1b[0m")
        }
    }
}

fn scale(e: &Explanation) -> f32 {
    e.relevance.iter().fold(0.0f32, |m, r| m.max(r.abs()))
}

/// The pieces of the text in order: the gap before each token (plain) and the token's span.
/// Tokens without a span in the text (special tokens) show their name.
fn pieces(e: &Explanation) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    for (token, &(start, end)) in e.tokens.iter().zip(&e.spans) {
        let inside = start < end
            && end <= e.text.len()
            && e.text.is_char_boundary(start)
            && e.text.is_char_boundary(end);
        if inside && start >= at {
            out.push((
                e.text[at..start].to_string(),
                e.text[start..end].to_string(),
            ));
            at = end;
        } else {
            out.push((String::from(" "), format!("[{token}]")));
        }
    }
    out
}

/// One explained text for the terminal, then the explained token, its logit, the bias share
/// and the conservation residual.
pub fn terminal(e: &Explanation, mode: ColorMode) -> String {
    let scale = scale(e);
    let mut line = String::new();
    for ((gap, span), &r) in pieces(e).iter().zip(&e.relevance) {
        line.push_str(gap);
        match mode {
            ColorMode::Plain => line.push_str(&format!("{span}({r:+.3})")),
            _ => line.push_str(&paint(span, r, scale, mode)),
        }
    }
    let share = if e.logit != 0.0 {
        e.bias / e.logit
    } else {
        0.0
    };
    format!(
        "{line}\n  explains next token '{}' (id {}): logit {:.4} = tokens {:.4} + bias {:.4} ({:.0}% of the logit), residual {:.1e}\n",
        e.target_token,
        e.target,
        e.logit,
        e.logit - e.bias - e.residual,
        e.bias,
        100.0 * share,
        e.residual
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One self-contained page (no external resources) with every text as a heatmap, a legend and
/// each token's numbers on hover.
pub fn html_page(explanations: &[Explanation]) -> String {
    let mut body = String::new();
    for (n, e) in explanations.iter().enumerate() {
        let scale = scale(e);
        body.push_str(&format!("<section class=\"text\" id=\"text-{n}\"><p>"));
        for (((gap, span), &r), (token, id)) in pieces(e)
            .iter()
            .zip(&e.relevance)
            .zip(e.tokens.iter().zip(&e.ids))
        {
            let (red, green, blue) = rgb(r, scale);
            body.push_str(&escape(gap));
            body.push_str(&format!(
                "<span class=\"token\" style=\"background: rgb({red},{green},{blue})\" title=\"{} (id {id}): relevance {r:+.4}\" data-relevance=\"{r}\">{}</span>",
                escape(token),
                escape(span)
            ));
        }
        let share = if e.logit != 0.0 {
            e.bias / e.logit
        } else {
            0.0
        };
        body.push_str(&format!(
            "</p><p class=\"numbers\">next token <b>{}</b> (id {}): logit {:.4}, bias {:.4} ({:.0}% of the logit), residual {:.1e}</p></section>\n",
            escape(&e.target_token),
            e.target,
            e.logit,
            e.bias,
            100.0 * share,
            e.residual
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>MambaLRP relevance</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}\n\
         .token {{ padding: 0.1em 0.15em; border-radius: 0.2em; }}\n\
         .numbers {{ color: #444; font-size: 0.9em; }}\n\
         .legend {{ display: flex; align-items: center; gap: 0.5em; }}\n\
         .bar {{ width: 16em; height: 1em; background: linear-gradient(to right, rgb(0,0,255), rgb(255,255,255), rgb(255,0,0)); }}\n\
         </style></head><body>\n<h1>MambaLRP relevance</h1>\n\
         <div class=\"legend\"><span>negative</span><span class=\"bar\"></span><span>positive</span>\
         <span>(each text scaled by its largest |relevance|; hover a token for its numbers)</span></div>\n{body}</body></html>\n"
    )
}

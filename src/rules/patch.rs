//! The patch-embedding rule of image models: how relevance crosses the `Conv` that cuts an
//! image into patch tokens, down to the pixels. The official MambaLRP code uses LRP-gamma
//! (gamma = 0.25) there; `zero` is the plain gradient (LRP-0).
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchRule {
    /// LRP-gamma, sign-aware as the official `ModifiedConv`: positive contributions (to
    /// positive outputs; negative ones to negative outputs) weighted up by `1 + gamma`.
    Gamma(f32),
    /// The plain gradient through the convolution.
    Zero,
}

impl Default for PatchRule {
    fn default() -> Self {
        PatchRule::Gamma(0.25)
    }
}

impl PatchRule {
    /// The gamma, if this rule has one.
    pub fn gamma(self) -> Option<f32> {
        match self {
            PatchRule::Gamma(g) => Some(g),
            PatchRule::Zero => None,
        }
    }
}

impl fmt::Display for PatchRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchRule::Gamma(g) => write!(f, "gamma:{g}"),
            PatchRule::Zero => f.write_str("zero"),
        }
    }
}

impl FromStr for PatchRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "zero" {
            return Ok(PatchRule::Zero);
        }
        let Some(value) = text.strip_prefix("gamma:") else {
            return Err(format!(
                "unknown patch rule '{text}': use gamma:G (G >= 0, e.g. gamma:0.25) or zero"
            ));
        };
        match value.parse::<f32>() {
            Ok(g) if g.is_finite() && g >= 0.0 => Ok(PatchRule::Gamma(g)),
            _ => Err(format!(
                "patch rule gamma:{value}: gamma must be a finite number >= 0"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_rules() {
        assert_eq!(
            "gamma:0.25".parse::<PatchRule>(),
            Ok(PatchRule::Gamma(0.25))
        );
        assert_eq!("zero".parse::<PatchRule>(), Ok(PatchRule::Zero));
        assert_eq!(PatchRule::default().to_string(), "gamma:0.25");
        assert!("gamma:-1".parse::<PatchRule>().is_err());
        assert!("epsilon".parse::<PatchRule>().is_err());
    }
}

//! The concrete metrics behind [`super::ImageScorer`] / [`super::SetMetric`]: ImageReward
//! ([`crate::score::RewardModel`]), CLIP score ([`crate::metrics::ClipScorer`]), FID and
//! Inception Score ([`crate::metrics::InceptionExtractor`]), and the shapes world's attribute
//! checker ([`crate::world::check()`]) for world-grammar prompts.

use super::{ImageScorer, SetMetric};
use crate::engine::Image;
use crate::metrics::{fid, inception_score, ClipScorer, FeatureStats, InceptionExtractor};
use crate::score::{RewardModel, RgbRef};

fn refs<'a>(images: &[&'a Image]) -> Vec<RgbRef<'a>> {
    images.iter().map(|i| RgbRef::from(*i)).collect()
}

/// ImageReward, normalised as the reward bundle says.
pub struct Reward(pub RewardModel);

impl ImageScorer for Reward {
    fn name(&self) -> &str {
        "imagereward"
    }
    fn score(&self, prompt: &str, images: &[&Image]) -> Result<Vec<f64>, String> {
        self.0
            .score(prompt, &refs(images))
            .map(|v| v.into_iter().map(f64::from).collect())
            .map_err(|e| e.to_string())
    }
}

/// CLIP score, 100·max(cos, 0).
pub struct Clip(pub ClipScorer);

impl ImageScorer for Clip {
    fn name(&self) -> &str {
        "clip_score"
    }
    fn score(&self, prompt: &str, images: &[&Image]) -> Result<Vec<f64>, String> {
        self.0
            .score(prompt, &refs(images))
            .map_err(|e| e.to_string())
    }
}

/// FID: of each arm against the reference images when given, and between every pair of arms.
pub struct Fid {
    pub extractor: std::rc::Rc<InceptionExtractor>,
    pub reference: Option<FeatureStats>,
}

impl Fid {
    fn stats(&self, features: &[f32]) -> Result<FeatureStats, String> {
        FeatureStats::from_features(features, self.extractor.manifest().pool_dim)
            .map_err(|e| e.to_string())
    }
}

impl SetMetric for Fid {
    fn name(&self) -> &str {
        "fid"
    }
    fn lower_is_better(&self) -> bool {
        true
    }
    fn features(&self, images: &[&Image]) -> Result<Vec<f32>, String> {
        self.extractor
            .features(&refs(images))
            .map(|f| f.pool)
            .map_err(|e| e.to_string())
    }
    fn arm_value(&self, features: &[f32]) -> Result<Option<f64>, String> {
        match &self.reference {
            Some(r) => Ok(Some(fid(&self.stats(features)?, r))),
            None => Ok(None),
        }
    }
    fn pair_value(&self, a: &[f32], b: &[f32]) -> Result<Option<f64>, String> {
        Ok(Some(fid(&self.stats(a)?, &self.stats(b)?)))
    }
}

/// Inception Score of each arm, 10 splits (fewer when an arm has fewer than 10 images). The
/// extractor runs once for FID and once for IS when both are asked for.
pub struct InceptionScore(pub std::rc::Rc<InceptionExtractor>);

impl SetMetric for InceptionScore {
    fn name(&self) -> &str {
        "inception_score"
    }
    fn lower_is_better(&self) -> bool {
        false
    }
    fn features(&self, images: &[&Image]) -> Result<Vec<f32>, String> {
        self.0
            .features(&refs(images))
            .map(|f| f.logits)
            .map_err(|e| e.to_string())
    }
    fn arm_value(&self, logits: &[f32]) -> Result<Option<f64>, String> {
        let classes = self.0.manifest().classes;
        let splits = (logits.len() / classes.max(1)).clamp(1, 10);
        inception_score(logits, classes, splits)
            .map(|(m, _)| Some(m))
            .map_err(|e| e.to_string())
    }
    fn pair_value(&self, _: &[f32], _: &[f32]) -> Result<Option<f64>, String> {
        Ok(None)
    }
}

/// Which number of the world checker's verdict a [`WorldCheck`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldCheckValue {
    /// `world_check`: the fraction of the prompt's judged attributes the image shows (what
    /// `dpoimg world check` counts per attribute), in [0, 1].
    Fraction,
    /// `world_all_correct`: 1 when every judged attribute is right, else 0.
    AllCorrect,
}

/// The shapes world's attribute checker as a per-image metric. Needs world-grammar prompts:
/// [`check_world_prompts`] refuses others before any image is made. The checker reads the 8-bit
/// image as the PNG stores it, so a value equals `dpoimg world check` on the saved file.
pub struct WorldCheck(pub WorldCheckValue);

impl WorldCheck {
    /// The two world metrics, in report order.
    pub fn both() -> [WorldCheck; 2] {
        [
            WorldCheck(WorldCheckValue::Fraction),
            WorldCheck(WorldCheckValue::AllCorrect),
        ]
    }
}

/// The value of one checker verdict: fraction of judged attributes correct, or all-correct 1/0.
pub fn world_value(r: &crate::world::CheckResult, which: WorldCheckValue) -> f64 {
    match which {
        WorldCheckValue::Fraction => {
            let right = r.attributes.iter().filter(|a| a.1).count();
            right as f64 / r.attributes.len().max(1) as f64
        }
        WorldCheckValue::AllCorrect => f64::from(u8::from(r.all_correct)),
    }
}

impl ImageScorer for WorldCheck {
    fn name(&self) -> &str {
        match self.0 {
            WorldCheckValue::Fraction => "world_check",
            WorldCheckValue::AllCorrect => "world_all_correct",
        }
    }
    fn score(&self, prompt: &str, images: &[&Image]) -> Result<Vec<f64>, String> {
        let scene = crate::world::Scene::parse(prompt).map_err(|e| e.to_string())?;
        images
            .iter()
            .map(|img| {
                let rgb = crate::data::RgbImage {
                    width: img.width,
                    height: img.height,
                    data: img.rgb.clone(),
                };
                crate::world::check(&scene, &rgb)
                    .map(|r| world_value(&r, self.0))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// Every prompt parses with the world grammar; else the first that does not, with its number
/// (1-based, in the prompt file's order of prompts) and the parser's explanation.
pub fn check_world_prompts(prompts: &[super::PromptEntry]) -> Result<(), String> {
    for (i, p) in prompts.iter().enumerate() {
        crate::world::Scene::parse(&p.prompt).map_err(|e| {
            format!(
                "prompt {} is not a shapes-world prompt: {e} (--world-check judges world-grammar prompts only; see `dpoimg world prompts`)",
                i + 1
            )
        })?;
    }
    Ok(())
}

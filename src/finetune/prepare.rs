//! Before the first step: read the preference pairs, key every image and prompt, and make sure
//! the encode-once cache holds them all (opening the ONNX encoders only when something is
//! missing).

use std::collections::{BTreeMap, BTreeSet};

use super::cache::{EncodeCache, LatentSpec};
use super::{DpoConfig, Event, FinetuneError, LatentChoice};
use crate::bundle::{Bundle, Verify};
use crate::data::{ImageSize, LoadOptions, OnBadRow, PromptFilter};
use crate::engine::{Engine, EngineOptions};
use crate::scheduler::SchedulerConfig;
use crate::CancelToken;

/// Cache keys of one training pair.
#[derive(Debug, Clone)]
pub(crate) struct PairKeys {
    pub chosen: String,
    pub rejected: String,
    pub text: String,
}

/// Everything the training loop needs besides the model.
pub(crate) struct Prepared {
    pub bundle: Bundle,
    pub scheduler: SchedulerConfig,
    pub cache: EncodeCache,
    pub pairs: Vec<PairKeys>,
    /// Key of the empty prompt (caption dropout).
    pub empty_text: String,
    /// sha256 over the pairs (prompt and both image hashes, in order): the data set's identity
    /// in the adapter's provenance.
    pub data_hash: String,
    pub data_format: String,
}

pub(crate) fn prepare(
    cfg: &DpoConfig,
    on_event: &mut dyn FnMut(&Event),
    cancel: &CancelToken,
) -> Result<Prepared, FinetuneError> {
    let bundle =
        Bundle::open(&cfg.bundle, Verify::Full).map_err(crate::engine::EngineError::from)?;
    let m = bundle.manifest();
    let scheduler: SchedulerConfig =
        serde_json::from_value(m.scheduler.clone()).map_err(|e| FinetuneError::Io {
            path: bundle.dir().join("bundle.json"),
            message: format!("scheduler: {e}"),
        })?;
    scheduler
        .validate()
        .map_err(crate::engine::EngineError::from)?;
    let size = ImageSize::new(m.defaults.width, m.defaults.height);

    let mut filters = Vec::new();
    for t in &cfg.prompt_contains {
        filters.push(PromptFilter::contains(t));
    }
    if let Some(r) = &cfg.prompt_regex {
        filters.push(PromptFilter::regex(r)?);
    }
    let opts = LoadOptions {
        split: cfg.split.clone(),
        prompt_filters: filters,
        on_bad_row: if cfg.skip_bad_rows {
            OnBadRow::Skip
        } else {
            OnBadRow::Error
        },
        check_images: false,
    };
    let (mut pairs, report) = crate::data::load_pairs(&cfg.data, &opts)?;
    if let Some(n) = cfg.max_pairs {
        pairs.truncate(n);
    }
    on_event(&Event::Loaded {
        pairs: pairs.len(),
        rows_read: report.rows_read,
        skipped: report
            .skipped
            .iter()
            .map(|(r, n)| (format!("{r:?}"), *n))
            .collect(),
    });
    if pairs.is_empty() {
        return Err(FinetuneError::Data(crate::data::DataError::Options {
            message: format!(
                "{} gave no preference pairs ({report}). Fix: check the path, split and prompt filters",
                cfg.data.display()
            ),
        }));
    }

    let cache_root = cfg
        .cache_dir
        .clone()
        .unwrap_or_else(super::cache::default_dir);
    let cache = EncodeCache::open(&cache_root)?;
    let bh = bundle.hash().to_string();
    let spec_for = |content: &str| match cfg.latents {
        LatentChoice::Mean => LatentSpec::Mean,
        LatentChoice::Sample => LatentSpec::Sample {
            seed: super::order::rng_for(cfg.seed, 0x6c61_7465_6e74, 0)
                .random_u64()
                .wrapping_add(u64::from_str_radix(&content[..16], 16).unwrap_or(0)),
        },
    };

    let mut keys = Vec::with_capacity(pairs.len());
    let mut images = Vec::new();
    let mut seen = BTreeSet::new();
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    let mut data_lines = String::new();
    for (i, p) in pairs.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(FinetuneError::Cancelled);
        }
        let hw = p.chosen.content_hash()?;
        let hl = p.rejected.content_hash()?;
        let kw = EncodeCache::latent_key(&bh, &hw, size, spec_for(&hw));
        let kl = EncodeCache::latent_key(&bh, &hl, size, spec_for(&hl));
        for (k, src, h) in [(&kw, &p.chosen, &hw), (&kl, &p.rejected, &hl)] {
            if seen.insert(k.clone()) {
                images.push((k.clone(), src, spec_for(h)));
            }
        }
        let kt = EncodeCache::text_key(&bh, &p.prompt);
        texts.insert(kt.clone(), p.prompt.clone());
        data_lines.push_str(&format!("{}\t{hw}\t{hl}\n", p.prompt));
        keys.push(PairKeys {
            chosen: kw,
            rejected: kl,
            text: kt,
        });
        if (i + 1) % 256 == 0 {
            on_event(&Event::Encoding {
                done: 0,
                total: images.len(),
            });
        }
    }
    let empty_text = EncodeCache::text_key(&bh, "");
    texts.insert(empty_text.clone(), String::new());

    let missing = images.iter().any(|(k, _, _)| !cache.has_latent(k))
        || texts.keys().any(|k| !cache.has_text(k));
    let (mut new_images, mut new_prompts) = (0, 0);
    if missing {
        // Encoders only; the ORT UNet session is opened by Engine::open but freed right after.
        let engine = Engine::open(
            bundle.dir(),
            &EngineOptions {
                verify: Verify::Quick,
                session: crate::runtime::SessionOptions {
                    intra_threads: cfg.threads,
                    ..Default::default()
                },
                ..Default::default()
            },
        )?;
        let total = images.len();
        new_images = cache.fill_latents(&engine, size, &images, cancel, &mut |done, t| {
            on_event(&Event::Encoding {
                done: total - t + done,
                total,
            })
        })?;
        let text_items: Vec<(String, &str)> =
            texts.iter().map(|(k, p)| (k.clone(), p.as_str())).collect();
        new_prompts = cache.fill_texts(&engine, &text_items, cancel)?;
    }
    on_event(&Event::Encoding {
        done: images.len(),
        total: images.len(),
    });
    on_event(&Event::Cached {
        images: images.len(),
        prompts: texts.len(),
        new_images,
        new_prompts,
    });
    Ok(Prepared {
        bundle,
        scheduler,
        cache,
        pairs: keys,
        empty_text,
        data_hash: crate::hash::sha256_hex(data_lines.as_bytes()),
        data_format: format!("{:?}", report.format),
    })
}

//! The diffusers `UNet2DConditionModel` config (`unet_config.json`), reduced to what the SD-1.x/2.x
//! family uses, with per-block lists expanded. Options outside that family are refused by name
//! rather than silently ignored: a trainer that computed a different function than the ONNX UNet
//! would train the wrong model.

use super::super::TrainError;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One down or up block's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    /// `CrossAttn*Block2D` (resnet + transformer per layer) or plain `*Block2D`.
    pub cross_attention: bool,
    /// Resnets in the block (up blocks have `layers_per_block + 1`).
    pub layers: usize,
    /// Transformer blocks per `Transformer2DModel`.
    pub transformer_depth: usize,
    pub heads: usize,
    pub cross_attention_dim: usize,
    pub out_channels: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down: Vec<BlockSpec>,
    /// `UNetMidBlock2DCrossAttn` (resnet, then transformer + resnet); `heads` etc. of the last level.
    pub mid: BlockSpec,
    pub up: Vec<BlockSpec>,
    pub norm_num_groups: usize,
    pub norm_eps: f32,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    /// Width of the sinusoids (= `block_out_channels[0]`).
    pub timestep_input_dim: usize,
    /// Width of the time embedding (`time_embedding_dim` or 4 × `block_out_channels[0]`).
    pub time_embed_dim: usize,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f32,
    pub resnet_out_scale_factor: f32,
    /// `2·x − 1` on the input first (diffusers' `center_input_sample`).
    pub center_input_sample: bool,
    /// Informational: SD-2's linear proj_in/out (computed identically to SD-1's 1×1 convolutions).
    pub use_linear_projection: bool,
    /// Informational: a no-op for an f32 trainer.
    pub upcast_attention: bool,
}

struct Reader<'a> {
    v: &'a Value,
    path: PathBuf,
}

impl Reader<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> TrainError {
        TrainError::Config {
            path: self.path.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.v.get(field).filter(|v| !v.is_null())
    }

    fn usize_val(&self, field: &str, v: &Value) -> Result<usize, TrainError> {
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.err(field, format!("must be a non-negative integer, got {v}")))
    }

    fn usize_or(&self, field: &str, default: usize) -> Result<usize, TrainError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => self.usize_val(field, v),
        }
    }

    fn usize_req(&self, field: &str) -> Result<usize, TrainError> {
        let v = self
            .get(field)
            .ok_or_else(|| self.err(field, "is missing"))?;
        self.usize_val(field, v)
    }

    fn f32_or(&self, field: &str, default: f32) -> Result<f32, TrainError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| self.err(field, format!("must be a number, got {v}"))),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool, TrainError> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, format!("must be true or false, got {v}"))),
        }
    }

    fn strings(&self, field: &str) -> Result<Vec<String>, TrainError> {
        let v = self
            .get(field)
            .ok_or_else(|| self.err(field, "is missing"))?;
        v.as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(String::from)).collect())
            .ok_or_else(|| self.err(field, "must be a list of block type names"))
    }

    /// An integer or a list of `n` integers (diffusers' per-block options).
    fn per_block(
        &self,
        field: &str,
        n: usize,
        default: Option<usize>,
    ) -> Result<Vec<usize>, TrainError> {
        match self.get(field) {
            None => default
                .map(|d| vec![d; n])
                .ok_or_else(|| self.err(field, "is missing")),
            Some(Value::Array(a)) => {
                if a.len() != n {
                    return Err(self.err(field, format!("has {} entries for {n} blocks", a.len())));
                }
                a.iter().map(|v| self.usize_val(field, v)).collect()
            }
            Some(v) => Ok(vec![self.usize_val(field, v)?; n]),
        }
    }

    /// Refuses a field whose value is set to anything but the SD default.
    fn require(
        &self,
        field: &str,
        ok: impl Fn(&Value) -> bool,
        what: &str,
    ) -> Result<(), TrainError> {
        match self.v.get(field) {
            Some(v) if !ok(v) => Err(self.err(
                field,
                format!("= {v} is not supported by the trainer (SD-1.x/2.x use {what})"),
            )),
            _ => Ok(()),
        }
    }
}

impl UNetConfig {
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            message: format!("invalid JSON: {e}"),
        })?;
        Self::from_json(&v, path)
    }

    /// `path` is only used in error messages.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self, TrainError> {
        let r = Reader {
            v,
            path: path.to_path_buf(),
        };
        let is_null = |v: &Value| v.is_null();
        let is_false = |v: &Value| v.is_null() || v == &Value::Bool(false);
        for f in [
            "class_embed_type",
            "addition_embed_type",
            "encoder_hid_dim",
            "encoder_hid_dim_type",
            "time_cond_proj_dim",
            "timestep_post_act",
            "time_embedding_act_fn",
            "cross_attention_norm",
            "reverse_transformer_layers_per_block",
            "num_class_embeds",
        ] {
            r.require(f, is_null, "null")?;
        }
        for f in [
            "dual_cross_attention",
            "resnet_skip_time_act",
            "class_embeddings_concat",
            "mid_block_only_cross_attention",
        ] {
            r.require(f, is_false, "false")?;
        }
        r.require(
            "only_cross_attention",
            |v| is_false(v) || v.as_array().is_some_and(|a| a.iter().all(is_false)),
            "false",
        )?;
        r.require("act_fn", |v| v == "silu", "\"silu\"")?;
        r.require(
            "time_embedding_type",
            |v| v == "positional",
            "\"positional\"",
        )?;
        r.require("resnet_time_scale_shift", |v| v == "default", "\"default\"")?;
        r.require("attention_type", |v| v == "default", "\"default\"")?;
        r.require(
            "mid_block_type",
            |v| v == "UNetMidBlock2DCrossAttn",
            "\"UNetMidBlock2DCrossAttn\"",
        )?;

        let block_out_channels = match r.get("block_out_channels") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| r.usize_val("block_out_channels", v))
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(r.err("block_out_channels", "must be a non-empty list")),
        };
        let nb = block_out_channels.len();
        let down_types = r.strings("down_block_types")?;
        let up_types = r.strings("up_block_types")?;
        if down_types.len() != nb || up_types.len() != nb {
            return Err(r.err(
                "down_block_types",
                format!(
                    "{} down and {} up blocks for {nb} block_out_channels",
                    down_types.len(),
                    up_types.len()
                ),
            ));
        }
        let kind = |field: &str, t: &str, cross: &str, plain: &str| -> Result<bool, TrainError> {
            if t == cross {
                Ok(true)
            } else if t == plain {
                Ok(false)
            } else {
                Err(r.err(
                    field,
                    format!("block type {t:?} is not supported ({cross} or {plain})"),
                ))
            }
        };
        let layers = r.per_block("layers_per_block", nb, Some(2))?;
        let depth = match r.get("transformer_layers_per_block") {
            Some(Value::Array(a)) if a.iter().any(|x| x.is_array()) => {
                return Err(r.err(
                    "transformer_layers_per_block",
                    "nested per-layer lists (SDXL-style asymmetric UNets) are not supported",
                ))
            }
            _ => r.per_block("transformer_layers_per_block", nb, Some(1))?,
        };
        // diffusers' naming quirk: `attention_head_dim` holds the number of heads unless
        // `num_attention_heads` is given.
        let heads = match r.get("num_attention_heads") {
            Some(_) => r.per_block("num_attention_heads", nb, None)?,
            None => r.per_block("attention_head_dim", nb, Some(8))?,
        };
        let xdim = r.per_block("cross_attention_dim", nb, Some(1280))?;
        let groups = r.usize_or("norm_num_groups", 32)?;
        if groups == 0 {
            return Err(r.err("norm_num_groups", "null (no output norm) is not supported"));
        }
        for (i, &c) in block_out_channels.iter().enumerate() {
            if heads[i] == 0 || c % heads[i] != 0 {
                return Err(r.err(
                    "attention_head_dim",
                    format!(
                        "{} heads do not divide the {c} channels of block {i}",
                        heads[i]
                    ),
                ));
            }
            if c % groups != 0 {
                return Err(r.err(
                    "norm_num_groups",
                    format!("{groups} groups do not divide the {c} channels of block {i}"),
                ));
            }
        }
        let mut down = Vec::with_capacity(nb);
        for i in 0..nb {
            down.push(BlockSpec {
                cross_attention: kind(
                    "down_block_types",
                    &down_types[i],
                    "CrossAttnDownBlock2D",
                    "DownBlock2D",
                )?,
                layers: layers[i],
                transformer_depth: depth[i],
                heads: heads[i],
                cross_attention_dim: xdim[i],
                out_channels: block_out_channels[i],
            });
        }
        let mut up = Vec::with_capacity(nb);
        for (i, t) in up_types.iter().enumerate() {
            let j = nb - 1 - i;
            up.push(BlockSpec {
                cross_attention: kind("up_block_types", t, "CrossAttnUpBlock2D", "UpBlock2D")?,
                layers: layers[j] + 1,
                transformer_depth: depth[j],
                heads: heads[j],
                cross_attention_dim: xdim[j],
                out_channels: block_out_channels[j],
            });
        }
        let mid = BlockSpec {
            cross_attention: true,
            layers: 1,
            transformer_depth: depth[nb - 1],
            heads: heads[nb - 1],
            cross_attention_dim: xdim[nb - 1],
            out_channels: block_out_channels[nb - 1],
        };
        let odd = |field: &str| -> Result<usize, TrainError> {
            let k = r.usize_or(field, 3)?;
            if k % 2 == 0 {
                return Err(r.err(field, format!("{k} must be odd")));
            }
            Ok(k)
        };
        let b0 = block_out_channels[0];
        Ok(UNetConfig {
            in_channels: r.usize_req("in_channels")?,
            out_channels: r.usize_req("out_channels")?,
            down,
            mid,
            up,
            norm_num_groups: groups,
            norm_eps: r.f32_or("norm_eps", 1e-5)?,
            flip_sin_to_cos: r.bool_or("flip_sin_to_cos", true)?,
            freq_shift: r.f32_or("freq_shift", 0.0)?,
            timestep_input_dim: b0,
            time_embed_dim: r.usize_or("time_embedding_dim", 4 * b0)?,
            conv_in_kernel: odd("conv_in_kernel")?,
            conv_out_kernel: odd("conv_out_kernel")?,
            downsample_padding: r.usize_or("downsample_padding", 1)?,
            mid_block_scale_factor: r.f32_or("mid_block_scale_factor", 1.0)?,
            resnet_out_scale_factor: r.f32_or("resnet_out_scale_factor", 1.0)?,
            center_input_sample: r.bool_or("center_input_sample", false)?,
            use_linear_projection: r.bool_or("use_linear_projection", false)?,
            upcast_attention: r.bool_or("upcast_attention", false)?,
            block_out_channels,
        })
    }

    /// Number of 2× down-samplings (one per block but the last).
    pub fn num_downsamplers(&self) -> usize {
        self.block_out_channels.len() - 1
    }
}

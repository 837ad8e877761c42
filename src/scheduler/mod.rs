//! Noise schedulers (samplers) that reproduce Hugging Face diffusers 0.42 numerically.
//!
//! Every sampler is a port of the math of one diffusers class, run through the same float32
//! operations in the same order, so that timesteps, sigmas and every step's output agree with
//! `Cls.from_config(scheduler_config)` + `set_timesteps(steps)` + `step(...)` to well within
//! 1e-5 relative (in practice to the last bit or two):
//!
//! | [`SamplerKind`] | diffusers class | noise drawn |
//! |---|---|---|
//! | `ddim` | `DDIMScheduler` (`eta`) | every step when `eta > 0` |
//! | `ddpm` | `DDPMScheduler` | every step whose timestep is `> 0` |
//! | `euler` | `EulerDiscreteScheduler` | never (`s_churn = 0`) |
//! | `euler-a` | `EulerAncestralDiscreteScheduler` | every step, including the last |
//! | `dpmpp-2m` | `DPMSolverMultistepScheduler` | never (`dpmsolver++`) |
//! | `dpmpp-2m-karras` | same, `use_karras_sigmas=True` | never |
//!
//! Tensors are flat `&[f32]` slices (NCHW); all images of a batch share the step, so every
//! update is elementwise. Tables are computed in f32 exactly as diffusers (see `scheduler/tables.rs`) and
//! exposed as f64 holding those f32 values.
//!
//! Usage (the diffusers denoising loop):
//! ```
//! use dpoimg::scheduler::{build, SamplerKind, SamplerOptions, SchedulerConfig};
//! let cfg = SchedulerConfig::from_json_str(r#"{"beta_schedule": "scaled_linear",
//!     "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}"#).unwrap();
//! let mut sched = build(&cfg, &SamplerOptions::new(SamplerKind::EulerAncestral), 20).unwrap();
//! let mut rng = dpoimg::rng::TorchRng::new(42);
//! let mut latents = rng.randn(4 * 8 * 8);
//! let s0 = sched.init_noise_sigma() as f32;
//! latents.iter_mut().for_each(|x| *x *= s0);
//! for i in 0..sched.timesteps().len() {
//!     let mut input = latents.clone();
//!     sched.scale_model_input(&mut input, i);
//!     let eps = vec![0.0f32; input.len()]; // unet(input, sched.timesteps()[i] as f32, ...)
//!     sched.step(&eps, i, &mut latents, &mut rng).unwrap();
//! }
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod ddim;
mod ddpm;
mod dpm_solver;
mod euler;
mod euler_ancestral;
pub(crate) mod tables;

/// Errors of scheduler configuration and stepping. Messages name the offending field and say
/// how to fix it.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum SchedulerError {
    /// `steps` is 0 or larger than the number of training timesteps.
    #[error(
        "invalid number of steps {steps}: it must be between 1 and num_train_timesteps ({max}); \
         choose a step count in that range"
    )]
    InvalidSteps { steps: usize, max: usize },
    /// A sampler name that is not one of [`SamplerKind::NAMES`].
    #[error("unknown sampler '{0}': valid samplers are ddim, ddpm, euler, euler-a, dpmpp-2m, dpmpp-2m-karras")]
    UnknownSampler(String),
    /// A string-valued field holds a value that diffusers does not know either.
    #[error("unknown {field} '{value}': valid values are {valid}")]
    UnknownValue {
        field: &'static str,
        value: String,
        valid: &'static str,
    },
    /// A numeric field is NaN, infinite, negative or out of its range, or has the wrong type.
    #[error("invalid scheduler config field `{field}` = {value}: {reason}")]
    InvalidValue {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// `trained_betas` does not have `num_train_timesteps` entries.
    #[error(
        "trained_betas has {got} entries but num_train_timesteps is {expected}; \
         give exactly one beta per training timestep (or remove trained_betas)"
    )]
    TrainedBetasLength { expected: usize, got: usize },
    /// A valid diffusers option this port does not implement for the chosen sampler.
    #[error("{sampler} does not support {field} = {value}: {hint}")]
    Unsupported {
        sampler: &'static str,
        field: &'static str,
        value: String,
        hint: &'static str,
    },
    /// `model_output`, `sample` or the noise buffer disagree in length.
    #[error("length mismatch: {what} has {got} elements but the sample has {expected}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// `step_index` is not an index into `timesteps()`.
    #[error("step_index {index} is out of range: this schedule has {steps} steps (valid indices 0..{steps})")]
    StepIndexOutOfRange { index: usize, steps: usize },
    /// The scheduler config JSON could not be parsed.
    #[error("scheduler config is not valid JSON: {0}")]
    Json(String),
}

// ---------------------------------------------------------------------------------------------
// Enumerations
// ---------------------------------------------------------------------------------------------

/// The samplers this crate implements (one diffusers scheduler class each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `DDIMScheduler`; stochastic when `eta > 0`.
    Ddim,
    /// `DDPMScheduler` (ancestral, fresh noise every step with `t > 0`).
    Ddpm,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` (DPM-Solver++ 2M by default).
    DpmPp2m,
    /// `DPMSolverMultistepScheduler` with `use_karras_sigmas=True`.
    DpmPp2mKarras,
}

impl SamplerKind {
    /// The accepted names, in the order of the enum.
    pub const NAMES: [&'static str; 6] = [
        "ddim",
        "ddpm",
        "euler",
        "euler-a",
        "dpmpp-2m",
        "dpmpp-2m-karras",
    ];

    /// All samplers, in the order of [`Self::NAMES`].
    pub const ALL: [SamplerKind; 6] = [
        SamplerKind::Ddim,
        SamplerKind::Ddpm,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::DpmPp2m,
        SamplerKind::DpmPp2mKarras,
    ];

    /// The canonical name (`"euler-a"`, ...).
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The diffusers class this sampler reproduces.
    pub fn diffusers_class(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "DDIMScheduler",
            SamplerKind::Ddpm => "DDPMScheduler",
            SamplerKind::Euler => "EulerDiscreteScheduler",
            SamplerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SamplerKind::DpmPp2m | SamplerKind::DpmPp2mKarras => "DPMSolverMultistepScheduler",
        }
    }

    /// The `timestep_spacing` default of the diffusers class (used when the config has none).
    pub fn default_spacing(self) -> TimestepSpacing {
        match self {
            SamplerKind::Ddim | SamplerKind::Ddpm => TimestepSpacing::Leading,
            _ => TimestepSpacing::Linspace,
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = SchedulerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(t))
            .map(|i| Self::ALL[i])
            .ok_or_else(|| SchedulerError::UnknownSampler(s.to_string()))
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $field:literal, $valid:literal, { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// The diffusers spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = SchedulerError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(SchedulerError::UnknownValue {
                        field: $field,
                        value: s.to_string(),
                        valid: $valid,
                    }),
                }
            }
        }
    };
}

string_enum!(
    /// How inference timesteps are spread over the training timesteps (Lin et al. 2023, Table 2).
    /// Each diffusers class computes these slightly differently; see each sampler's docs.
    TimestepSpacing, "timestep_spacing", "leading, trailing, linspace", {
        /// `arange(steps) * (N // steps) + steps_offset`, descending.
        Leading = "leading",
        /// `round(arange(N, 0, -N / steps)) - 1`.
        Trailing = "trailing",
        /// `linspace(0, N - 1, steps)`, descending.
        Linspace = "linspace",
    }
);

string_enum!(
    /// What the model predicts.
    PredictionType, "prediction_type", "epsilon, v_prediction, sample", {
        /// The added noise (SD 1.x, SD 2 base).
        Epsilon = "epsilon",
        /// `v = sqrt(a) * eps - sqrt(1 - a) * x0` (SD 2 768-v).
        VPrediction = "v_prediction",
        /// The clean sample `x0` directly.
        Sample = "sample",
    }
);

string_enum!(
    /// How the training betas are generated.
    BetaSchedule, "beta_schedule", "linear, scaled_linear, squaredcos_cap_v2, laplace (ddpm only), sigmoid (ddpm only)", {
        /// `linspace(beta_start, beta_end, N)`.
        Linear = "linear",
        /// `linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2` (Stable Diffusion).
        ScaledLinear = "scaled_linear",
        /// Nichol & Dhariwal cosine schedule, betas capped at 0.999.
        SquaredcosCapV2 = "squaredcos_cap_v2",
        /// Laplace-SNR schedule (diffusers' `DDPMScheduler` only).
        Laplace = "laplace",
        /// `sigmoid(linspace(-6, 6, N)) * (beta_end - beta_start) + beta_start` (`DDPMScheduler` only).
        Sigmoid = "sigmoid",
    }
);

string_enum!(
    /// DDPM posterior variance choice (`variance_type`).
    VarianceType, "variance_type", "fixed_small, fixed_small_log, fixed_large, fixed_large_log, learned, learned_range", {
        /// The posterior variance `beta~_t`.
        FixedSmall = "fixed_small",
        /// `beta~_t`, through `exp(0.5 * log(.))`.
        FixedSmallLog = "fixed_small_log",
        /// `beta_t`.
        FixedLarge = "fixed_large",
        /// `log(beta_t)` (diffusers takes sqrt(log(beta_t)) of it: NaN; rejected).
        FixedLargeLog = "fixed_large_log",
        /// Predicted by the model (needs twice the channels).
        Learned = "learned",
        /// Interpolated by the model (needs twice the channels).
        LearnedRange = "learned_range",
    }
);

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// A diffusers `scheduler_config.json`, with diffusers' defaults for missing keys.
///
/// Deserialize it from the JSON object (unknown keys such as `_class_name` or `skip_prk_steps`
/// are ignored, `null` means "default"). Prefer [`SchedulerConfig::from_json_str`] for text
/// written by diffusers: Python's `json` writes `-Infinity` (the default `lambda_min_clipped`)
/// and `NaN`, which strict JSON parsers, serde_json included, reject.
///
/// Fields shared by several classes have the same default in all of them, except
/// `timestep_spacing` (class-dependent, hence `Option`) and `variance_type` (DDPM: `fixed_small`,
/// DPM-Solver: none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct SchedulerConfig {
    /// Number of training timesteps `N` (1000).
    pub num_train_timesteps: usize,
    /// First beta for `linear`/`scaled_linear`/`sigmoid` (0.0001).
    pub beta_start: f64,
    /// Last beta (0.02).
    pub beta_end: f64,
    /// `linear` | `scaled_linear` | `squaredcos_cap_v2` (`linear`); see [`BetaSchedule`].
    pub beta_schedule: String,
    /// Explicit betas, one per training timestep; overrides the schedule.
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon` | `v_prediction` | `sample` (`epsilon`).
    pub prediction_type: String,
    /// Added to `leading` timesteps (0; SD 1.x uses 1).
    pub steps_offset: usize,
    /// DDIM: whether the "previous" alpha of the last step is 1 (true) or `alphas_cumprod[0]`.
    pub set_alpha_to_one: bool,
    /// `leading` | `trailing` | `linspace`; `None` uses the class default
    /// ([`SamplerKind::default_spacing`]).
    pub timestep_spacing: Option<String>,
    /// DDIM/DDPM: clamp the predicted `x0` to `[-clip_sample_range, clip_sample_range]` (true).
    pub clip_sample: bool,
    /// (1.0)
    pub clip_sample_range: f64,
    /// Dynamic thresholding (false; not implemented: it is meant for pixel-space models).
    pub thresholding: bool,
    /// DDPM: `fixed_small` (default), `fixed_small_log`, `fixed_large`; DPM: must be unset.
    pub variance_type: Option<String>,
    /// Rescale betas to zero terminal SNR (false).
    pub rescale_betas_zero_snr: bool,
    /// Euler / DPM-Solver: Karras sigmas (false).
    pub use_karras_sigmas: bool,
    /// Euler / DPM-Solver: exponential sigmas (false; not implemented).
    pub use_exponential_sigmas: bool,
    /// Euler / DPM-Solver: beta sigmas (false; not implemented).
    pub use_beta_sigmas: bool,
    /// DPM-Solver: Lu lambdas (false; not implemented).
    pub use_lu_lambdas: bool,
    /// DPM-Solver: flow-matching sigmas (false; not implemented).
    pub use_flow_sigmas: bool,
    /// Euler: `linear` (default) or `log_linear` (not implemented).
    pub interpolation_type: String,
    /// Euler: `discrete` (default) or `continuous` (timesteps `0.25 ln sigma` with v-prediction).
    pub timestep_type: String,
    /// Euler / DPM-Solver: final sigma `zero` (default) or `sigma_min`.
    pub final_sigmas_type: String,
    /// Karras range override (used by Euler and DPM-Solver whenever present in the config).
    pub sigma_min: Option<f64>,
    /// Karras range override.
    pub sigma_max: Option<f64>,
    /// DPM-Solver order 1, 2 (default) or 3.
    pub solver_order: usize,
    /// DPM-Solver: `dpmsolver++` (default; `deis` is mapped to it as diffusers does).
    pub algorithm_type: String,
    /// DPM-Solver second-order rule: `midpoint` (default) or `heun` (`logrho`, `bh1`, `bh2` map to
    /// `midpoint` as in diffusers).
    pub solver_type: String,
    /// DPM-Solver: lower the order on the last steps when there are fewer than 15 (true).
    pub lower_order_final: bool,
    /// DPM-Solver: Euler (first-order) final step (false).
    pub euler_at_final: bool,
    /// DPM-Solver: cut timesteps whose lambda is below this (-inf: no cut).
    pub lambda_min_clipped: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            prediction_type: "epsilon".into(),
            steps_offset: 0,
            set_alpha_to_one: true,
            timestep_spacing: None,
            clip_sample: true,
            clip_sample_range: 1.0,
            thresholding: false,
            variance_type: None,
            rescale_betas_zero_snr: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            interpolation_type: "linear".into(),
            timestep_type: "discrete".into(),
            final_sigmas_type: "zero".into(),
            sigma_min: None,
            sigma_max: None,
            solver_order: 2,
            algorithm_type: "dpmsolver++".into(),
            solver_type: "midpoint".into(),
            lower_order_final: true,
            euler_at_final: false,
            lambda_min_clipped: f64::NEG_INFINITY,
        }
    }
}

fn type_error(field: &'static str, v: &Value, expected: &str) -> SchedulerError {
    SchedulerError::InvalidValue {
        field,
        value: v.to_string(),
        reason: format!("expected {expected}"),
    }
}

/// A number, or one of the strings `NaN` / `Infinity` / `-Infinity` (how
/// [`SchedulerConfig::from_json_str`] carries Python's non-standard tokens).
fn value_f64(field: &'static str, v: &Value) -> Result<f64, SchedulerError> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| type_error(field, v, "a number")),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" | "inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            _ => Err(type_error(field, v, "a number")),
        },
        _ => Err(type_error(field, v, "a number")),
    }
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn f64(&self, field: &'static str, default: f64) -> Result<f64, SchedulerError> {
        self.get(field).map_or(Ok(default), |v| value_f64(field, v))
    }
    fn opt_f64(&self, field: &'static str) -> Result<Option<f64>, SchedulerError> {
        self.get(field).map(|v| value_f64(field, v)).transpose()
    }
    fn usize(&self, field: &'static str, default: usize) -> Result<usize, SchedulerError> {
        let Some(v) = self.get(field) else {
            return Ok(default);
        };
        if let Some(u) = v.as_u64() {
            return Ok(u as usize);
        }
        // Python configs sometimes hold integral floats (e.g. 1000.0).
        match v.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64 => Ok(f as usize),
            _ => Err(type_error(field, v, "a non-negative integer")),
        }
    }
    fn bool(&self, field: &'static str, default: bool) -> Result<bool, SchedulerError> {
        self.get(field).map_or(Ok(default), |v| {
            v.as_bool()
                .ok_or_else(|| type_error(field, v, "true or false"))
        })
    }
    fn string(&self, field: &'static str, default: &str) -> Result<String, SchedulerError> {
        Ok(self
            .opt_string(field)?
            .unwrap_or_else(|| default.to_string()))
    }
    fn opt_string(&self, field: &'static str) -> Result<Option<String>, SchedulerError> {
        self.get(field)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| type_error(field, v, "a string"))
            })
            .transpose()
    }
    fn opt_vec_f64(&self, field: &'static str) -> Result<Option<Vec<f64>>, SchedulerError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| type_error(field, v, "a list of numbers"))?;
        arr.iter()
            .map(|x| value_f64(field, x))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

impl TryFrom<Value> for SchedulerConfig {
    type Error = SchedulerError;
    fn try_from(value: Value) -> Result<Self, Self::Error> {
        let Value::Object(map) = value else {
            return Err(SchedulerError::Json(
                "the scheduler config must be a JSON object".into(),
            ));
        };
        let f = Fields(&map);
        let d = SchedulerConfig::default();
        Ok(SchedulerConfig {
            num_train_timesteps: f.usize("num_train_timesteps", d.num_train_timesteps)?,
            beta_start: f.f64("beta_start", d.beta_start)?,
            beta_end: f.f64("beta_end", d.beta_end)?,
            beta_schedule: f.string("beta_schedule", &d.beta_schedule)?,
            trained_betas: f.opt_vec_f64("trained_betas")?,
            prediction_type: f.string("prediction_type", &d.prediction_type)?,
            steps_offset: f.usize("steps_offset", d.steps_offset)?,
            set_alpha_to_one: f.bool("set_alpha_to_one", d.set_alpha_to_one)?,
            timestep_spacing: f.opt_string("timestep_spacing")?,
            clip_sample: f.bool("clip_sample", d.clip_sample)?,
            clip_sample_range: f.f64("clip_sample_range", d.clip_sample_range)?,
            thresholding: f.bool("thresholding", d.thresholding)?,
            variance_type: f.opt_string("variance_type")?,
            rescale_betas_zero_snr: f.bool("rescale_betas_zero_snr", d.rescale_betas_zero_snr)?,
            use_karras_sigmas: f.bool("use_karras_sigmas", d.use_karras_sigmas)?,
            use_exponential_sigmas: f.bool("use_exponential_sigmas", d.use_exponential_sigmas)?,
            use_beta_sigmas: f.bool("use_beta_sigmas", d.use_beta_sigmas)?,
            use_lu_lambdas: f.bool("use_lu_lambdas", d.use_lu_lambdas)?,
            use_flow_sigmas: f.bool("use_flow_sigmas", d.use_flow_sigmas)?,
            interpolation_type: f.string("interpolation_type", &d.interpolation_type)?,
            timestep_type: f.string("timestep_type", &d.timestep_type)?,
            final_sigmas_type: f.string("final_sigmas_type", &d.final_sigmas_type)?,
            sigma_min: f.opt_f64("sigma_min")?,
            sigma_max: f.opt_f64("sigma_max")?,
            solver_order: f.usize("solver_order", d.solver_order)?,
            algorithm_type: f.string("algorithm_type", &d.algorithm_type)?,
            solver_type: f.string("solver_type", &d.solver_type)?,
            lower_order_final: f.bool("lower_order_final", d.lower_order_final)?,
            euler_at_final: f.bool("euler_at_final", d.euler_at_final)?,
            lambda_min_clipped: f.f64("lambda_min_clipped", d.lambda_min_clipped)?,
        })
    }
}

/// Rewrites the bare tokens `NaN`, `Infinity` and `-Infinity` that Python's `json` module
/// writes into strings, leaving string contents untouched.
fn quote_nonfinite_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            rest = &rest[1..];
            continue;
        }
        let mut matched = false;
        for tok in ["-Infinity", "Infinity", "NaN"] {
            if rest.starts_with(tok) {
                out.push('"');
                out.push_str(tok);
                out.push('"');
                rest = &rest[tok.len()..];
                matched = true;
                break;
            }
        }
        if !matched {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

impl SchedulerConfig {
    /// Parses a `scheduler_config.json` as written by diffusers (accepting Python's `NaN`,
    /// `Infinity` and `-Infinity` tokens). Does not [`validate`](Self::validate).
    pub fn from_json_str(text: &str) -> Result<Self, SchedulerError> {
        let value: Value = serde_json::from_str(&quote_nonfinite_tokens(text))
            .map_err(|e| SchedulerError::Json(e.to_string()))?;
        Self::try_from(value)
    }

    /// Builds a config from an already-parsed JSON object (see [`Self::from_json_str`] for the
    /// non-finite tokens).
    pub fn from_json_value(value: &Value) -> Result<Self, SchedulerError> {
        Self::try_from(value.clone())
    }

    /// The parsed `beta_schedule`.
    pub fn beta_schedule(&self) -> Result<BetaSchedule, SchedulerError> {
        self.beta_schedule.parse()
    }

    /// The parsed `prediction_type`.
    pub fn prediction_type(&self) -> Result<PredictionType, SchedulerError> {
        self.prediction_type.parse()
    }

    /// The parsed `timestep_spacing` (`None` when the class default applies).
    pub fn timestep_spacing(&self) -> Result<Option<TimestepSpacing>, SchedulerError> {
        self.timestep_spacing.as_deref().map(str::parse).transpose()
    }

    /// The parsed `variance_type`, if set.
    pub fn variance_type(&self) -> Result<Option<VarianceType>, SchedulerError> {
        self.variance_type.as_deref().map(str::parse).transpose()
    }

    /// Checks every field for values diffusers would reject or that make the tables
    /// meaningless: unknown names, NaN/infinite/negative numbers, betas outside `[0, 1]`,
    /// a `trained_betas` list of the wrong length. Sampler-specific support is checked by
    /// [`build`].
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let invalid =
            |field: &'static str, value: String, reason: &str| SchedulerError::InvalidValue {
                field,
                value,
                reason: reason.to_string(),
            };
        if self.num_train_timesteps < 2 {
            return Err(invalid(
                "num_train_timesteps",
                self.num_train_timesteps.to_string(),
                "must be at least 2 (diffusers models use 1000)",
            ));
        }
        if self.num_train_timesteps > 1_000_000 {
            return Err(invalid(
                "num_train_timesteps",
                self.num_train_timesteps.to_string(),
                "is implausibly large (at most 1000000)",
            ));
        }
        let schedule = self.beta_schedule()?;
        match &self.trained_betas {
            Some(tb) => {
                if tb.len() != self.num_train_timesteps {
                    return Err(SchedulerError::TrainedBetasLength {
                        expected: self.num_train_timesteps,
                        got: tb.len(),
                    });
                }
                if let Some((i, b)) = tb
                    .iter()
                    .enumerate()
                    .find(|(_, b)| !(b.is_finite() && **b >= 0.0 && **b <= 1.0))
                {
                    return Err(invalid(
                        "trained_betas",
                        format!("[{i}] = {b}"),
                        "every beta must be a finite number in [0, 1]",
                    ));
                }
            }
            None => {
                for (field, v) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                        return Err(invalid(
                            field,
                            v.to_string(),
                            "must be a finite number in [0, 1] (SD 1.x: 0.00085 and 0.012)",
                        ));
                    }
                }
                if schedule != BetaSchedule::SquaredcosCapV2
                    && schedule != BetaSchedule::Laplace
                    && self.beta_end < self.beta_start
                {
                    return Err(invalid(
                        "beta_end",
                        self.beta_end.to_string(),
                        "must not be smaller than beta_start",
                    ));
                }
            }
        }
        self.prediction_type()?;
        self.timestep_spacing()?;
        self.variance_type()?;
        if !self.clip_sample_range.is_finite() || self.clip_sample_range <= 0.0 {
            return Err(invalid(
                "clip_sample_range",
                self.clip_sample_range.to_string(),
                "must be a finite positive number (default 1.0)",
            ));
        }
        for (field, v) in [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)] {
            if let Some(v) = v {
                if !v.is_finite() || v <= 0.0 {
                    return Err(invalid(
                        field,
                        v.to_string(),
                        "must be a finite positive number, or null to use the schedule's own range",
                    ));
                }
            }
        }
        if self.lambda_min_clipped.is_nan() || self.lambda_min_clipped == f64::INFINITY {
            return Err(invalid(
                "lambda_min_clipped",
                self.lambda_min_clipped.to_string(),
                "must be a number or -Infinity (no clipping)",
            ));
        }
        if !(1..=3).contains(&self.solver_order) {
            return Err(invalid(
                "solver_order",
                self.solver_order.to_string(),
                "must be 1, 2 or 3",
            ));
        }
        let known =
            |field: &'static str, v: &str, valid: &'static str| -> Result<(), SchedulerError> {
                if valid.split(", ").any(|x| x == v) {
                    Ok(())
                } else {
                    Err(SchedulerError::UnknownValue {
                        field,
                        value: v.to_string(),
                        valid,
                    })
                }
            };
        known(
            "interpolation_type",
            &self.interpolation_type,
            "linear, log_linear",
        )?;
        known("timestep_type", &self.timestep_type, "discrete, continuous")?;
        known(
            "final_sigmas_type",
            &self.final_sigmas_type,
            "zero, sigma_min",
        )?;
        known(
            "algorithm_type",
            &self.algorithm_type,
            "dpmsolver++, dpmsolver, sde-dpmsolver++, sde-dpmsolver, deis",
        )?;
        known(
            "solver_type",
            &self.solver_type,
            "midpoint, heun, logrho, bh1, bh2",
        )?;
        Ok(())
    }

    /// The training betas exactly as diffusers computes them (float32 values; zero-SNR rescale
    /// applied when enabled). Empty when the config does not [`validate`](Self::validate).
    pub fn betas(&self) -> Vec<f64> {
        self.betas_f32()
            .map(|b| b.into_iter().map(f64::from).collect())
            .unwrap_or_default()
    }

    /// `alphas_cumprod` exactly as diffusers' DDIM/DDPM compute it (float32 values): the
    /// cumulative product of `1 - beta`. (With zero-terminal-SNR the Euler and DPM-Solver
    /// classes additionally replace the last entry, 0, by `2^-24`; that is internal to those
    /// samplers.) Empty when the config does not [`validate`](Self::validate).
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        self.alphas_cumprod_f32()
            .map(|a| a.into_iter().map(f64::from).collect())
            .unwrap_or_default()
    }

    pub(crate) fn betas_f32(&self) -> Result<Vec<f32>, SchedulerError> {
        self.validate()?;
        tables::betas_f32(self)
    }

    pub(crate) fn alphas_cumprod_f32(&self) -> Result<Vec<f32>, SchedulerError> {
        Ok(tables::alphas_cumprod_f32(&self.betas_f32()?))
    }
}

// ---------------------------------------------------------------------------------------------
// Sampler interface
// ---------------------------------------------------------------------------------------------

/// Per-run sampler choice and overrides of the model's scheduler config.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerOptions {
    /// Which sampler.
    pub kind: SamplerKind,
    /// DDIM `eta` (0 = deterministic DDIM, 1 = DDPM-like); ignored by the other samplers.
    pub eta: f64,
    /// Overrides the config's `timestep_spacing`.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Overrides the config's `prediction_type`.
    pub prediction_type: Option<PredictionType>,
    /// Overrides the config's `use_karras_sigmas` (Euler, DPM-Solver; `dpmpp-2m-karras` always
    /// uses Karras sigmas).
    pub karras: Option<bool>,
}

impl SamplerOptions {
    /// The sampler with no overrides and `eta = 0`.
    pub fn new(kind: SamplerKind) -> Self {
        SamplerOptions {
            kind,
            eta: 0.0,
            timestep_spacing: None,
            prediction_type: None,
            karras: None,
        }
    }
}

/// A source of standard-normal noise. One call is one `torch.randn(shape)` call of `out.len()`
/// elements (so that a torch-compatible generator reproduces diffusers' noise exactly).
pub trait NoiseSource {
    /// Fills `out` with standard-normal samples.
    fn fill_normal(&mut self, out: &mut [f32]);
}

/// A configured sampler for one run of `timesteps().len()` steps.
///
/// The denoising loop: multiply the initial noise by [`init_noise_sigma`](Self::init_noise_sigma);
/// for each `i`, feed `scale_model_input(x, i)` and `timesteps()[i]` to the model, then
/// `step(model_output, i, x, noise)`. Steps must be taken in order (DPM-Solver keeps the previous
/// model outputs; it restarts at first order when a step is skipped or repeated).
pub trait Scheduler: Send {
    /// The timesteps fed to the UNet's `timestep` input, one per step (integers for DDIM, DDPM
    /// and DPM-Solver; interpolated floats for Euler with Karras sigmas).
    fn timesteps(&self) -> &[f64];
    /// The noise levels, one per step plus the final one (Euler, Euler-a, DPM-Solver); `None`
    /// for DDIM/DDPM.
    fn sigmas(&self) -> Option<&[f64]>;
    /// Factor for the initial Gaussian noise.
    fn init_noise_sigma(&self) -> f64;
    /// Scales the model input in place (Euler samplers divide by `sqrt(sigma^2 + 1)`; a no-op for
    /// the others). Panics if `step_index >= timesteps().len()`.
    fn scale_model_input(&self, sample: &mut [f32], step_index: usize);
    /// One denoising step: replaces `sample` (x_t) by x_{t-1} in place. Draws noise from `noise`
    /// exactly where diffusers calls `randn_tensor` (same count, order and size).
    fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &mut [f32],
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError>;
}

/// Builds the sampler `options.kind` for `steps` inference steps from a diffusers scheduler
/// config, as `Cls.from_config(config)` followed by `set_timesteps(steps)` would.
pub fn build(
    config: &SchedulerConfig,
    options: &SamplerOptions,
    steps: usize,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    config.validate()?;
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(SchedulerError::InvalidSteps {
            steps,
            max: config.num_train_timesteps,
        });
    }
    if !options.eta.is_finite() || options.eta < 0.0 {
        return Err(SchedulerError::InvalidValue {
            field: "eta",
            value: options.eta.to_string(),
            reason: "must be a finite number >= 0 (0 = deterministic DDIM, 1 = DDPM-like)".into(),
        });
    }
    let resolved = Resolved {
        spacing: match options.timestep_spacing {
            Some(s) => s,
            None => config
                .timestep_spacing()?
                .unwrap_or_else(|| options.kind.default_spacing()),
        },
        prediction: match options.prediction_type {
            Some(p) => p,
            None => config.prediction_type()?,
        },
        karras: match options.kind {
            SamplerKind::DpmPp2mKarras => true,
            SamplerKind::Euler | SamplerKind::DpmPp2m => {
                options.karras.unwrap_or(config.use_karras_sigmas)
            }
            // These classes have no use_karras_sigmas (from_config ignores the key).
            SamplerKind::Ddim | SamplerKind::Ddpm | SamplerKind::EulerAncestral => {
                if options.karras == Some(true) {
                    return Err(SchedulerError::Unsupported {
                        sampler: options.kind.diffusers_class(),
                        field: "karras",
                        value: "true".into(),
                        hint: "Karras sigmas exist only for euler, dpmpp-2m and dpmpp-2m-karras",
                    });
                }
                false
            }
        },
        eta: options.eta,
        steps,
    };
    let schedule = config.beta_schedule()?;
    if config.trained_betas.is_none()
        && matches!(schedule, BetaSchedule::Laplace | BetaSchedule::Sigmoid)
        && options.kind != SamplerKind::Ddpm
    {
        return Err(SchedulerError::Unsupported {
            sampler: options.kind.diffusers_class(),
            field: "beta_schedule",
            value: schedule.to_string(),
            hint:
                "only DDPMScheduler implements it; use linear, scaled_linear or squaredcos_cap_v2",
        });
    }
    Ok(match options.kind {
        SamplerKind::Ddim => Box::new(ddim::Ddim::new(config, &resolved)?),
        SamplerKind::Ddpm => Box::new(ddpm::Ddpm::new(config, &resolved)?),
        SamplerKind::Euler => Box::new(euler::Euler::new(config, &resolved)?),
        SamplerKind::EulerAncestral => {
            Box::new(euler_ancestral::EulerAncestral::new(config, &resolved)?)
        }
        SamplerKind::DpmPp2m | SamplerKind::DpmPp2mKarras => {
            Box::new(dpm_solver::DpmSolverMultistep::new(config, &resolved)?)
        }
    })
}

/// Options after applying overrides and class defaults.
pub(crate) struct Resolved {
    pub spacing: TimestepSpacing,
    pub prediction: PredictionType,
    pub karras: bool,
    pub eta: f64,
    pub steps: usize,
}

/// DDPM forward process `q(x_t | x_0)`: `out = sqrt(a_t) * original + sqrt(1 - a_t) * noise`
/// with `a_t = alphas_cumprod[timestep]`, in float32 as diffusers' `add_noise`
/// (DDIM/DDPM). `alphas_cumprod` is [`SchedulerConfig::alphas_cumprod`].
///
/// Panics if the slices differ in length or `timestep` is out of the table.
pub fn add_noise(
    alphas_cumprod: &[f64],
    original: &[f32],
    noise: &[f32],
    timestep: usize,
    out: &mut [f32],
) {
    assert!(
        timestep < alphas_cumprod.len(),
        "add_noise: timestep {timestep} is outside the alphas_cumprod table ({} entries)",
        alphas_cumprod.len()
    );
    assert!(
        original.len() == noise.len() && original.len() == out.len(),
        "add_noise: original ({}), noise ({}) and out ({}) must have the same length",
        original.len(),
        noise.len(),
        out.len()
    );
    let a = alphas_cumprod[timestep] as f32;
    let sqrt_a = a.sqrt();
    let sqrt_one_minus_a = (1.0f32 - a).sqrt();
    for ((o, &x), &n) in out.iter_mut().zip(original).zip(noise) {
        *o = sqrt_a * x + sqrt_one_minus_a * n;
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the samplers
// ---------------------------------------------------------------------------------------------

/// `scale_model_input` takes no `Result` (diffusers' signature); an index past the schedule is a
/// caller bug, reported by a panic that names the range.
pub(crate) fn check_scale_index(step_index: usize, len: usize) {
    assert!(
        step_index < len,
        "scale_model_input: step_index {step_index} out of range (0..{len})"
    );
}

pub(crate) fn check_step(
    model_output: &[f32],
    sample: &[f32],
    step_index: usize,
    steps: usize,
) -> Result<(), SchedulerError> {
    if step_index >= steps {
        return Err(SchedulerError::StepIndexOutOfRange {
            index: step_index,
            steps,
        });
    }
    if model_output.len() != sample.len() {
        return Err(SchedulerError::LengthMismatch {
            what: "model_output",
            expected: sample.len(),
            got: model_output.len(),
        });
    }
    Ok(())
}

pub(crate) fn draw_noise(noise: &mut dyn NoiseSource, len: usize) -> Vec<f32> {
    let mut buf = vec![0.0f32; len];
    noise.fill_normal(&mut buf);
    buf
}

/// torch's `clamp`: NaN passes through.
pub(crate) fn clamp_f32(x: f32, lo: f32, hi: f32) -> f32 {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

pub(crate) fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Integer timesteps shared by DDIM and DDPM `set_timesteps` (identical code in both classes).
pub(crate) fn ddim_ddpm_timesteps(
    spacing: TimestepSpacing,
    n_train: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<i64> {
    use tables::{np_arange, np_linspace, np_round};
    match spacing {
        // np.linspace(0, N - 1, steps).round()[::-1].astype(int64)
        TimestepSpacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| np_round(t) as i64)
            .collect(),
        // (np.arange(0, steps) * (N // steps)).round()[::-1] + steps_offset
        TimestepSpacing::Leading => {
            let ratio = n_train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + steps_offset) as i64)
                .collect()
        }
        // np.round(np.arange(N, 0, -N / steps)) - 1
        TimestepSpacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            np_arange(n_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| np_round(t) as i64 - 1)
                .collect()
        }
    }
}

/// Errors out when a timestep falls outside the training table, where diffusers would index
/// out of bounds or, worse, wrap around:
/// * `leading` spacing with `steps_offset > 0` and `steps == N` gives timestep `N`
///   (diffusers: IndexError);
/// * `trailing` spacing for some step counts (61, 103, 121, 122 with N = 1000): numpy's
///   `arange(N, 0, -N/steps)` yields `steps + 1` values whose last rounds to 0, i.e. timestep -1,
///   and diffusers' DDIM/DDPM then read `alphas_cumprod[-1]` (the *noisiest* entry, by Python's
///   negative indexing) for the final step, which ruins the sample. We refuse instead of
///   reproducing that.
pub(crate) fn check_timesteps_in_table(
    ts: &[i64],
    n_train: usize,
    spacing: TimestepSpacing,
    steps: usize,
) -> Result<(), SchedulerError> {
    let Some(&t) = ts.iter().find(|&&t| t < 0 || t as usize >= n_train) else {
        return Ok(());
    };
    // nearest step counts whose trailing schedule stays inside the table
    let fits = |k: usize| {
        k >= 1
            && k <= n_train
            && ddim_ddpm_timesteps(TimestepSpacing::Trailing, n_train, k, 0)
                .iter()
                .all(|&t| t >= 0 && (t as usize) < n_train)
    };
    let below = (1..steps).rev().find(|&k| fits(k)).unwrap_or(1);
    let above = (steps + 1..=n_train).find(|&k| fits(k)).unwrap_or(below);
    Err(match spacing {
        TimestepSpacing::Trailing => SchedulerError::InvalidValue {
            field: "timestep_spacing",
            value: "trailing".into(),
            reason: format!(
                "with {steps} steps diffusers' trailing schedule has {} timesteps ending at {t} \
                 (outside 0..{n_train}; diffusers would silently use the wrong alpha); choose \
                 another step count (e.g. {} or {})",
                ts.len(),
                below,
                above
            ),
        },
        _ => SchedulerError::InvalidValue {
            field: "steps_offset",
            value: t.to_string(),
            reason: format!(
                "the {spacing} schedule for {steps} steps produces timestep {t}, outside \
                 0..{n_train}; lower steps_offset, use fewer steps or another timestep_spacing"
            ),
        },
    })
}

/// Rejects options a sampler does not implement.
pub(crate) fn unsupported(
    sampler: &'static str,
    field: &'static str,
    value: impl ToString,
    hint: &'static str,
) -> SchedulerError {
    SchedulerError::Unsupported {
        sampler,
        field,
        value: value.to_string(),
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonfinite_tokens_are_quoted_outside_strings() {
        let t = r#"{"a": -Infinity, "b": "NaN inside", "c": [NaN, Infinity]}"#;
        assert_eq!(
            quote_nonfinite_tokens(t),
            r#"{"a": "-Infinity", "b": "NaN inside", "c": ["NaN", "Infinity"]}"#
        );
    }

    #[test]
    fn sampler_names_round_trip() {
        for k in SamplerKind::ALL {
            assert_eq!(k.name().parse::<SamplerKind>().unwrap(), k);
            assert_eq!(k.to_string(), k.name());
        }
    }
}

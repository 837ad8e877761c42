//! Session creation with the caller's device, threads and graph optimisation level.

use super::{Runtime, RuntimeError};
use ort::session::{builder::GraphOptimizationLevel, Session};
use std::path::Path;
use std::str::FromStr;

/// Where ONNX Runtime runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// CUDA when the loaded library has it and a GPU answers, else CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device by ordinal; an error if CUDA cannot be used.
    Cuda(i32),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(format!(
                    "unknown device {other:?}; expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// ONNX Runtime graph optimisation level (`--ort-opt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

impl FromStr for GraphOptimization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disable" | "none" => Ok(Self::Disable),
            "basic" => Ok(Self::Basic),
            "extended" => Ok(Self::Extended),
            "all" => Ok(Self::All),
            o => Err(format!(
                "unknown optimisation level {o:?}; expected disable, basic, extended or all"
            )),
        }
    }
}

/// Per-engine session settings.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub device: Device,
    /// Intra-op threads; 0 = ONNX Runtime's default (one per physical core).
    pub intra_threads: usize,
    /// Inter-op threads; 0 = default.
    pub inter_threads: usize,
    pub optimization: GraphOptimization,
}

/// Resolves `Device::Auto` and checks that CUDA is usable when asked for.
pub(crate) fn resolve_device(rt: &Runtime, device: Device) -> Result<Device, RuntimeError> {
    match device {
        Device::Cpu => Ok(Device::Cpu),
        Device::Auto => Ok(if rt.cuda_provider_present() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        Device::Cuda(n) => {
            if rt.cuda_provider_present() {
                Ok(Device::Cuda(n))
            } else {
                Err(RuntimeError::CudaUnavailable {
                    reason: format!(
                        "the loaded ONNX Runtime ({}) has no CUDA execution provider",
                        rt.library().path.display()
                    ),
                })
            }
        }
    }
}

/// Opens one model file. With `Device::Cuda` the CUDA provider must register, otherwise the
/// error says why (ONNX Runtime would silently fall back to CPU).
pub fn open_session(
    rt: &Runtime,
    path: &Path,
    options: &SessionOptions,
    device: Device,
) -> Result<Session, RuntimeError> {
    let err = |e: &dyn std::fmt::Display| RuntimeError::Session {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut b = Session::builder(rt.env()).map_err(|e| err(&e))?;
    // The UNet's LoRA inputs are initializers that are also graph inputs, by design (zero-rank
    // defaults); ONNX Runtime warns once per tensor about exactly that, so only errors are logged.
    b = b
        .with_log_level(ort::logging::LogLevel::Error)
        .map_err(|e| err(&e))?;
    b = b
        .with_optimization_level(match options.optimization {
            GraphOptimization::Disable => GraphOptimizationLevel::Disable,
            GraphOptimization::Basic => GraphOptimizationLevel::Level1,
            GraphOptimization::Extended => GraphOptimizationLevel::Level2,
            GraphOptimization::All => GraphOptimizationLevel::All,
        })
        .map_err(|e| err(&e))?;
    if options.intra_threads > 0 {
        b = b
            .with_intra_threads(options.intra_threads)
            .map_err(|e| err(&e))?;
    }
    if options.inter_threads > 0 {
        b = b
            .with_inter_threads(options.inter_threads)
            .map_err(|e| err(&e))?;
    }
    if let Device::Cuda(id) = device {
        let ep = ort::ep::CUDA::default()
            .with_device_id(id)
            .build()
            .error_on_failure();
        b = b
            .with_execution_providers([ep])
            .map_err(|e| RuntimeError::CudaUnavailable {
                reason: format!("the CUDA execution provider failed to start: {e}"),
            })?;
    }
    b.commit_from_file(path).map_err(|e| err(&e))
}

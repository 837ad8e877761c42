//! The command-line flags that choose how ONNX Runtime runs a bundle, shared by every command
//! that opens one (`generate`, `score`, `eval`, `world sample`), so that they are spelled,
//! documented and turned into options in one place.

use super::EngineOptions;
use crate::bundle::Verify;
use crate::runtime::{Device, SessionOptions};
use std::path::PathBuf;

/// `--device`, `--threads`, `--ort-lib`, `--no-verify` (flatten into a command's `clap::Args`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct RuntimeFlags {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Path to libonnxruntime (else DPOIMG_ORT_LIB, ORT_DYLIB_PATH, next to the binary, .ort/lib, Python onnxruntime).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Skip the sha256 check of every bundle file (existence and paths are still checked).
    #[arg(long)]
    pub no_verify: bool,
}

impl RuntimeFlags {
    /// Session options with these flags and ONNX Runtime's defaults for the rest.
    pub fn session(&self) -> SessionOptions {
        SessionOptions {
            device: self.device,
            intra_threads: self.threads,
            ..SessionOptions::default()
        }
    }

    pub fn verify(&self) -> Verify {
        if self.no_verify {
            Verify::Quick
        } else {
            Verify::Full
        }
    }

    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            session: self.session(),
            verify: self.verify(),
            ort_library: self.ort_lib.clone(),
        }
    }

    /// The flags given on the command line (not at their defaults), by name: a daemon client
    /// warns that the daemon's own settings replace them.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--device", self.device != Device::Auto),
            ("--threads", self.threads != 0),
            ("--ort-lib", self.ort_lib.is_some()),
            ("--no-verify", self.no_verify),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        rt: RuntimeFlags,
    }

    #[test]
    fn defaults_parse_to_default_and_flags_map_to_options() {
        let d = Cmd::try_parse_from(["x"]).unwrap().rt;
        assert_eq!(d, RuntimeFlags::default());
        assert!(d.given().is_empty());
        assert_eq!(d.verify(), Verify::Full);
        let f = Cmd::try_parse_from([
            "x",
            "--device",
            "cuda:1",
            "--threads",
            "3",
            "--ort-lib",
            "/l.so",
            "--no-verify",
        ])
        .unwrap()
        .rt;
        assert_eq!(
            f.given(),
            ["--device", "--threads", "--ort-lib", "--no-verify"]
        );
        let o = f.engine_options();
        assert_eq!(o.session.device, Device::Cuda(1));
        assert_eq!(o.session.intra_threads, 3);
        assert_eq!(o.verify, Verify::Quick);
        assert_eq!(o.ort_library, Some(PathBuf::from("/l.so")));
        let e = Cmd::try_parse_from(["x", "--device", "gpu"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("expected auto, cpu, cuda or cuda:N"), "{e}");
    }
}

//! `dpoimg-finetune`: LoRA fine-tuning jobs (Diffusion-DPO, SFT, DPOK).
//!
//! The trainer is not built yet (issue: "LoRA-DPO trainer"); this binary exists so scripts and
//! packaging can rely on its name, and says so instead of pretending to train.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("dpoimg-finetune {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "dpoimg-finetune {}: the LoRA-DPO trainer is not built yet in this release; \
         `dpoimg generate --adapter FILE` already applies adapters trained elsewhere (diffusers/peft or kohya files).",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}

//! `dpoimg experiment CONFIG.json [--out DIR] [--resume]`: log lines per stage on stderr and one
//! progress bar per arm's training; the report paths on stdout.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use super::{ExperimentError, Progress};
use crate::cancel::CancelToken;

#[derive(Debug, Clone, clap::Args)]
pub struct ExperimentArgs {
    /// The experiment config (JSON; see docs/experiment.md and experiments/).
    pub config: PathBuf,
    /// Output directory: run directories, eval, curves, experiment.json, report.html.
    #[arg(long, default_value = "experiment")]
    pub out: PathBuf,
    /// Continue an interrupted experiment in --out (finished arms are not retrained).
    #[arg(long)]
    pub resume: bool,
}

/// Runs the command; Ctrl-C (through `cancel`) stops at the next step with a checkpoint.
pub fn run(args: &ExperimentArgs, cancel: &CancelToken) -> Result<(), ExperimentError> {
    let mut bar: Option<(String, ProgressBar)> = None;
    let mut on = |p: Progress<'_>| match p {
        Progress::Log(s) => match &bar {
            // a hidden bar (stderr not a terminal) swallows println
            Some((_, b)) if !b.is_hidden() => b.println(s),
            _ => eprintln!("{s}"),
        },
        Progress::Step { arm, done, total } => {
            if bar.as_ref().is_none_or(|(a, _)| a != arm) {
                if let Some((_, b)) = bar.take() {
                    b.finish();
                }
                let b = ProgressBar::new(total as u64);
                b.set_style(
                    ProgressStyle::with_template(&format!(
                        "{arm} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}} < {{eta_precise}}]"
                    ))
                    .expect("template"),
                );
                bar = Some((arm.to_string(), b));
            }
            if let Some((_, b)) = &bar {
                b.set_position(done as u64);
            }
        }
    };
    let r = super::run(&args.config, &args.out, args.resume, &mut on, cancel);
    if let Some((_, b)) = bar.take() {
        b.finish_and_clear();
    }
    r?;
    println!("{}", args.out.join(super::REPORT_JSON).display());
    println!("{}", args.out.join(super::REPORT_HTML).display());
    Ok(())
}

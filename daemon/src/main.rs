//! `dpoimgd`: see the library docs and docs/daemon.md.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = dpoimgd::config::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match dpoimgd::config::Config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dpoimgd: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dpoimgd: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dpoimgd::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpoimgd: {e}");
            ExitCode::FAILURE
        }
    }
}

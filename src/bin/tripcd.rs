//! `tripcd`: parse arguments, set up logging, run the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tripcd::config::Config;
use tripcd::daemon;

/// A daemon speaking the Transmission IPC protocol (versions 1 and 2) on a
/// Unix socket. Runs in the foreground; logs to stderr (set RUST_LOG).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: Config,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = Args::parse().config;
    if let Some(home) = std::env::var_os("HOME") {
        config = config.with_home(&PathBuf::from(home));
    }
    match daemon::run(&config) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tripcd: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `tripcd`: parse arguments, set up logging, run the daemon.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use log::Level;
use tripcd::config::Config;
use tripcd::daemon;

/// A daemon speaking the Transmission IPC protocol (versions 1 and 2) on a
/// Unix socket. Runs in the foreground; logs to stderr (set RUST_LOG).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: Config,
    /// Print this manual page (roff) and exit; packaging uses it
    #[arg(long, hide = true)]
    generate_man: bool,
    /// Read a password from standard input, print its hash for
    /// --rpc-password-file, and exit
    #[arg(long)]
    hash_password: bool,
}

/// The syslog priority journald reads from a `<N>` line prefix
/// (`sd-daemon(3)`).
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn main() -> ExitCode {
    // The journal stamps lines itself and reads priorities from a prefix.
    let journal = tripcd::sys::stderr_is_journal();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if journal {
        logger.format(|buf, record| {
            let p = priority(record.level());
            let text = record.args().to_string();
            // Every line is its own journal entry: each carries the
            // priority.
            for line in text.split('\n') {
                writeln!(buf, "<{p}>{}: {line}", record.target())?;
            }
            Ok(())
        });
    }
    logger.init();
    let args = Args::parse();
    if args.generate_man {
        let page = clap_mangen::Man::new(Args::command()).section("8");
        return match page.render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tripcd: cannot write the manual page: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.hash_password {
        return hash_password();
    }
    let mut config = args.config;
    if let Some(home) = std::env::var_os("HOME") {
        config = config.with_home(&PathBuf::from(home));
    }
    match daemon::run(&config) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let p = if journal { "<3>" } else { "" };
            eprintln!("{p}tripcd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--hash-password`: one line of standard input (the password, without
/// its line end) to the stored form `--rpc-password-file` takes.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("tripcd: cannot read the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("tripcd: no password given on standard input");
        return ExitCode::FAILURE;
    }
    let mut seed = [0u8; 8];
    if let Err(e) = getrandom::getrandom(&mut seed) {
        eprintln!("tripcd: no system randomness: {e}");
        return ExitCode::FAILURE;
    }
    let mut rng = fastrand::Rng::with_seed(u64::from_le_bytes(seed));
    println!("{}", tripcd::http::PasswordHash::new(password, &mut rng));
    ExitCode::SUCCESS
}

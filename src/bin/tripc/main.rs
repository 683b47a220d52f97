//! `tripc`: parse the command line into actions (in the order given) and
//! run them against the daemon.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};
use clap_complete::Shell;
use tripcd::client::Client;
mod remote;

use remote::{Action, Style, Target};

const EXAMPLES: &str = "\
Examples:
  tripc -a ~/ubuntu.torrent -l          add a torrent, then list all
  tripc -S all -p 51413 -s all          stop all, change port, start all
  tripc -d 500 -U                       download at most 500 KiB/s, upload freely
  tripc --encryption required           encrypted peer connections only
  tripc -l --json                       the list as JSON
  tripc call get-supported '[\"noop\",\"get-uptime\"]'
  tripc completions bash > /etc/bash_completion.d/tripc

Flags run in the order given; the first failure stops the run with a
non-zero exit status and a one-line reason.";

/// Command-line client for tripcd (and other Transmission IPC daemons).
#[derive(Parser, Debug)]
#[command(version, after_help = EXAMPLES)]
struct Args {
    /// Daemon socket [default: ~/.transmission/daemon/socket]
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for each answer
    #[arg(long, value_name = "SECS", default_value_t = 30, global = true)]
    timeout: u64,
    /// Add torrent files (relative paths are made absolute)
    #[arg(short = 'a', long = "add", value_name = "FILE", num_args = 1.., action = ArgAction::Append)]
    add: Vec<PathBuf>,
    /// List torrents with their status
    #[arg(short = 'l', long = "list", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    list: Vec<String>,
    /// List torrents with their info hashes
    #[arg(short = 'i', long = "info", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    info: Vec<String>,
    /// Start `all` torrents or the one with this hash
    #[arg(short = 's', long = "start", value_name = "all|HASH", action = ArgAction::Append)]
    start: Vec<Target>,
    /// Stop `all` torrents or the one with this hash
    #[arg(short = 'S', long = "stop", value_name = "all|HASH", action = ArgAction::Append)]
    stop: Vec<Target>,
    /// Check the data of `all` torrents or of the one with this hash again (protocol 1.20)
    #[arg(short = 'v', long = "verify", value_name = "all|HASH", action = ArgAction::Append)]
    verify: Vec<Target>,
    /// Remove `all` torrents or the one with this hash (data is kept)
    #[arg(short = 'r', long = "remove", value_name = "all|HASH", action = ArgAction::Append)]
    remove: Vec<Target>,
    /// Port for incoming peer connections
    #[arg(short = 'p', long = "port", value_name = "N", action = ArgAction::Append)]
    port: Vec<u16>,
    /// Download limit in KiB/s
    #[arg(short = 'd', long = "download-limit", value_name = "N", action = ArgAction::Append,
          value_parser = clap::value_parser!(i64).range(0..))]
    download_limit: Vec<i64>,
    /// No download limit
    #[arg(short = 'D', long = "download-unlimited", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    download_unlimited: Vec<String>,
    /// Upload limit in KiB/s
    #[arg(short = 'u', long = "upload-limit", value_name = "N", action = ArgAction::Append,
          value_parser = clap::value_parser!(i64).range(0..))]
    upload_limit: Vec<i64>,
    /// No upload limit
    #[arg(short = 'U', long = "upload-unlimited", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    upload_unlimited: Vec<String>,
    /// Enable peer exchange
    #[arg(short = 'e', long = "enable-pex", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    enable_pex: Vec<String>,
    /// Disable peer exchange
    #[arg(short = 'E', long = "disable-pex", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    disable_pex: Vec<String>,
    /// Enable automatic port mapping
    #[arg(short = 'm', long = "port-mapping", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    port_mapping: Vec<String>,
    /// Disable automatic port mapping
    #[arg(short = 'M', long = "no-port-mapping", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    no_port_mapping: Vec<String>,
    /// Default download folder for new torrents
    #[arg(short = 'f', long = "folder", value_name = "DIR", action = ArgAction::Append)]
    folder: Vec<PathBuf>,
    /// Encryption of peer connections (protocol 1.06; `tolerated` is 1.20's
    /// spelling of `plaintext`, sent as given)
    #[arg(long = "encryption", value_name = "MODE", action = ArgAction::Append,
          value_parser = ["required", "preferred", "tolerated", "plaintext"])]
    encryption: Vec<String>,
    /// Stop the daemon
    #[arg(short = 'q', long = "quit", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    quit: Vec<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send any key (script keys included) with a JSON value; print the reply
    Call {
        /// The message key
        key: String,
        /// The value as JSON (numbers are integers, true/false are 1/0) [default: ""]
        value: Option<String>,
    },
    /// Print a shell completion script
    Completions {
        /// The shell
        shell: Shell,
    },
}

/// The actions in command-line order: each argument's position decides.
fn actions(args: &Args, m: &clap::ArgMatches) -> Result<Vec<Action>, String> {
    let mut out: Vec<(usize, Action)> = Vec::new();
    let at = |id: &str| -> Vec<usize> { m.indices_of(id).map(|i| i.collect()).unwrap_or_default() };
    let cwd = std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?;
    for (i, f) in at("add").into_iter().zip(&args.add) {
        out.push((i, Action::Add(vec![cwd.join(f)])));
    }
    for (id, action) in [
        ("list", Action::List),
        ("info", Action::Info),
        ("download_unlimited", Action::DownLimit(None)),
        ("upload_unlimited", Action::UpLimit(None)),
        ("enable_pex", Action::Pex(true)),
        ("disable_pex", Action::Pex(false)),
        ("port_mapping", Action::Automap(true)),
        ("no_port_mapping", Action::Automap(false)),
        ("quit", Action::Quit),
    ] {
        out.extend(at(id).into_iter().map(|i| (i, action.clone())));
    }
    let pairs = |id: &str, v: Vec<Action>| at(id).into_iter().zip(v).collect::<Vec<_>>();
    out.extend(pairs(
        "start",
        args.start.iter().cloned().map(Action::Start).collect(),
    ));
    out.extend(pairs(
        "stop",
        args.stop.iter().cloned().map(Action::Stop).collect(),
    ));
    out.extend(pairs(
        "verify",
        args.verify.iter().cloned().map(Action::Verify).collect(),
    ));
    out.extend(pairs(
        "remove",
        args.remove.iter().cloned().map(Action::Remove).collect(),
    ));
    out.extend(pairs(
        "port",
        args.port.iter().copied().map(Action::Port).collect(),
    ));
    out.extend(pairs(
        "download_limit",
        args.download_limit
            .iter()
            .map(|l| Action::DownLimit(Some(*l)))
            .collect(),
    ));
    out.extend(pairs(
        "upload_limit",
        args.upload_limit
            .iter()
            .map(|l| Action::UpLimit(Some(*l)))
            .collect(),
    ));
    out.extend(pairs(
        "folder",
        args.folder
            .iter()
            .map(|f| Action::Folder(cwd.join(f)))
            .collect(),
    ));
    out.extend(pairs(
        "encryption",
        args.encryption
            .iter()
            .cloned()
            .map(Action::Encryption)
            .collect(),
    ));
    out.sort_by_key(|(i, _)| *i);
    let mut actions: Vec<Action> = out.into_iter().map(|(_, a)| a).collect();
    if let Some(Cmd::Call { key, value }) = &args.command {
        let value = match value {
            None => tripcd::codec::Value::empty(),
            Some(text) => {
                let j: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("value is not JSON: {e}"))?;
                tripcd::codec::json::from_json(&j)?
            }
        };
        actions.push(Action::Call(key.clone(), value));
    }
    Ok(actions)
}

fn main() -> ExitCode {
    let parsed = Args::command()
        .try_get_matches()
        .and_then(|m| Args::from_arg_matches(&m).map(|a| (m, a)));
    let (matches, args) = match parsed {
        Ok(p) => p,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other failure.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            eprintln!("tripc: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    if let Some(Cmd::Completions { shell }) = args.command {
        clap_complete::generate(shell, &mut Args::command(), "tripc", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let actions = match actions(&args, &matches) {
        Ok(a) if a.is_empty() => {
            eprintln!("tripc: nothing to do (see tripc --help)");
            return ExitCode::from(2);
        }
        Ok(a) => a,
        Err(e) => {
            eprintln!("tripc: {e}");
            return ExitCode::from(2);
        }
    };
    let socket = match args.socket.or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".transmission/daemon/socket"))
    }) {
        Some(s) => s,
        None => {
            eprintln!("tripc: HOME is not set; give --socket");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let width = stdout
        .is_terminal()
        .then(|| terminal_size::terminal_size().map(|(w, _)| usize::from(w.0)))
        .flatten();
    let style = Style {
        json: args.json,
        width,
    };
    let result = Client::connect(&socket).and_then(|mut c| {
        c.set_timeout(Some(Duration::from_secs(args.timeout.max(1))))?;
        Ok(c)
    });
    let result = match result {
        Ok(mut client) => remote::run(&mut client, &actions, style, &mut stdout.lock()),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`tripc -l | head -1`): nothing to say.
        Err(remote::RemoteError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tripc: {e}");
            ExitCode::FAILURE
        }
    }
}

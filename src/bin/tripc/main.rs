//! `tripc`: parse the command line into actions (in the order given) and
//! run them against the daemon.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};
use clap_complete::Shell;
use tripcd::client::{Client, ClientError, Step};
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
non-zero exit status and a one-line reason.

Exit status:
  0  done
  1  the daemon refused, is not running, or broke the protocol
  2  bad arguments
  3  timed out connecting (the daemon accepts nobody): nothing sent
  4  timed out waiting for the daemon's version handshake: nothing sent
  5  timed out sending a request or awaiting its answer: maybe done";

/// Command-line client for tripcd (and other Transmission IPC daemons).
#[derive(Parser, Debug)]
#[command(name = "tripc", version, after_help = EXAMPLES)]
struct Args {
    /// Daemon socket [default: ~/.transmission/daemon/socket]
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for each step: connecting, the daemon's version
    /// handshake, each answer (exit status 3, 4, 5 when one runs out)
    #[arg(long, value_name = "SECS", default_value_t = 30, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Add torrent files (relative paths are made absolute) or magnet links
    #[arg(short = 'a', long = "add", value_name = "FILE|MAGNET", num_args = 1.., action = ArgAction::Append)]
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
    /// Enable the DHT (tripcd's `dht` key)
    #[arg(short = 'o', long = "dht", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    enable_dht: Vec<String>,
    /// Disable the DHT
    #[arg(short = 'O', long = "no-dht", num_args = 0, default_missing_value = "", action = ArgAction::Append)]
    disable_dht: Vec<String>,
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
    /// Print the man page (roff), generated from these definitions
    #[command(hide = true)]
    Man,
}

/// The actions in command-line order: each argument's position decides.
fn actions(args: &Args, m: &clap::ArgMatches) -> Result<Vec<Action>, String> {
    let mut out: Vec<(usize, Action)> = Vec::new();
    let at = |id: &str| -> Vec<usize> { m.indices_of(id).map(|i| i.collect()).unwrap_or_default() };
    let cwd = std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?;
    for (i, f) in at("add").into_iter().zip(&args.add) {
        let action = match f.to_str().filter(|s| s.starts_with("magnet:")) {
            Some(uri) => Action::AddMagnet(uri.to_string()),
            None => Action::Add(vec![cwd.join(f)]),
        };
        out.push((i, action));
    }
    for (id, action) in [
        ("list", Action::List),
        ("info", Action::Info),
        ("download_unlimited", Action::DownLimit(None)),
        ("upload_unlimited", Action::UpLimit(None)),
        ("enable_pex", Action::Pex(true)),
        ("disable_pex", Action::Pex(false)),
        ("enable_dht", Action::Dht(true)),
        ("disable_dht", Action::Dht(false)),
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
    match args.command {
        Some(Cmd::Completions { shell }) => {
            clap_complete::generate(shell, &mut Args::command(), "tripc", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Cmd::Man) => {
            let man = clap_mangen::Man::new(Args::command());
            return match man.render(&mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tripc: cannot print: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
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
    let result = Client::connect_timeout(&socket, Duration::from_secs(args.timeout));
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
            ExitCode::from(exit_status(&e))
        }
    }
}

/// The exit status for a failure: a timeout says how far it got (see
/// `EXAMPLES`), so that a script knows whether a retry could repeat an
/// action.
fn exit_status(e: &remote::RemoteError) -> u8 {
    match e {
        remote::RemoteError::Client(ClientError::Timeout { step, .. }) => match step {
            Step::Connect(_) => 3,
            Step::Handshake => 4,
            Step::Send(_) | Step::Answer(_) | Step::Read => 5,
        },
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn timeouts_have_their_own_exit_status() {
        let timeout = |step| {
            exit_status(&remote::RemoteError::Client(ClientError::Timeout {
                step,
                after: Some(Duration::from_secs(1)),
            }))
        };
        assert_eq!(timeout(Step::Connect("/s".into())), 3);
        assert_eq!(timeout(Step::Handshake), 4);
        assert_eq!(timeout(Step::Answer("get-status".into())), 5);
        assert_eq!(timeout(Step::Send("quit".into())), 5);
        let refused = remote::RemoteError::Client(ClientError::Failed("no".into()));
        assert_eq!(exit_status(&refused), 1);
    }

    #[test]
    fn zero_seconds_is_refused() {
        let err = Args::try_parse_from(["tripc", "--timeout", "0", "-l"]).unwrap_err();
        assert!(err.to_string().contains("--timeout"), "{err}");
        let ok = Args::try_parse_from(["tripc", "--timeout", "1", "-l"]).unwrap();
        assert_eq!(ok.timeout, 1);
    }

    #[test]
    fn the_man_page_is_roff_and_hides_nothing_but_itself() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Args::command())
            .render(&mut out)
            .unwrap();
        let page = String::from_utf8(out).unwrap();
        // clap_mangen defines the apostrophe string `Aq` before the title.
        let title = page
            .lines()
            .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
            .unwrap();
        assert!(title.starts_with(".TH tripc 1 "), "{title}");
        assert!(page.contains(r"\fB\-\-timeout\fR"));
        assert!(page.contains(r"tripc\-completions(1)"));
        assert!(
            !page.contains(r"tripc\-man"),
            "the man subcommand is hidden"
        );
        assert!(page.contains("Exit status"));
    }
}

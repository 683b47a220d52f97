//! `tripcd`: parse arguments, set up logging, run the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tripcd::daemon::{self, Config};
use tripcd::scripts::Limits;

/// A daemon speaking the Transmission IPC protocol (versions 1 and 2) on a
/// Unix socket. Runs in the foreground; logs to stderr (set RUST_LOG).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Socket to listen on [default: ~/.transmission/daemon/socket]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory: settings, torrents, lock [default: ~/.transmission/daemon]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Default download directory of a fresh state directory [default: ~/Downloads]
    #[arg(long, value_name = "DIR")]
    download_dir: Option<PathBuf>,
    /// Largest message payload accepted, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u64).range(1..=0x7FFF_FFF8))]
    max_message: u64,
    /// Close clients silent for this many seconds (0 = never)
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    idle_timeout: u64,
    /// Longest time one slice of hash checking may hold the event loop, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    check_slice_ms: u64,
    /// Mode of the socket file, in octal; the daemon also checks each
    /// client's credentials (see --allow-uid)
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Group of the socket file (name or number)
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Also let in this user id (the daemon's own user and root always are); repeatable
    #[arg(long, value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Also let in clients whose primary group is this id; repeatable
    #[arg(long, value_name = "GID")]
    allow_gid: Vec<u32>,
    /// Clients served at once; past it new ones are closed at once [default: what the open-file limit allows]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_clients: Option<u64>,
    /// Close clients that send no version within this many seconds (0 = never)
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    handshake_timeout: u64,
    /// Unread reply bytes a client may leave queued before it is disconnected
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_output: u64,
    /// Bytes read from one client per loop turn, so a flood cannot starve others
    #[arg(long, value_name = "BYTES", default_value_t = tripcd::reactor::READ_BUDGET_PER_TURN as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    read_budget: u64,
    /// Directory of *.rhai scripts [default: <state-dir>/scripts, if it exists]
    #[arg(long, value_name = "DIR")]
    scripts: Option<PathBuf>,
    /// Most Rhai operations one script call may run (0 = no limit)
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_operations)]
    script_max_operations: u64,
    /// Longest time one script call may run, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = Limits::default().timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    script_timeout_ms: u64,
    /// Deepest nesting of function calls in a script
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_call_depth)]
    script_max_call_depth: usize,
    /// Deepest nesting of expressions in a script (checked when it compiles)
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_expr_depth)]
    script_max_expr_depth: usize,
    /// Longest string a script may build, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_string)]
    script_max_string: usize,
    /// Most elements of an array (or bytes of a blob) a script may build
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_array)]
    script_max_array: usize,
    /// Most entries of a map a script may build
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_map)]
    script_max_map: usize,
}

/// An octal file mode such as `600` or `0660`.
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode like 600 or 660")),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        eprintln!("tripcd: HOME is not set; give --socket, --state-dir and --download-dir");
        return ExitCode::from(2);
    };
    let mut config = Config::defaults(&home);
    if let Some(dir) = args.state_dir {
        config.socket = dir.join("socket");
        config.state_dir = dir;
    }
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    if let Some(dir) = args.download_dir {
        config.download_dir = dir;
    }
    config.max_message = args.max_message as usize;
    config.idle_timeout = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    config.check_slice = Duration::from_millis(args.check_slice_ms);
    config.scripts = args.scripts;
    config.socket_mode = args.socket_mode;
    config.socket_group = args.socket_group;
    config.allow_uids = args.allow_uid;
    config.allow_gids = args.allow_gid;
    config.max_clients = args.max_clients.map(|n| n as usize);
    config.handshake_timeout =
        (args.handshake_timeout > 0).then(|| Duration::from_secs(args.handshake_timeout));
    config.max_output = args.max_output as usize;
    config.read_budget = args.read_budget as usize;
    config.script_limits = Limits {
        max_operations: args.script_max_operations,
        timeout: Duration::from_millis(args.script_timeout_ms),
        max_call_depth: args.script_max_call_depth,
        max_expr_depth: args.script_max_expr_depth,
        max_string: args.script_max_string,
        max_array: args.script_max_array,
        max_map: args.script_max_map,
    };
    match daemon::run(&config) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tripcd: {e}");
            ExitCode::FAILURE
        }
    }
}

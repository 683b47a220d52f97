//! The daemon's configuration: every option, its default written once
//! (clap reads both from this type), passed down whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};

use crate::scripts::Limits;

/// Bytes read from one client per loop turn, so that one flooding client
/// cannot starve the others; the rest is read on the next turn.
pub const READ_BUDGET_PER_TURN: usize = 256 << 10;

/// Everything the daemon needs to start.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Socket to listen on [default: <state-dir>/socket]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// State directory: settings, torrents, lock [default: ~/.transmission/daemon]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Default download directory of a fresh state directory [default: ~/Downloads]
    #[arg(long, value_name = "DIR")]
    pub download_dir: Option<PathBuf>,
    /// Largest message payload accepted, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u64).range(1..=0x7FFF_FFF8))]
    pub max_message: u64,
    /// Close clients silent for this many seconds (0 = never)
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub idle_timeout: u64,
    /// Longest time one slice of hash checking may hold the event loop, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub check_slice_ms: u64,
    /// Mode of the socket file, in octal; the daemon also checks each
    /// client's credentials (see --allow-uid)
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Group of the socket file (name or number)
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Also let in this user id (the daemon's own user and root always are); repeatable
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uids: Vec<u32>,
    /// Also let in clients whose primary group is this id; repeatable
    #[arg(long = "allow-gid", value_name = "GID")]
    pub allow_gids: Vec<u32>,
    /// Clients served at once; past it new ones are closed at once [default: what the open-file limit allows]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_clients: Option<u64>,
    /// Close clients that send no version within this many seconds (0 = never)
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Unread reply bytes a client may leave queued before it is disconnected
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub max_output: u64,
    /// Bytes read from one client per loop turn, so a flood cannot starve others
    #[arg(long, value_name = "BYTES", default_value_t = READ_BUDGET_PER_TURN as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub read_budget: u64,
    /// Address the peer port (the `port` setting) listens on
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub peer_bind: std::net::IpAddr,
    /// Contact trackers (false: never, e.g. on a network without them or
    /// in tests; peers then come only from incoming connections)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub announce: bool,
    /// Peer connections in all torrents together
    #[arg(long, value_name = "N", default_value_t = 240,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_peers: u64,
    /// Peer connections of one torrent
    #[arg(long, value_name = "N", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_peers_per_torrent: u64,
    /// Outgoing peer connections being set up at once
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_half_open: u64,
    /// Longest one tracker announce or scrape may take, in seconds: an
    /// HTTP(S) request with its redirects, or a UDP exchange, whose
    /// retransmissions start at a quarter of it and double (BEP 15's 15 s
    /// at the default)
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tracker_timeout: u64,
    /// Run a DHT node (BEP 5) on the peer port, for torrents that are not
    /// private, while the `dht` setting says so too (the default)
    #[arg(long = "dht", overrides_with = "no_dht")]
    pub dht_on: bool,
    /// No DHT at all, whatever the `dht` setting says
    #[arg(long = "no-dht", overrides_with = "dht_on")]
    pub no_dht: bool,
    /// A DHT bootstrap router (repeatable; given once, it replaces the
    /// defaults), resolved off the loop
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = parse_host_port,
          default_values = DHT_ROUTERS)]
    pub dht_bootstrap: Vec<HostPort>,
    /// Serve Transmission's JSON RPC and the web interface on this address
    #[arg(
        long = "rpc-bind",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:9091"
    )]
    pub rpc_bind: std::net::SocketAddr,
    /// Serve the JSON RPC (the default)
    #[arg(long = "rpc", overrides_with = "no_rpc")]
    pub rpc_on: bool,
    /// No JSON RPC server (the IPC socket only)
    #[arg(long = "no-rpc", overrides_with = "rpc_on")]
    pub no_rpc: bool,
    /// The RPC's path prefix: the RPC answers at <URL>rpc, the web
    /// interface at <URL>web/
    #[arg(long = "rpc-url", value_name = "URL", default_value = "/transmission/")]
    pub rpc_url: String,
    /// RPC user name; with --rpc-password-file every RPC request must
    /// authenticate (HTTP Basic)
    #[arg(long = "rpc-username", value_name = "USER", default_value = "")]
    pub rpc_username: String,
    /// File holding the RPC password, or its hash as `tripcd
    /// --hash-password` prints it (or Transmission's settings.json stores
    /// it); read at start, never logged
    #[arg(long = "rpc-password-file", value_name = "FILE")]
    pub rpc_password_file: Option<PathBuf>,
    /// RPC client addresses allowed, comma-separated, `*` matching
    /// anything (`192.168.*.*`); `*` lets everyone in
    #[arg(
        long = "rpc-whitelist",
        value_name = "LIST",
        default_value = "127.0.0.1,::1"
    )]
    pub rpc_whitelist: String,
    /// Host names RPC requests may name besides localhost and IP literals,
    /// against DNS rebinding; `*` turns the check off
    #[arg(long = "rpc-host-whitelist", value_name = "LIST", default_value = "")]
    pub rpc_host_whitelist: String,
    /// Refuse every RPC request after this many failed logins in a row,
    /// until restart (0 = never; failed logins are rate-limited anyway)
    #[arg(long = "rpc-lockout", value_name = "N", default_value_t = 0)]
    pub rpc_lockout: u32,
    /// The web interface's files (Transmission's web folder)
    /// [default: /usr/share/transmission/web if it exists]
    #[arg(long = "web-dir", value_name = "DIR", env = "TRANSMISSION_WEB_HOME")]
    pub web_dir: Option<PathBuf>,
    /// Directory of *.rhai scripts [default: <state-dir>/scripts, if it exists]
    #[arg(long, value_name = "DIR")]
    pub scripts: Option<PathBuf>,
    /// Bounds on every script call.
    #[command(flatten)]
    pub script_limits: Limits,
}

/// The DHT's well-known bootstrap routers, as libtorrent and Transmission
/// use them.
const DHT_ROUTERS: [&str; 4] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
];

/// A host name or address, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A name, or an address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

/// `host:port`, `a.b.c.d:port` or `[v6]:port`.
fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let bad = || format!("{s:?} is not HOST:PORT");
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, p) = v6.split_once("]:").ok_or_else(bad)?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(bad)?
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// An octal file mode such as `600` or `0660`.
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode like 600 or 660")),
    }
}

/// The command line with nothing given, for [`defaults`].
#[derive(Parser)]
struct Bare {
    #[command(flatten)]
    config: Config,
}

/// Every option at its default.
pub fn defaults() -> Config {
    // Parsing an empty command line cannot fail: every option is optional.
    match Bare::try_parse_from(["tripcd"]) {
        Ok(b) => b.config,
        Err(e) => unreachable!("the empty command line is valid: {e}"),
    }
}

impl Default for Config {
    fn default() -> Config {
        defaults()
    }
}

fn seconds(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

/// Where Debian's `transmission-common` installs the web interface.
pub const SYSTEM_WEB_DIR: &str = "/usr/share/transmission/web";

impl Config {
    /// The web interface's directory: `--web-dir` (or
    /// `TRANSMISSION_WEB_HOME`), else the system's if installed.
    pub fn web_dir(&self) -> Option<PathBuf> {
        self.web_dir.clone().or_else(|| {
            let system = Path::new(SYSTEM_WEB_DIR);
            system
                .join("index.html")
                .is_file()
                .then(|| system.to_path_buf())
        })
    }

    /// Whether the DHT may run (`--no-dht` not given).
    pub fn dht(&self) -> bool {
        !self.no_dht
    }

    /// Every option at its default, with the original daemon's paths under
    /// `home` (state in `~/.transmission/daemon`, data in `~/Downloads`).
    pub fn under_home(home: &Path) -> Config {
        Config::default().with_home(home)
    }

    /// Fills the paths not given with the original daemon's, under `home`.
    pub fn with_home(mut self, home: &Path) -> Config {
        let state = self
            .state_dir
            .get_or_insert_with(|| home.join(".transmission").join("daemon"))
            .clone();
        self.socket.get_or_insert_with(|| state.join("socket"));
        self.download_dir
            .get_or_insert_with(|| home.join("Downloads"));
        self
    }

    /// Whether every path is known (given, or filled from a home).
    pub fn has_paths(&self) -> bool {
        self.state_dir.is_some() && self.download_dir.is_some()
    }

    /// The state directory ("." if unknown: see [`Config::has_paths`]).
    pub fn state_dir(&self) -> &Path {
        self.state_dir.as_deref().unwrap_or(Path::new("."))
    }

    /// The socket: as given, else `<state-dir>/socket`.
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.state_dir().join("socket"))
    }

    /// The default `directory` setting of a fresh state directory.
    pub fn download_dir(&self) -> PathBuf {
        self.download_dir
            .clone()
            .unwrap_or_else(|| self.state_dir().join("downloads"))
    }

    /// Largest payload accepted from a client.
    pub fn max_message(&self) -> usize {
        usize::try_from(self.max_message).unwrap_or(usize::MAX)
    }

    /// Close clients silent for this long (`None`: never).
    pub fn idle_timeout(&self) -> Option<Duration> {
        seconds(self.idle_timeout)
    }

    /// Close clients that have not sent their version this long after
    /// connecting (`None`: never).
    pub fn handshake_timeout(&self) -> Option<Duration> {
        seconds(self.handshake_timeout)
    }

    /// Longest time one slice of verification may hold the loop.
    pub fn check_slice(&self) -> Duration {
        Duration::from_millis(self.check_slice_ms)
    }

    /// Unread replies a client may leave queued before it is disconnected.
    pub fn max_output(&self) -> usize {
        usize::try_from(self.max_output).unwrap_or(usize::MAX)
    }

    /// Bytes read from one client per loop turn.
    pub fn read_budget(&self) -> usize {
        usize::try_from(self.read_budget).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_command_lines() {
        let c = Config::under_home(Path::new("/home/u"));
        assert_eq!(c.state_dir(), Path::new("/home/u/.transmission/daemon"));
        assert_eq!(
            c.socket(),
            PathBuf::from("/home/u/.transmission/daemon/socket")
        );
        assert_eq!(c.download_dir(), PathBuf::from("/home/u/Downloads"));
        assert_eq!(c.idle_timeout(), Some(Duration::from_secs(60)));
        assert_eq!(c.handshake_timeout(), Some(Duration::from_secs(10)));
        assert_eq!(c.max_message(), 16 << 20);
        assert_eq!(c.read_budget(), READ_BUDGET_PER_TURN);
        assert_eq!(c.script_limits.timeout(), Duration::from_millis(50));
        let given = Config {
            state_dir: Some("/s".into()),
            ..Config::default()
        }
        .with_home(Path::new("/h"));
        assert_eq!(given.socket(), PathBuf::from("/s/socket"));
    }
}

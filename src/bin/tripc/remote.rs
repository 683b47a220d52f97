//! What `tripc` does: a list of actions, run in the order given against
//! the daemon, each answer waited for and reported.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use tripcd::client::{Client, ClientError, Message};
use tripcd::codec::json::to_json;
use tripcd::codec::Value;
use tripcd::registry::metainfo::{hex, parse_hash};

/// Which torrents an action means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every torrent.
    All,
    /// The torrent with this info hash.
    Hash([u8; 20]),
}

impl std::str::FromStr for Target {
    type Err = String;

    /// `all`, or 40 hex digits in any case.
    fn from_str(s: &str) -> Result<Target, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Target::All);
        }
        parse_hash(s.as_bytes())
            .map(Target::Hash)
            .ok_or_else(|| format!("expected `all` or a 40-digit hex info hash, not {s:?}"))
    }
}

/// One thing to ask of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Add torrent files (absolute paths).
    Add(Vec<PathBuf>),
    /// Add magnet links.
    AddMagnet(String),
    /// Print the torrents with their status.
    List,
    /// Print the torrents with their info hashes.
    Info,
    /// Start torrents.
    Start(Target),
    /// Stop torrents.
    Stop(Target),
    /// Check torrents' data again.
    Verify(Target),
    /// Remove torrents (never their data).
    Remove(Target),
    /// Set the peer port.
    Port(u16),
    /// Set (or lift, with `None`) the download limit in KiB/s.
    DownLimit(Option<i64>),
    /// Set (or lift, with `None`) the upload limit in KiB/s.
    UpLimit(Option<i64>),
    /// Enable or disable peer exchange.
    Pex(bool),
    /// Enable or disable the DHT.
    Dht(bool),
    /// Enable or disable automatic port mapping.
    Automap(bool),
    /// Set the default download folder for new torrents.
    Folder(PathBuf),
    /// Set the encryption mode, spelled as the user gave it (the daemon
    /// echoes that spelling).
    Encryption(String),
    /// Stop the daemon.
    Quit,
    /// Send any key with any value; print the reply.
    Call(String, Value),
}

/// Why `tripc` failed.
#[derive(Debug)]
pub enum RemoteError {
    /// The daemon refused or could not be reached.
    Client(ClientError),
    /// No torrent has this hash.
    UnknownHash(String),
    /// The daemon answered something unexpected.
    Unexpected(String),
    /// Printing failed.
    Output(std::io::Error),
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::Client(e) => e.fmt(f),
            RemoteError::UnknownHash(h) => write!(f, "no torrent has info hash {h}"),
            RemoteError::Unexpected(m) => write!(f, "unexpected answer: {m}"),
            RemoteError::Output(e) => write!(f, "cannot print: {e}"),
        }
    }
}

impl std::error::Error for RemoteError {}

impl From<ClientError> for RemoteError {
    fn from(e: ClientError) -> Self {
        RemoteError::Client(e)
    }
}

impl From<std::io::Error> for RemoteError {
    fn from(e: std::io::Error) -> Self {
        RemoteError::Output(e)
    }
}

/// How to print.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// One JSON document per action instead of text.
    pub json: bool,
    /// Width to fit tables into (`None`: no limit).
    pub width: Option<usize>,
}

/// Runs `actions` in order, stopping at the first failure.
pub fn run(
    client: &mut Client,
    actions: &[Action],
    style: Style,
    out: &mut impl Write,
) -> Result<(), RemoteError> {
    for action in actions {
        run_one(client, action, style, out)?;
    }
    Ok(())
}

/// Adds the torrent file `file`; its id.
fn add(client: &mut Client, file: &std::path::Path) -> Result<i64, RemoteError> {
    let req = Value::dict([(
        "file",
        Value::Bytes(file.as_os_str().as_encoded_bytes().to_vec()),
    )]);
    let reply = client.request("addfile-detailed", &req)?;
    first_id(&reply).ok_or_else(|| RemoteError::Unexpected(format!("{reply:?}")))
}

/// The `id` of the first dict of an `info` reply.
fn first_id(reply: &Option<Message>) -> Option<i64> {
    reply
        .as_ref()
        .and_then(|m| m.value.as_list())
        .and_then(|l| l.first())
        .and_then(|d| d.get("id"))
        .and_then(Value::as_int)
}

/// Sends any key and prints the reply as it came. An error reply is the
/// exit status and its one line on stderr instead: printed on stdout too,
/// a terminal would show it twice. With `--json` the reply is printed all
/// the same, as scripts read every answer from stdout.
fn call(
    client: &mut Client,
    key: &str,
    value: &Value,
    style: Style,
    out: &mut impl Write,
) -> Result<(), RemoteError> {
    let reply = client.call(key, value)?;
    let error = match reply.key.as_str() {
        "failed" => Some(ClientError::Failed(
            reply.value.as_str().unwrap_or("").to_string(),
        )),
        "not-supported" => Some(ClientError::NotSupported(key.to_string())),
        "bad-format" => Some(ClientError::BadFormat(key.to_string())),
        _ => None,
    };
    if style.json {
        let j = json!({ "key": reply.key, "value": to_json(&reply.value) });
        writeln!(out, "{j}")?;
    } else if error.is_none() {
        writeln!(out, "{} {}", reply.key, to_json(&reply.value))?;
    }
    match error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn run_one(
    client: &mut Client,
    action: &Action,
    style: Style,
    out: &mut impl Write,
) -> Result<(), RemoteError> {
    let mut done = |what: String, out: &mut dyn Write| -> Result<(), RemoteError> {
        if style.json {
            writeln!(out, "{}", json!({ "ok": true, "done": what }))?;
        } else {
            writeln!(out, "{what}")?;
        }
        Ok(())
    };
    match action {
        Action::Add(files) => {
            for file in files {
                let id = add(client, file)?;
                done(format!("added {} as torrent {id}", file.display()), out)?;
            }
        }
        Action::AddMagnet(uri) => {
            let reply = client.request("addmagnet", &Value::List(vec![Value::str(uri)]))?;
            let id =
                first_id(&reply).ok_or_else(|| RemoteError::Unexpected(format!("{reply:?}")))?;
            done(format!("added the magnet link as torrent {id}"), out)?;
        }
        Action::List => list(client, style, out)?,
        Action::Info => info(client, style, out)?,
        Action::Start(t) => act(client, "start", t, out, &mut done)?,
        Action::Stop(t) => act(client, "stop", t, out, &mut done)?,
        Action::Remove(t) => act(client, "remove", t, out, &mut done)?,
        Action::Verify(t) => verify(client, t, out, &mut done)?,
        Action::Port(p) => {
            client.request("port", &Value::Int((*p).into()))?;
            done(format!("port set to {p}"), out)?;
        }
        Action::DownLimit(l) => {
            client.request("downlimit", &Value::Int(l.unwrap_or(-1)))?;
            done(limit_text("download", *l), out)?;
        }
        Action::UpLimit(l) => {
            client.request("uplimit", &Value::Int(l.unwrap_or(-1)))?;
            done(limit_text("upload", *l), out)?;
        }
        Action::Pex(on) => {
            client.request("pex", &Value::Int((*on).into()))?;
            done(format!("peer exchange {}", on_off(*on)), out)?;
        }
        Action::Dht(on) => {
            client.request("dht", &Value::Int((*on).into()))?;
            done(format!("DHT {}", on_off(*on)), out)?;
        }
        Action::Automap(on) => {
            client.request("automap", &Value::Int((*on).into()))?;
            done(format!("port mapping {}", on_off(*on)), out)?;
        }
        Action::Folder(dir) => {
            let v = Value::Bytes(dir.as_os_str().as_encoded_bytes().to_vec());
            client.request("directory", &v)?;
            done(format!("download folder set to {}", dir.display()), out)?;
        }
        Action::Encryption(mode) => {
            client.request("encryption", &Value::str(mode))?;
            done(format!("encryption set to {mode}"), out)?;
        }
        Action::Quit => {
            // The daemon may close the connection before answering.
            match client.request("quit", &Value::empty()) {
                Ok(_) | Err(ClientError::Closed) => {}
                Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => return Err(e.into()),
            }
            done("daemon told to quit".into(), out)?;
        }
        Action::Call(key, value) => call(client, key, value, style, out)?,
    }
    Ok(())
}

fn on_off(on: bool) -> &'static str {
    if on {
        "enabled"
    } else {
        "disabled"
    }
}

fn limit_text(which: &str, l: Option<i64>) -> String {
    match l {
        Some(kib) if kib >= 0 => format!("{which} limit set to {kib} KiB/s"),
        _ => format!("{which} limit removed"),
    }
}

type Done<'a> = dyn FnMut(String, &mut dyn Write) -> Result<(), RemoteError> + 'a;

fn act(
    client: &mut Client,
    key: &str,
    target: &Target,
    out: &mut impl Write,
    done: &mut Done<'_>,
) -> Result<(), RemoteError> {
    match target {
        Target::All => {
            client.request(&format!("{key}-all"), &Value::empty())?;
            done(format!("{key}: all torrents"), out)
        }
        Target::Hash(h) => {
            let id = id_of(client, h)?;
            client.request(key, &Value::List(vec![Value::Int(id)]))?;
            done(format!("{key}: torrent {id} ({})", hex(h)), out)
        }
    }
}

/// `verify` has no `-all` form: `all` sends every torrent's id.
fn verify(
    client: &mut Client,
    target: &Target,
    out: &mut impl Write,
    done: &mut Done<'_>,
) -> Result<(), RemoteError> {
    let (ids, what) = match target {
        Target::All => {
            let infos = data_list(client, "get-info-all", &[])?;
            let ids = infos.iter().map(|i| Value::Int(int(i, "id"))).collect();
            (ids, "all torrents".to_string())
        }
        Target::Hash(h) => {
            let id = id_of(client, h)?;
            (vec![Value::Int(id)], format!("torrent {id} ({})", hex(h)))
        }
    };
    client.request("verify", &Value::List(ids))?;
    done(format!("verify: {what}"), out)
}

fn id_of(client: &mut Client, hash: &[u8; 20]) -> Result<i64, RemoteError> {
    let reply = client.request("lookup", &Value::List(vec![Value::from(hex(hash))]))?;
    first_id(&reply).ok_or_else(|| RemoteError::UnknownHash(hex(hash)))
}

/// The data reply's list, or an error naming what came instead.
fn data_list(client: &mut Client, key: &str, types: &[&str]) -> Result<Vec<Value>, RemoteError> {
    let types = Value::List(types.iter().map(|t| Value::str(t)).collect());
    match client.request(key, &types)? {
        Some(m) => match m.value {
            Value::List(l) => Ok(l),
            other => Err(RemoteError::Unexpected(format!("{other:?}"))),
        },
        None => Err(RemoteError::Unexpected("succeeded instead of data".into())),
    }
}

/// One row of `-l`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: i64,
    name: String,
    size: i64,
    state: String,
    completed: i64,
    down: i64,
    up: i64,
    eta: i64,
    /// The error code ("" when none) and its text.
    error: String,
    error_message: String,
    /// A magnet's metadata: how much is in (100 once known), from how
    /// many peers.
    metadata_percent: i64,
    metadata_peers: i64,
}

impl Row {
    /// The state to show: `error` rather than `downloading` or `seeding`
    /// when a data error (any but a tracker's) keeps the torrent from
    /// moving data; the daemon still reports the phase it would be in.
    fn shown_state(&self) -> &str {
        let data_error = !self.error.is_empty() && !self.error.starts_with("tracker-");
        if data_error && matches!(self.state.as_str(), "downloading" | "seeding") {
            "error"
        } else {
            &self.state
        }
    }

    /// The line under the row: the error's code and message, if any, or
    /// a magnet's metadata fetch.
    fn note(&self) -> Option<String> {
        let fetching = self.metadata_percent < 100 && self.state == "downloading";
        if self.error.is_empty() && fetching {
            let peers = match self.metadata_peers {
                1 => "1 peer".to_string(),
                n => format!("{n} peers"),
            };
            Some(format!(
                "    fetching metadata from {peers} ({}%)",
                self.metadata_percent
            ))
        } else if self.error.is_empty() {
            None
        } else if self.error_message.is_empty() {
            Some(format!("    {}", self.error))
        } else {
            Some(format!("    {}: {}", self.error, self.error_message))
        }
    }

    fn progress(&self) -> f64 {
        if self.metadata_percent < 100 {
            // Its size is not known yet.
            0.0
        } else if self.size == 0 {
            100.0
        } else {
            self.completed as f64 * 100.0 / self.size as f64
        }
    }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_bytes)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

fn int(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_int).unwrap_or(0)
}

fn list(client: &mut Client, style: Style, out: &mut impl Write) -> Result<(), RemoteError> {
    let infos = data_list(client, "get-info-all", &["name", "size"])?;
    let statuses = data_list(
        client,
        "get-status-all",
        &[
            "state",
            "completed",
            "download-speed",
            "upload-speed",
            "eta",
            "error",
            "error-message",
            "metadata-percent",
            "metadata-peers",
        ],
    )?;
    let rows: Vec<Row> = infos
        .iter()
        .map(|i| {
            let id = int(i, "id");
            let st = statuses.iter().find(|s| int(s, "id") == id);
            let st_int = |k| st.map_or(0, |s| int(s, k));
            Row {
                id,
                name: text(i, "name"),
                size: int(i, "size"),
                state: st.map(|s| text(s, "state")).unwrap_or_default(),
                completed: st_int("completed"),
                down: st_int("download-speed"),
                up: st_int("upload-speed"),
                eta: st.map_or(-1, |s| int(s, "eta")),
                error: st.map(|s| text(s, "error")).unwrap_or_default(),
                error_message: st.map(|s| text(s, "error-message")).unwrap_or_default(),
                // An older daemon has no such field: its torrents all have
                // metadata.
                metadata_percent: st
                    .and_then(|s| s.get("metadata-percent"))
                    .and_then(Value::as_int)
                    .unwrap_or(100),
                metadata_peers: st_int("metadata-peers"),
            }
        })
        .collect();
    if style.json {
        let arr: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "id": r.id, "name": r.name, "size": r.size, "state": r.state,
                    "completed": r.completed, "progress": (r.progress() * 10.0).round() / 10.0,
                    "download_speed": r.down, "upload_speed": r.up, "eta": r.eta,
                    "error": r.error, "error_message": r.error_message,
                    "metadata_percent": r.metadata_percent,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(arr))?;
        return Ok(());
    }
    let header = ["ID", "NAME", "SIZE", "STATE", "DONE", "DOWN", "UP", "ETA"];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.name.clone(),
                human_bytes(r.size),
                r.shown_state().to_string(),
                format!("{:.1}%", r.progress()),
                format!("{}/s", human_bytes(r.down)),
                format!("{}/s", human_bytes(r.up)),
                if r.eta < 0 {
                    "-".to_string()
                } else {
                    human_duration(r.eta)
                },
            ]
        })
        .collect();
    // A torrent's error goes on a line of its own under its row, cut to
    // the terminal's width: a message naming a path can be long.
    let notes: Vec<Option<String>> = rows.iter().map(Row::note).collect();
    print_table(out, &header, &cells, &notes, 1, style.width)
}

fn info(client: &mut Client, style: Style, out: &mut impl Write) -> Result<(), RemoteError> {
    let infos = data_list(client, "get-info-all", &["hash", "name"])?;
    if style.json {
        let arr: Vec<_> = infos
            .iter()
            .map(
                |i| json!({ "id": int(i, "id"), "hash": text(i, "hash"), "name": text(i, "name") }),
            )
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(arr))?;
        return Ok(());
    }
    let cells: Vec<[String; 3]> = infos
        .iter()
        .map(|i| [int(i, "id").to_string(), text(i, "hash"), text(i, "name")])
        .collect();
    print_table(out, &["ID", "HASH", "NAME"], &cells, &[], 2, style.width)
}

/// Prints aligned columns; column `flex` (the name) is cut to fit `width`.
/// A row's note, if any, follows it on a line of its own, cut likewise.
fn print_table<const N: usize>(
    out: &mut impl Write,
    header: &[&str; N],
    rows: &[[String; N]],
    notes: &[Option<String>],
    flex: usize,
    width: Option<usize>,
) -> Result<(), RemoteError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    if let Some(total) = width {
        let others: usize = widths
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != flex)
            .map(|(_, w)| w + 2)
            .sum();
        widths[flex] = widths[flex].min(total.saturating_sub(others).max(8));
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let cell = fit(cell, *w);
            let numeric = i == 0 || (i != flex && cell.starts_with(|c: char| c.is_ascii_digit()));
            if i > 0 {
                s.push_str("  ");
            }
            if numeric {
                s.push_str(&format!("{cell:>w$}"));
            } else {
                s.push_str(&format!("{cell:<w$}"));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for (i, row) in rows.iter().enumerate() {
        writeln!(out, "{}", line(row.to_vec()))?;
        if let Some(Some(note)) = notes.get(i) {
            let note = match width {
                Some(w) => fit(note, w),
                None => note.clone(),
            };
            writeln!(out, "{note}")?;
        }
    }
    Ok(())
}

/// Cuts `s` to `w` characters, marking the cut with `…`.
fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Bytes as a short human figure (binary units).
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n.max(0) as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripcd::codec::json::from_json;

    #[test]
    fn targets_parse() {
        assert_eq!("ALL".parse::<Target>(), Ok(Target::All));
        let h = "C67A91B952CB2CE1B3FF7EFFB92DB48ECEAFEDF8"
            .parse::<Target>()
            .unwrap();
        assert_eq!(
            h,
            Target::Hash(parse_hash(b"c67a91b952cb2ce1b3ff7effb92db48eceafedf8").unwrap())
        );
        assert!("abc".parse::<Target>().is_err());
    }

    #[test]
    fn json_round_trips_through_values() {
        let j: serde_json::Value =
            serde_json::from_str(r#"{"id":[1,2],"type":["name"],"x":true,"n":null}"#).unwrap();
        let v = from_json(&j).unwrap();
        assert_eq!(v.get("x"), Some(&Value::Int(1)));
        assert_eq!(v.get("n"), Some(&Value::empty()));
        assert_eq!(to_json(&v)["id"], json!([1, 2]));
        assert!(from_json(&json!(1.5)).is_err());
    }

    #[test]
    fn tables_fit_the_width() {
        let rows = vec![[
            "1".to_string(),
            "a very long torrent name indeed".to_string(),
        ]];
        let mut out = Vec::new();
        let notes = [Some("    tracker-error: could not connect".to_string())];
        print_table(&mut out, &["ID", "NAME"], &rows, &notes, 1, Some(16)).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in text.lines() {
            assert!(line.chars().count() <= 16, "{line:?}");
        }
        assert!(text.contains('…'));
        assert_eq!(text.lines().last(), Some("    tracker-err…"));
    }

    #[test]
    fn errors_show_in_the_state_and_under_the_row() {
        let row = |state: &str, error: &str, message: &str| Row {
            id: 1,
            name: "a".into(),
            size: 10,
            state: state.into(),
            completed: 0,
            down: 0,
            up: 0,
            eta: -1,
            error: error.into(),
            error_message: message.into(),
            metadata_percent: 100,
            metadata_peers: 0,
        };
        let data = row("downloading", "io-other", "/d/x: Not a directory");
        assert_eq!(data.shown_state(), "error");
        assert_eq!(
            data.note().as_deref(),
            Some("    io-other: /d/x: Not a directory")
        );
        assert_eq!(row("seeding", "io-parent", "gone").shown_state(), "error");
        // Stopped or being checked: the state says more than "error".
        assert_eq!(row("paused", "io-parent", "gone").shown_state(), "paused");
        // A tracker's complaint does not stop the torrent.
        let tracker = row("seeding", "tracker-error", "refused");
        assert_eq!(tracker.shown_state(), "seeding");
        assert_eq!(
            tracker.note().as_deref(),
            Some("    tracker-error: refused")
        );
        assert_eq!(
            row("downloading", "io-space", "").note().as_deref(),
            Some("    io-space")
        );
        let fine = row("downloading", "", "");
        assert_eq!((fine.shown_state(), fine.note()), ("downloading", None));
        let magnet = Row {
            metadata_percent: 40,
            metadata_peers: 3,
            size: 0,
            ..row("downloading", "", "")
        };
        assert_eq!(
            magnet.note().as_deref(),
            Some("    fetching metadata from 3 peers (40%)")
        );
    }

    #[test]
    fn human_figures() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(51600), "50.4 KiB");
        assert_eq!(human_duration(3725), "1h02m");
    }
}

//! The daemon-wide settings and their file format.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::codec::Value;

/// How peer connections are encrypted (protocol 1.06's `encryption`).
///
/// `Plaintext` and `Tolerated` are the same mode, spelled by protocol 1.06
/// and 1.20; they are kept apart only so the daemon can answer with the
/// spelling the client used last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// Only encrypted connections.
    Required,
    /// Encrypted when the peer can, plaintext otherwise.
    Preferred,
    /// Plaintext allowed, spelled as protocol 1.06 does.
    Plaintext,
    /// Plaintext allowed, spelled as protocol 1.20 does.
    Tolerated,
}

impl Encryption {
    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Required => "required",
            Encryption::Preferred => "preferred",
            Encryption::Plaintext => "plaintext",
            Encryption::Tolerated => "tolerated",
        }
    }

    /// Reads the protocol's spelling; anything else is `None`.
    pub fn parse(bytes: &[u8]) -> Option<Encryption> {
        match bytes {
            b"required" => Some(Encryption::Required),
            b"preferred" => Some(Encryption::Preferred),
            b"plaintext" => Some(Encryption::Plaintext),
            b"tolerated" => Some(Encryption::Tolerated),
            _ => None,
        }
    }

    /// Plaintext connections are allowed (either spelling of that mode).
    pub fn is_tolerated(self) -> bool {
        matches!(self, Encryption::Plaintext | Encryption::Tolerated)
    }
}

/// Daemon-wide settings, as clients set and read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Port for incoming peer connections.
    pub port: u16,
    /// Automatic port mapping (UPnP/NAT-PMP).
    pub automap: bool,
    /// Start newly added torrents.
    pub autostart: bool,
    /// Peer exchange.
    pub pex: bool,
    /// Download limit in KiB/s; negative means none.
    pub downlimit: i64,
    /// Upload limit in KiB/s; negative means none.
    pub uplimit: i64,
    /// Default directory for the data of torrents added from now on.
    pub directory: PathBuf,
    /// Encryption of peer connections.
    pub encryption: Encryption,
    /// The distributed hash table (BEP 5) for torrents that are not
    /// private.
    pub dht: bool,
    /// The download limit (KiB/s) kept while `downlimit` says none: the
    /// RPC shows a limit's number and its switch apart
    /// (`speed-limit-down`, `speed-limit-down-enabled`), where the IPC's
    /// one number says none when negative.
    pub downlimit_kept: u64,
    /// The upload limit (KiB/s) kept while `uplimit` says none.
    pub uplimit_kept: u64,
}

/// The limit a switched-off limit keeps until a client sets one:
/// Transmission's default, 100 KB/s.
const KEPT_LIMIT_DEFAULT: u64 = 100;

impl Settings {
    /// The settings of a fresh state directory (PROTOCOL.md 4).
    pub fn defaults(directory: PathBuf) -> Settings {
        Settings {
            port: 9090,
            automap: false,
            autostart: true,
            pex: true,
            downlimit: -1,
            uplimit: -1,
            directory,
            // Transmission's default.
            encryption: Encryption::Preferred,
            // Transmission's default.
            dht: true,
            downlimit_kept: KEPT_LIMIT_DEFAULT,
            uplimit_kept: KEPT_LIMIT_DEFAULT,
        }
    }

    /// The protocol keys of the settings that differ between `self` and
    /// `other`.
    pub fn differences(&self, other: &Settings) -> Vec<&'static str> {
        [
            ("port", self.port != other.port),
            ("automap", self.automap != other.automap),
            ("autostart", self.autostart != other.autostart),
            ("pex", self.pex != other.pex),
            ("downlimit", self.downlimit != other.downlimit),
            ("uplimit", self.uplimit != other.uplimit),
            ("directory", self.directory != other.directory),
            ("encryption", self.encryption != other.encryption),
            ("dht", self.dht != other.dht),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }

    /// The form kept on disk.
    pub fn to_value(&self) -> Value {
        Value::dict([
            ("automap", Value::Int(self.automap.into())),
            ("autostart", Value::Int(self.autostart.into())),
            ("dht", Value::Int(self.dht.into())),
            (
                "directory",
                Value::Bytes(self.directory.as_os_str().as_bytes().to_vec()),
            ),
            ("downlimit", Value::Int(self.downlimit)),
            (
                "downlimit-kept",
                Value::Int(i64::try_from(self.downlimit_kept).unwrap_or(i64::MAX)),
            ),
            ("encryption", Value::str(self.encryption.as_str())),
            ("pex", Value::Int(self.pex.into())),
            ("port", Value::Int(self.port.into())),
            ("uplimit", Value::Int(self.uplimit)),
            (
                "uplimit-kept",
                Value::Int(i64::try_from(self.uplimit_kept).unwrap_or(i64::MAX)),
            ),
        ])
    }

    /// Reads the form kept on disk. Keys it lacks keep the given defaults
    /// (so a file from an older version still loads); a key of the wrong
    /// type means the file is not ours, and is an error naming the key.
    pub fn from_value(value: &Value, defaults: Settings) -> Result<Settings, String> {
        if value.as_dict().is_none() {
            return Err("settings are not a dict".into());
        }
        let mut s = defaults;
        let int = |key: &str| -> Result<Option<i64>, String> {
            match value.get(key) {
                None => Ok(None),
                Some(Value::Int(i)) => Ok(Some(*i)),
                Some(_) => Err(format!("settings key {key:?} is not an integer")),
            }
        };
        if let Some(p) = int("port")? {
            s.port = u16::try_from(p).map_err(|_| format!("settings port {p} out of range"))?;
        }
        if let Some(v) = int("automap")? {
            s.automap = v != 0;
        }
        if let Some(v) = int("autostart")? {
            s.autostart = v != 0;
        }
        if let Some(v) = int("pex")? {
            s.pex = v != 0;
        }
        if let Some(v) = int("dht")? {
            s.dht = v != 0;
        }
        if let Some(v) = int("downlimit")? {
            s.downlimit = v;
        }
        if let Some(v) = int("downlimit-kept")? {
            s.downlimit_kept = u64::try_from(v).unwrap_or(KEPT_LIMIT_DEFAULT);
        }
        if let Some(v) = int("uplimit-kept")? {
            s.uplimit_kept = u64::try_from(v).unwrap_or(KEPT_LIMIT_DEFAULT);
        }
        if let Some(v) = int("uplimit")? {
            s.uplimit = v;
        }
        match value.get("directory") {
            None => {}
            Some(Value::Bytes(b)) if b.first() == Some(&b'/') => {
                s.directory = PathBuf::from(std::ffi::OsString::from_vec(b.clone()));
            }
            Some(_) => return Err("settings key \"directory\" is not an absolute path".into()),
        }
        match value.get("encryption") {
            None => {}
            Some(v) => match v.as_bytes().and_then(Encryption::parse) {
                Some(e) => s.encryption = e,
                None => return Err("settings key \"encryption\" is not a known mode".into()),
            },
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file_form() {
        let mut s = Settings::defaults("/srv/dl".into());
        s.port = 51413;
        s.automap = true;
        s.pex = false;
        s.dht = false;
        s.downlimit = 100;
        s.uplimit_kept = 7;
        for mode in [
            Encryption::Required,
            Encryption::Preferred,
            Encryption::Plaintext,
            Encryption::Tolerated,
        ] {
            s.encryption = mode;
            let back =
                Settings::from_value(&s.to_value(), Settings::defaults("/x".into())).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn encryption_spellings() {
        for word in ["required", "preferred", "plaintext", "tolerated"] {
            let mode = Encryption::parse(word.as_bytes()).unwrap();
            assert_eq!(mode.as_str(), word);
        }
        assert!(Encryption::parse(b"Required").is_none());
        assert!(Encryption::parse(b"").is_none());
        assert!(Encryption::Plaintext.is_tolerated());
        assert!(Encryption::Tolerated.is_tolerated());
        assert!(!Encryption::Preferred.is_tolerated());
        assert!(!Encryption::Required.is_tolerated());
        let a = Settings::defaults("/d".into());
        assert_eq!(a.encryption, Encryption::Preferred);
        let mut b = a.clone();
        b.encryption = Encryption::Tolerated;
        assert_eq!(a.differences(&b), ["encryption"]);
    }

    #[test]
    fn missing_keys_keep_defaults_and_wrong_types_are_refused() {
        let d = Settings::defaults("/d".into());
        let partial = Value::dict([("port", Value::Int(1))]);
        let s = Settings::from_value(&partial, d.clone()).unwrap();
        assert_eq!(s.port, 1);
        assert_eq!(s.directory, d.directory);
        assert_eq!(s.encryption, Encryption::Preferred);
        for bad in [Value::str("none"), Value::Int(1)] {
            let bad = Value::dict([("encryption", bad)]);
            let err = Settings::from_value(&bad, d.clone()).unwrap_err();
            assert!(err.contains("encryption"), "{err}");
        }
        let bad = Value::dict([("port", Value::str("x"))]);
        assert!(Settings::from_value(&bad, d.clone()).is_err());
        let bad = Value::dict([("port", Value::Int(70000))]);
        assert!(Settings::from_value(&bad, d.clone()).is_err());
        assert!(Settings::from_value(&Value::Int(1), d).is_err());
    }
}

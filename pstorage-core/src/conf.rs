//! The cluster configuration directory on a node:
//! `/etc/pstorage/clusters/<cluster>/` holding `bs.list` (one `ADDR:PORT`
//! per line: the MDS bootstrap list) and `auth.key` (the cluster key, mode
//! 0600). The parent directory can be overridden with `--conf-dir` or the
//! `PSTORAGE_CONF_DIR` environment variable (tests, unprivileged users).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::private_files::{check_secret_file, create_private_dir_all, private_options};

/// Default parent of the per-cluster configuration directories.
pub const DEFAULT_CONF_ROOT: &str = "/etc/pstorage/clusters";
/// Environment variable overriding [`DEFAULT_CONF_ROOT`].
pub const CONF_ROOT_ENV: &str = "PSTORAGE_CONF_DIR";
/// The bootstrap list file name.
pub const BS_LIST: &str = "bs.list";
/// The cluster key file name.
pub const KEY_FILE: &str = "auth.key";
/// Default MDS port, as in the original.
pub const DEFAULT_MDS_PORT: u16 = 2510;
/// Length of the cluster key in bytes.
pub const KEY_LEN: usize = 32;

/// The cluster key: proves membership of the cluster on every connection.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Hex encoding used in key files.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the hex encoding of a key file.
    pub fn from_hex(s: &str) -> Result<ClusterKey> {
        let s = s.trim();
        if s.len() != KEY_LEN * 2 {
            return Err(Error::invalid("malformed cluster key: wrong length"));
        }
        let mut key = [0u8; KEY_LEN];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::invalid("malformed cluster key: not hex"))?;
        }
        Ok(ClusterKey(key))
    }

    /// Reads a key file written by [`ClusterKey::write`]. `PermissionDenied`
    /// if it is missing, or if others than its owner may access it.
    pub fn read(path: &Path) -> Result<ClusterKey> {
        if path.exists() {
            check_secret_file(path, "the cluster key")?;
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::with_source(
                ErrorKind::PermissionDenied,
                format!(
                    "cannot read the cluster key {}: {e}; run `pstorage -c CLUSTER auth-node` first",
                    path.display()
                ),
                e,
            )
        })?;
        ClusterKey::from_hex(&text).map_err(|e| e.context(path.display()))
    }

    /// Writes the key with mode 0600, atomically (temp file + rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_private(path, format!("{}\n", self.to_hex()).as_bytes())
    }
}

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(write_private_file(path, bytes)?)
}

/// [`write_private`], keeping the I/O error as it came.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Checks a cluster name: `[a-zA-Z0-9_-]{1,63}` as in the original.
pub fn validate_cluster_name(name: &str) -> Result<&str> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::invalid(format!(
            "bad cluster name {name:?}: use 1-63 of a-z, A-Z, 0-9, '-', '_'"
        )));
    }
    Ok(name)
}

/// Resolves the configuration root: the explicit override, else the
/// environment variable, else the default.
pub fn conf_root(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(CONF_ROOT_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_CONF_ROOT),
    }
}

/// A cluster's configuration directory on this node.
#[derive(Debug, Clone)]
pub struct ClusterConf {
    /// The cluster's name.
    pub name: String,
    /// The cluster's configuration directory.
    pub dir: PathBuf,
}

impl ClusterConf {
    /// The directory of `name` under `root` (see [`conf_root`]).
    pub fn new(root: &Path, name: &str) -> Result<ClusterConf> {
        validate_cluster_name(name)?;
        Ok(ClusterConf {
            name: name.to_string(),
            dir: root.join(name),
        })
    }

    /// The path of the cluster's `bs.list` (MDS addresses).
    pub fn bs_list_path(&self) -> PathBuf {
        self.dir.join(BS_LIST)
    }

    /// The MDS bootstrap addresses, in file order. Blank lines and `#`
    /// comments are ignored; a missing port means [`DEFAULT_MDS_PORT`].
    pub fn bootstrap(&self) -> Result<Vec<String>> {
        let path = self.bs_list_path();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::with_source(
                ErrorKind::NotFound,
                format!(
                    "cannot read the bootstrap list {}: {e}; create it with one MDS ADDR:PORT \
                     per line",
                    path.display()
                ),
                e,
            )
        })?;
        let addrs = parse_bs_list(&text)?;
        if addrs.is_empty() {
            return Err(Error::invalid(format!(
                "the bootstrap list {} names no MDS",
                path.display()
            )));
        }
        Ok(addrs)
    }

    /// Adds `addr` to `bs.list` unless it is there already.
    pub fn add_bootstrap(&self, addr: &str) -> Result<()> {
        create_private_dir_all(&self.dir)?;
        let mut addrs = match std::fs::read_to_string(self.bs_list_path()) {
            Ok(t) => parse_bs_list(&t)?,
            Err(_) => Vec::new(),
        };
        let addr = with_default_port(addr)?;
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
        self.write_bootstrap(&addrs)
    }

    /// Replaces `bs.list` atomically (temp file + rename).
    fn write_bootstrap(&self, addrs: &[String]) -> Result<()> {
        let mut text = addrs.join("\n");
        text.push('\n');
        write_private(&self.bs_list_path(), text.as_bytes())
    }

    /// Removes `addr` from `bs.list` (`rm-mds`); keeps at least one entry
    /// (`InvalidArgument` if it is the only one).
    pub fn remove_bootstrap(&self, addr: &str) -> Result<()> {
        let addr = with_default_port(addr)?;
        let addrs: Vec<String> = self
            .bootstrap()?
            .into_iter()
            .filter(|a| *a != addr)
            .collect();
        if addrs.is_empty() {
            return Err(Error::invalid(format!(
                "{addr} is the only MDS in {}; the list must name at least one",
                self.bs_list_path().display()
            )));
        }
        self.write_bootstrap(&addrs)
    }
}

/// Parses the text of a `bs.list`.
pub fn parse_bs_list(text: &str) -> Result<Vec<String>> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(with_default_port)
        .collect()
}

/// Appends the default MDS port to `host` when it has none; checks the port.
pub fn with_default_port(addr: &str) -> Result<String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(Error::invalid("empty address"));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.ends_with(':') => {
            port.parse::<u16>()
                .map_err(|_| Error::invalid(format!("bad port in address {addr:?}")))?;
            Ok(addr.to_string())
        }
        _ => Ok(format!("{addr}:{DEFAULT_MDS_PORT}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bs_list_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let conf = ClusterConf::new(dir.path(), "test_cluster").unwrap();
        assert!(conf.bootstrap().is_err());
        conf.add_bootstrap("127.0.0.1").unwrap();
        conf.add_bootstrap("127.0.0.1:2511").unwrap();
        conf.add_bootstrap("127.0.0.1:2510").unwrap();
        assert_eq!(
            conf.bootstrap().unwrap(),
            vec!["127.0.0.1:2510".to_string(), "127.0.0.1:2511".to_string()]
        );
        assert!(with_default_port("host:notaport").is_err());
    }

    #[test]
    fn key_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = ClusterKey([7u8; KEY_LEN]);
        let path = dir.path().join(KEY_FILE);
        key.write(&path).unwrap();
        assert_eq!(ClusterKey::read(&path).unwrap(), key);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ClusterConf::new(dir.path(), "bad name").is_err());
    }
}

//! Exports: one open [`File`] per cluster path per server process, shared by
//! every connection to that path.
//!
//! Sharing the handle is what makes `NBD_FLAG_CAN_MULTI_CONN` true: the
//! client library keeps one dirty-chunk set per handle, a write marks its
//! chunks dirty before it is acknowledged, and a flush covers every chunk
//! dirty when it starts. So a FLUSH on any connection makes durable every
//! write acknowledged on any connection before it, which is what the
//! protocol asks of a multi-connection server.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pstorage_core::client::{Client, File};
use pstorage_core::types::{InodeKind, LeaseMode, OpenFlags};
use pstorage_core::{Error, ErrorKind, Result};

use super::proto;

/// How many names `NBD_OPT_LIST` returns at most (the namespace walk stops there).
pub const MAX_LISTED_EXPORTS: usize = 10_000;

/// What `NBD_OPT_INFO` and `NBD_OPT_GO` report about an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// The export's size: the file's size.
    pub size_bytes: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
}

/// The transmission flags of every export of a server.
pub fn export_flags(read_only: bool) -> u16 {
    let common = proto::FLAG_HAS_FLAGS
        | proto::FLAG_SEND_FLUSH
        | proto::FLAG_SEND_FUA
        | proto::FLAG_CAN_MULTI_CONN;
    if read_only {
        common | proto::FLAG_READ_ONLY
    } else {
        common | proto::FLAG_SEND_TRIM | proto::FLAG_SEND_WRITE_ZEROES
    }
}

/// Maps an NBD export name onto a cluster path: `/vm/disk.img` and
/// `vm/disk.img` both name the file `/vm/disk.img` (an NBD URI
/// `nbd://host/vm/disk.img` sends the latter).
pub fn export_path(name: &[u8]) -> Result<String> {
    if name.is_empty() {
        return Err(Error::invalid(
            "this server has no default export: name a cluster file, e.g. nbd://127.0.0.1:10809/vm/disk.img",
        ));
    }
    if name.len() > proto::MAX_NAME_BYTES {
        return Err(Error::invalid(format!(
            "export name of {} bytes is longer than the protocol's {} bytes",
            name.len(),
            proto::MAX_NAME_BYTES
        )));
    }
    let name = std::str::from_utf8(name)
        .map_err(|_| Error::invalid("export name is not UTF-8; name a cluster file by its path"))?;
    if name.contains('\0') {
        return Err(Error::invalid("export name contains a NUL byte"));
    }
    let path = if name.starts_with('/') {
        name.to_string()
    } else {
        format!("/{name}")
    };
    if path
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::invalid(format!(
            "export name {name:?} has an empty, . or .. component; name a file by its path"
        )));
    }
    Ok(path)
}

/// The cluster directory of `--export-dir`, as a path (`/vm`; `/` for
/// the whole namespace). `InvalidArgument` for a name that is not one.
pub fn export_dir(dir: &str) -> Result<String> {
    let trimmed = dir.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_string());
    }
    export_path(trimmed.as_bytes()).map_err(|e| e.context("--export-dir"))
}

/// Serializes flushes of one export and lets one flush answer every FLUSH
/// request that arrived before it started (group commit).
#[derive(Default)]
struct FlushBatcher {
    /// Flushes started so far; a flush's sequence number is this count
    /// right after it started.
    started: AtomicU64,
    /// Sequence number of the last flush that succeeded.
    last_ok: tokio::sync::Mutex<u64>,
}

impl FlushBatcher {
    async fn flush(&self, file: &File) -> Result<()> {
        // Every flush numbered above `arrival` starts after this request
        // arrived, so it covers every write acknowledged before it.
        let arrival = self.started.load(Ordering::Acquire);
        let mut last_ok = self.last_ok.lock().await;
        if *last_ok > arrival {
            return Ok(());
        }
        // Holding the lock while flushing keeps File::flush calls from
        // overlapping: a second one would find the dirty set already taken
        // and return before the first made the chunks durable.
        let seq = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        file.flush().await?;
        debug_assert!(seq > *last_ok);
        *last_ok = seq;
        Ok(())
    }
}

/// One exported file, shared by every connection to it in this process.
pub struct Export {
    /// The cluster path.
    pub path: String,
    /// The open file: a write lease, or a read lease for a read-only export.
    pub file: File,
    /// Whether writes are refused.
    pub read_only: bool,
    /// The server's request counters, shared by every export.
    pub metrics: Arc<super::NbdMetrics>,
    flushes: FlushBatcher,
}

impl Export {
    /// Size of the export: the file size when it was opened (the lease keeps
    /// anyone else from resizing it, and writes past it are refused).
    pub fn size_bytes(&self) -> u64 {
        self.file.size()
    }

    /// What the handshake reports.
    pub fn info(&self) -> ExportInfo {
        ExportInfo {
            size_bytes: self.size_bytes(),
            flags: export_flags(self.read_only),
        }
    }

    /// Makes every write acknowledged on any connection before this call
    /// durable on every replica. Concurrent calls share one flush.
    pub async fn flush(&self) -> Result<()> {
        self.flushes.flush(&self.file).await
    }
}

#[derive(Default)]
struct Slot {
    export: Option<Arc<Export>>,
    users: usize,
}

/// The exports of one server process.
pub struct Exports {
    client: Client,
    read_only: bool,
    /// Only files below this cluster directory are served (`/`: all).
    root: String,
    metrics: Arc<super::NbdMetrics>,
    // One async lock per path so an open or close of one file does not wait
    // for another's. Slots are kept once created (a server serves a handful
    // of paths); removing them would let two opens of one path race.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

/// A connection's hold on an export; give it back with [`ExportHandle::release`].
pub struct ExportHandle {
    exports: Arc<Exports>,
    export: Option<Arc<Export>>,
}

impl ExportHandle {
    /// The export.
    pub fn export(&self) -> &Arc<Export> {
        self.export
            .as_ref()
            .expect("export handle used after release")
    }

    /// Gives the export back: the last connection of an export flushes and
    /// closes its file, which releases the lease.
    pub async fn release(mut self) {
        if let Some(export) = self.export.take() {
            self.exports.release(export).await;
        }
    }
}

impl Drop for ExportHandle {
    fn drop(&mut self) {
        // A connection task that panicked: release in the background.
        if let Some(export) = self.export.take() {
            let exports = self.exports.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { exports.release(export).await });
            }
        }
    }
}

impl Exports {
    /// Exports of cluster files through `client`; all read-only if asked.
    pub fn new(
        client: Client,
        read_only: bool,
        metrics: Arc<super::NbdMetrics>,
        root: Option<String>,
    ) -> Arc<Exports> {
        Arc::new(Exports {
            client,
            read_only,
            root: root.unwrap_or_else(|| "/".to_string()),
            metrics,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The cluster path an export name names ([`export_path`]), if it is
    /// below the export directory (`PermissionDenied` otherwise: a client
    /// is not told whether files outside it exist).
    pub fn resolve(&self, name: &[u8]) -> Result<String> {
        let path = export_path(name)?;
        if self.root != "/" && !path.starts_with(&format!("{}/", self.root)) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{path} is outside the exported directory {}; name a file below it",
                    self.root
                ),
            ));
        }
        Ok(path)
    }

    /// Whether every export is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn slot(&self, path: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock();
        slots.entry(path.to_string()).or_default().clone()
    }

    /// Opens (or joins) the export of `path` for a connection. The first
    /// connection opens the file with a write lease (read lease when
    /// read-only). Errors: `NotFound`, `IsADirectory`, `Busy` (another
    /// client, e.g. another server process, holds a conflicting lease).
    pub async fn acquire(self: &Arc<Self>, path: &str) -> Result<ExportHandle> {
        let slot = self.slot(path);
        let mut slot = slot.lock().await;
        let current = slot.export.clone().filter(|e| !e.file.is_fenced());
        let export = match current {
            Some(e) => e,
            None => {
                // A fenced file lost its lease: its connections can only fail
                // now; new ones get a fresh open.
                let export = Arc::new(self.open(path).await?);
                slot.export = Some(export.clone());
                export
            }
        };
        slot.users += 1;
        Ok(ExportHandle {
            exports: self.clone(),
            export: Some(export),
        })
    }

    async fn open(&self, path: &str) -> Result<Export> {
        let mode = if self.read_only {
            LeaseMode::Read
        } else {
            LeaseMode::Write
        };
        let file = match self.client.open(path, mode, OpenFlags::default()).await {
            Ok(f) => f,
            Err(e) => return Err(open_error(path, e, self.read_only)),
        };
        tracing::info!(path, ?mode, size = file.size(), "export opened");
        Ok(Export {
            path: path.to_string(),
            file,
            read_only: self.read_only,
            metrics: self.metrics.clone(),
            flushes: FlushBatcher::default(),
        })
    }

    async fn release(&self, export: Arc<Export>) {
        let slot = self.slot(&export.path);
        let mut slot = slot.lock().await;
        assert!(
            slot.users > 0,
            "export {} released more often than acquired",
            export.path
        );
        slot.users -= 1;
        if slot.users > 0 {
            return;
        }
        // The last connection left: close while holding the slot, so a new
        // connection to this path waits for the lease to be released instead
        // of colliding with it.
        // (`export` may be an older, fenced open that was replaced; the one
        // to close is the slot's.)
        drop(export);
        if let Some(current) = slot.export.take() {
            match current.file.close().await {
                Ok(()) => tracing::info!(path = %current.path, "export closed"),
                Err(e) => tracing::warn!(path = %current.path, error = %e, "closing export failed"),
            }
        }
    }

    /// Size and flags of `path` for `NBD_OPT_INFO`, without taking a lease:
    /// from the open export if there is one, else from the MDS.
    pub async fn info(&self, path: &str) -> Result<ExportInfo> {
        let slot = self.slot(path);
        if let Ok(slot) = slot.try_lock() {
            if let Some(e) = slot.export.as_ref() {
                return Ok(e.info());
            }
        }
        let stat = self
            .client
            .stat(path)
            .await
            .map_err(|e| open_error(path, e, self.read_only))?;
        if stat.kind != InodeKind::File {
            return Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path} is a directory; export a file"),
            ));
        }
        Ok(ExportInfo {
            size_bytes: stat.size,
            flags: export_flags(self.read_only),
        })
    }

    /// Every file below the export directory with its size, depth first,
    /// at most [`MAX_LISTED_EXPORTS`].
    pub async fn list(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in self.client.readdir(&dir).await? {
                let path = if dir == "/" {
                    format!("/{}", entry.name)
                } else {
                    format!("{dir}/{}", entry.name)
                };
                match entry.stat.kind {
                    InodeKind::Dir => dirs.push(path),
                    _ => {
                        out.push((path, entry.stat.size));
                        if out.len() >= MAX_LISTED_EXPORTS {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Closes every open export (server shutdown, after the connections ended).
    pub async fn close_all(&self) {
        let slots: Vec<_> = {
            let slots = self.slots.lock();
            slots.values().cloned().collect()
        };
        for slot in slots {
            let mut slot = slot.lock().await;
            if let Some(export) = slot.export.take() {
                tracing::warn!(path = %export.path, users = slot.users,
                    "closing an export that still had connections");
                slot.users = 0;
                if let Err(e) = export.file.close().await {
                    tracing::warn!(path = %export.path, error = %e, "closing export failed");
                }
            }
        }
    }
}

/// Explains a failed open in terms of the export.
fn open_error(path: &str, e: Error, read_only: bool) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::not_found(format!(
            "no file {path} in the cluster: create it with `pstorage truncate -s SIZE {path}` ({e})"
        ))
        .caused_by(e),
        ErrorKind::Busy if read_only => Error::new(
            ErrorKind::Busy,
            format!("{path} is open for writing by another client (another nbd-serve or a writer); stop it first ({e})"),
        )
        .caused_by(e),
        ErrorKind::Busy => Error::new(
            ErrorKind::Busy,
            format!("{path} is in use by another client (another nbd-serve, reader or writer); a file has one writer at a time: stop the other one, or serve with --read-only after it stopped writing ({e})"),
        )
        .caused_by(e),
        _ => e.context(format!("opening export {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_map_to_paths() {
        assert_eq!(export_path(b"/vm/disk.img").unwrap(), "/vm/disk.img");
        assert_eq!(export_path(b"vm/disk.img").unwrap(), "/vm/disk.img");
        assert!(export_path(b"").is_err());
        assert!(export_path(b"a\0b").is_err());
        assert!(export_path(&[0xff, 0xfe]).is_err());
        assert!(export_path(&vec![b'a'; 5000]).is_err());
    }

    #[test]
    fn flags() {
        let rw = export_flags(false);
        assert_eq!(rw & proto::FLAG_READ_ONLY, 0);
        assert_ne!(rw & proto::FLAG_SEND_TRIM, 0);
        assert_ne!(rw & proto::FLAG_CAN_MULTI_CONN, 0);
        let ro = export_flags(true);
        assert_ne!(ro & proto::FLAG_READ_ONLY, 0);
        assert_eq!(ro & proto::FLAG_SEND_WRITE_ZEROES, 0);
    }
}

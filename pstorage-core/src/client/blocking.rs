//! A blocking facade over the async client, for callers without a tokio
//! runtime (C ABI, Python, CLI). It owns a multi-thread runtime on which
//! every call runs; lease renewal keeps running there between calls.
//!
//! Never call these methods from inside an async context (tokio panics on
//! nested `block_on`), and drop the last handle outside one.

use std::sync::Arc;

use bytes::Bytes;
use tokio::runtime::Runtime;

use super::ClientOptions;
use crate::error::{Error, Result};
use crate::traits::{ChunkConnector, MetadataService};
use crate::types::{
    AttrUpdate, ChunkMap, ClusterStatus, DirEntry, FileAttrs, Lease, LeaseMode, NewNode, OpenFlags,
    Perms, RenameFlags, Stat, StatChange, XattrSet,
};

/// The blocking twin of [`super::Client`]. Cheap to clone; thread-safe.
#[derive(Clone)]
pub struct Client {
    inner: super::Client,
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Client")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Builds the runtime the blocking facade runs on.
pub fn new_runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pstorage-client")
        .build()
        .map_err(|e| Error::from(e).context("starting the pstorage client runtime"))
}

impl Client {
    /// A client with its own multi-thread runtime.
    pub fn new(
        mds: Arc<dyn MetadataService>,
        chunks: Arc<dyn ChunkConnector>,
        options: ClientOptions,
    ) -> Result<Client> {
        let runtime = Arc::new(new_runtime()?);
        Ok(Client {
            inner: super::Client::new(mds, chunks, options),
            runtime,
        })
    }

    /// Wraps an async client whose services live on `runtime`.
    pub fn from_async(inner: super::Client, runtime: Arc<Runtime>) -> Client {
        Client { inner, runtime }
    }

    /// The runtime every call runs on (for callers that also want async
    /// completions, e.g. the C ABI's callback I/O).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The async client underneath.
    pub fn as_async(&self) -> &super::Client {
        &self.inner
    }

    /// See [`super::Client::mkdir`].
    pub fn mkdir(&self, path: &str, parents: bool) -> Result<Stat> {
        self.runtime.block_on(self.inner.mkdir(path, parents))
    }

    /// See [`super::Client::readdir`].
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.runtime.block_on(self.inner.readdir(path))
    }

    /// See [`super::Client::stat`].
    pub fn stat(&self, path: &str) -> Result<Stat> {
        self.runtime.block_on(self.inner.stat(path))
    }

    /// See [`super::Client::exists`].
    pub fn exists(&self, path: &str) -> Result<bool> {
        self.runtime.block_on(self.inner.exists(path))
    }

    /// See [`super::Client::unlink`].
    pub fn unlink(&self, path: &str) -> Result<()> {
        self.runtime.block_on(self.inner.unlink(path))
    }

    /// See [`super::Client::rename`].
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.runtime.block_on(self.inner.rename(from, to))
    }

    /// See [`super::Client::rename_with`].
    pub fn rename_with(&self, from: &str, to: &str, flags: RenameFlags) -> Result<()> {
        self.runtime
            .block_on(self.inner.rename_with(from, to, flags))
    }

    /// See [`super::Client::mkdir_with`].
    pub fn mkdir_with(&self, path: &str, parents: bool, perms: Perms) -> Result<Stat> {
        self.runtime
            .block_on(self.inner.mkdir_with(path, parents, perms))
    }

    /// See [`super::Client::make_node`].
    pub fn make_node(&self, path: &str, node: NewNode) -> Result<Stat> {
        self.runtime.block_on(self.inner.make_node(path, node))
    }

    /// See [`super::Client::readlink`].
    pub fn readlink(&self, path: &str) -> Result<String> {
        self.runtime.block_on(self.inner.readlink(path))
    }

    /// See [`super::Client::link`].
    pub fn link(&self, from: &str, to: &str) -> Result<Stat> {
        self.runtime.block_on(self.inner.link(from, to))
    }

    /// See [`super::Client::set_stat`].
    pub fn set_stat(&self, path: &str, change: StatChange) -> Result<Stat> {
        self.runtime.block_on(self.inner.set_stat(path, change))
    }

    /// See [`super::Client::get_xattr`].
    pub fn get_xattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        self.runtime.block_on(self.inner.get_xattr(path, name))
    }

    /// See [`super::Client::list_xattrs`].
    pub fn list_xattrs(&self, path: &str) -> Result<Vec<String>> {
        self.runtime.block_on(self.inner.list_xattrs(path))
    }

    /// See [`super::Client::set_xattr`].
    pub fn set_xattr(&self, path: &str, name: &str, value: &[u8], how: XattrSet) -> Result<()> {
        self.runtime
            .block_on(self.inner.set_xattr(path, name, value, how))
    }

    /// See [`super::Client::remove_xattr`].
    pub fn remove_xattr(&self, path: &str, name: &str) -> Result<()> {
        self.runtime.block_on(self.inner.remove_xattr(path, name))
    }

    /// See [`super::Client::set_attr`].
    pub fn set_attr(&self, path: &str, update: AttrUpdate, recursive: bool) -> Result<()> {
        self.runtime
            .block_on(self.inner.set_attr(path, update, recursive))
    }

    /// See [`super::Client::get_attr`].
    pub fn get_attr(&self, path: &str) -> Result<FileAttrs> {
        self.runtime.block_on(self.inner.get_attr(path))
    }

    /// See [`super::Client::file_chunks`].
    pub fn file_chunks(&self, path: &str) -> Result<Vec<ChunkMap>> {
        self.runtime.block_on(self.inner.file_chunks(path))
    }

    /// See [`super::Client::cluster_status`].
    pub fn cluster_status(&self) -> Result<ClusterStatus> {
        self.runtime.block_on(self.inner.cluster_status())
    }

    /// See [`super::Client::verify`].
    pub fn verify(&self, path: &str, repair: bool) -> Result<super::VerifyReport> {
        self.runtime.block_on(self.inner.verify(path, repair))
    }

    /// See [`super::Client::open`].
    pub fn open(&self, path: &str, mode: LeaseMode, flags: OpenFlags) -> Result<File> {
        let inner = self.runtime.block_on(self.inner.open(path, mode, flags))?;
        Ok(File {
            inner,
            runtime: self.runtime.clone(),
        })
    }
}

/// The blocking twin of [`super::File`]. Cheap to clone; clones share the
/// lease and may be used from many threads at once.
#[derive(Clone, Debug)]
pub struct File {
    inner: super::File,
    runtime: Arc<Runtime>,
}

impl File {
    /// The async file underneath.
    pub fn as_async(&self) -> &super::File {
        &self.inner
    }

    /// The runtime every call runs on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// See [`super::File::path`].
    pub fn path(&self) -> &str {
        self.inner.path()
    }

    /// See [`super::File::lease`].
    pub fn lease(&self) -> &Lease {
        self.inner.lease()
    }

    /// See [`super::File::chunk_size`].
    pub fn chunk_size(&self) -> u64 {
        self.inner.chunk_size()
    }

    /// See [`super::File::size`].
    pub fn size(&self) -> u64 {
        self.inner.size()
    }

    /// See [`super::File::is_fenced`].
    pub fn is_fenced(&self) -> bool {
        self.inner.is_fenced()
    }

    /// See [`super::File::stat`].
    pub fn stat(&self) -> Result<Stat> {
        self.runtime.block_on(self.inner.stat())
    }

    /// See [`super::File::read_at`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.runtime.block_on(self.inner.read_at(offset, buf))
    }

    /// See [`super::File::read_at_bytes`].
    pub fn read_at_bytes(&self, offset: u64, len: u64) -> Result<Bytes> {
        self.runtime.block_on(self.inner.read_at_bytes(offset, len))
    }

    /// See [`super::File::write_at`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.runtime.block_on(self.inner.write_at(offset, data))
    }

    /// See [`super::File::write_at_bytes`].
    pub fn write_at_bytes(&self, offset: u64, data: Bytes) -> Result<()> {
        self.runtime
            .block_on(self.inner.write_at_bytes(offset, data))
    }

    /// See [`super::File::write_zeros`].
    pub fn write_zeros(&self, offset: u64, len: u64) -> Result<()> {
        self.runtime.block_on(self.inner.write_zeros(offset, len))
    }

    /// See [`super::File::flush`].
    pub fn flush(&self) -> Result<()> {
        self.runtime.block_on(self.inner.flush())
    }

    /// See [`super::File::truncate`].
    pub fn truncate(&self, size: u64) -> Result<()> {
        self.runtime.block_on(self.inner.truncate(size))
    }

    /// See [`super::File::close`].
    pub fn close(&self) -> Result<()> {
        self.runtime.block_on(self.inner.close())
    }
}

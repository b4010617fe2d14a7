//! Conformance suites of the seam traits: one suite per trait, run against
//! every implementation of it.
//!
//! A seam trait ([`ChunkService`], [`ChunkControl`], [`CsRegistry`], ...)
//! has several implementations: the real object in process
//! ([`ChunkServer`], [`MdsService`]), the Cap'n Proto or framed clients that
//! reach it over a socket (in `pstorage-rpc`), the in-memory links of
//! [`MemNetwork`], the simulator's clients (in `pstorage-sim`). Each must
//! honour the trait's documented contract, error kinds included: a
//! transport that turned `Stale` into `Internal`, or dropped the replica a
//! chain failure names, would break the callers' recovery logic without
//! any single-implementation test noticing.
//!
//! A suite builds the real servers itself (chunk servers on
//! [`MemChunkStore`]s joined by a [`MemNetwork`], an [`MdsService`] without
//! Raft), asks the implementation's *transport* for a handle on them
//! ([`ChunkTransport`], [`MdsTransport`]), and checks every case of the
//! contract through that handle; each case gets fresh servers. A failing
//! case panics with the suite's and the case's name.
//!
//! [`ChunkService`]: crate::traits::ChunkService
//! [`ChunkControl`]: crate::traits::ChunkControl
//! [`CsRegistry`]: crate::traits::CsRegistry
//! [`ChunkServer`]: crate::chunk::ChunkServer
//! [`MdsService`]: crate::mds::MdsService
//! [`MemNetwork`]: crate::chunk::memory::MemNetwork
//! [`MemChunkStore`]: crate::chunk::MemChunkStore

#![allow(
    clippy::unwrap_used,
    reason = "the suites are tests: a step that fails panics with its error"
)]

pub mod chunk_control;
pub mod chunk_service;
pub mod cs_registry;
pub mod mds_group;
pub mod metadata;
mod world;

pub use world::{
    ChunkTransport, ChunkWorld, DirectChunks, DirectMds, MdsTransport, MdsWorld, MemLinks,
};

use std::future::Future;

/// The kind of the error `r` must be (`what` names the call on a panic).
pub(crate) fn kind<T: std::fmt::Debug>(what: &str, r: crate::Result<T>) -> crate::ErrorKind {
    r.map(|v| panic!("{what}: expected an error, got {v:?}"))
        .unwrap_err()
        .kind()
}

/// Runs one case, naming it on failure (and on stderr before it starts, so
/// a hang names its case too).
pub(crate) async fn case<W, F, Fut>(suite: &str, name: &str, world: W, body: F)
where
    F: FnOnce(W) -> Fut,
    Fut: Future<Output = ()>,
{
    eprintln!("conformance {suite}: {name}");
    body(world).await;
}

#[cfg(test)]
mod tests {
    //! Every suite against the in-process implementations.

    use super::*;

    #[tokio::test]
    async fn chunk_service_in_process() {
        chunk_service::run(&DirectChunks).await;
    }

    #[tokio::test]
    async fn chunk_service_over_mem_links() {
        chunk_service::run(&MemLinks).await;
    }

    #[tokio::test]
    async fn chunk_control_in_process() {
        chunk_control::run(&DirectChunks).await;
    }

    #[tokio::test]
    async fn chunk_control_over_mem_links() {
        chunk_control::run(&MemLinks).await;
    }

    #[tokio::test]
    async fn cs_registry_in_process() {
        cs_registry::run(&DirectMds).await;
    }

    #[tokio::test]
    async fn metadata_in_process() {
        metadata::run(&DirectMds).await;
    }

    // ---- the suites reject broken transports ----

    use std::sync::Arc;

    use crate::traits::CheckedBytes;
    use async_trait::async_trait;

    use crate::error::{Error, ErrorKind, Result};
    use crate::traits::{ChunkControl, ChunkService, ReplicaError, WriteRequest};
    use crate::types::{
        ChunkId, ChunkReplicaInfo, CopyProgress, CopyStats, CsId, MapVersion, Replica,
    };

    /// A data path that loses which replica of a chain failed (blames the
    /// receiver), as a transport that did not carry the field would.
    struct Forgetful(Arc<dyn ChunkService>);

    #[async_trait]
    impl ChunkService for Forgetful {
        async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError> {
            self.0
                .write(request)
                .await
                .map_err(|e| ReplicaError::local(e.error))
        }
        async fn read(
            &self,
            chunk: ChunkId,
            version: MapVersion,
            offset: u64,
            len: u64,
        ) -> Result<CheckedBytes> {
            self.0.read(chunk, version, offset, len).await
        }
        async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
            self.0.flush(chunk, version).await
        }
        async fn block_crcs(
            &self,
            chunk: ChunkId,
            version: MapVersion,
            offset: u64,
            len: u64,
        ) -> Result<Vec<u64>> {
            self.0.block_crcs(chunk, version, offset, len).await
        }
    }

    /// A control path that turns every error into `Internal`, as a
    /// transport that flattened error kinds would.
    struct Flattening(Arc<dyn ChunkControl>);

    fn flatten<T>(r: Result<T>) -> Result<T> {
        r.map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))
    }

    #[async_trait]
    impl ChunkControl for Flattening {
        async fn create_chunk(
            &self,
            chunk: ChunkId,
            version: MapVersion,
            chunk_size: u64,
        ) -> Result<()> {
            flatten(self.0.create_chunk(chunk, version, chunk_size).await)
        }
        async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
            flatten(self.0.set_version(chunk, version).await)
        }
        async fn lend_for_repair(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
            flatten(self.0.lend_for_repair(chunk, version).await)
        }
        async fn zero_tail(&self, chunk: ChunkId, version: MapVersion, offset: u64) -> Result<()> {
            flatten(self.0.zero_tail(chunk, version, offset).await)
        }
        async fn delete_chunk(&self, chunk: ChunkId) -> Result<()> {
            flatten(self.0.delete_chunk(chunk).await)
        }
        async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>> {
            flatten(self.0.list_chunks().await)
        }
        async fn replicate_chunk(
            &self,
            chunk: ChunkId,
            version: MapVersion,
            chunk_size: u64,
            source: Replica,
            rate_bytes_per_s: u64,
        ) -> Result<CopyStats> {
            flatten(
                self.0
                    .replicate_chunk(chunk, version, chunk_size, source, rate_bytes_per_s)
                    .await,
            )
        }
        async fn copy_progress(&self, chunk: ChunkId) -> Result<Option<CopyProgress>> {
            flatten(self.0.copy_progress(chunk).await)
        }
        async fn ping(&self) -> Result<()> {
            flatten(self.0.ping().await)
        }
    }

    struct Broken;

    #[async_trait]
    impl ChunkTransport for Broken {
        async fn service(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkService> {
            Arc::new(Forgetful(world.server(id).clone()))
        }
        async fn control(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkControl> {
            Arc::new(Flattening(world.server(id).clone()))
        }
    }

    #[tokio::test]
    #[should_panic(expected = "the failure names replica 3")]
    async fn the_chunk_service_suite_rejects_a_transport_that_forgets_the_failed_replica() {
        chunk_service::run(&Broken).await;
    }

    #[tokio::test]
    #[should_panic(expected = "left: Internal")]
    async fn the_chunk_control_suite_rejects_a_transport_that_flattens_error_kinds() {
        chunk_control::run(&Broken).await;
    }
}

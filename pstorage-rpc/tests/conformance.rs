//! The `MdsGroup` conformance suite (`pstorage_core::conformance`) against
//! what `make-mds` and `rm-mds` talk to: the Cap'n Proto `MdsClient` in
//! front of a real MDS (its `LeaderRouter` and Raft-backed `MdsService`,
//! redb on disk) of an in-process cluster.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use async_trait::async_trait;
use pstorage_core::conformance::mds_group::{self, Group, GroupFixture};
use pstorage_rpc::local::LocalCluster;

struct LocalGroup;

#[async_trait]
impl GroupFixture for LocalGroup {
    async fn fresh(&self) -> Group {
        // The suite is about the group: one chunk server keeps the start quick.
        let cluster = LocalCluster::builder()
            .replicas(1, 1)
            .cs(1)
            .start()
            .await
            .unwrap();
        let client = pstorage_rpc::node::connect_mds(cluster.conf(), Default::default()).unwrap();
        Group {
            group: std::sync::Arc::new(client),
            id: pstorage_core::types::MdsId(1),
            addr: cluster.mds_addr(0).unwrap(),
            keep: Box::new(cluster),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mds_group_over_capnp() {
    mds_group::run(&LocalGroup).await;
}

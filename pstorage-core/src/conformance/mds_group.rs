//! The [`MdsGroup`] suite: what `make-mds`, `rm-mds` and the members'
//! directories may rely on, run against a fresh group of one MDS through a
//! [`GroupFixture`]. (Adding a real second member needs a second Raft node
//! to catch up: the in-process cluster's and the simulator's own tests do
//! that; this suite pins the answers every implementation must give.)

use std::sync::Arc;

use async_trait::async_trait;

use super::kind;
use crate::error::ErrorKind;
use crate::traits::MdsGroup;
use crate::types::{MdsId, MdsMembership};

const SUITE: &str = "MdsGroup";

/// A fresh group of one voting MDS, leader of its group, and the
/// implementation under test in front of it.
pub struct Group {
    /// The group under test.
    pub group: Arc<dyn MdsGroup>,
    /// The member's id.
    pub id: MdsId,
    /// The member's address, as the group records it.
    pub addr: String,
    /// Whatever must live as long as the case (servers, runtimes).
    pub keep: Box<dyn std::any::Any + Send>,
}

/// Builds a fresh [`Group`] per case.
#[async_trait]
pub trait GroupFixture: Send + Sync {
    /// A new group of one MDS for one test.
    async fn fresh(&self) -> Group;
}

/// Runs every case of the suite through `fixture`.
pub async fn run(fixture: &dyn GroupFixture) {
    super::case(SUITE, "ids are allocated once", fixture.fresh().await, ids).await;
    super::case(
        SUITE,
        "members shows the founding voter",
        fixture.fresh().await,
        members,
    )
    .await;
    super::case(SUITE, "refusals of rm-mds", fixture.fresh().await, removals).await;
    super::case(
        SUITE,
        "refusals and no-ops of make-mds",
        fixture.fresh().await,
        additions,
    )
    .await;
}

fn assert_alone(m: &MdsMembership, g: &Group) {
    assert_eq!(m.members.len(), 1, "{m:?}");
    assert_eq!(m.members[0].id, g.id, "{m:?}");
    assert_eq!(m.members[0].addr, g.addr, "{m:?}");
    assert!(m.members[0].voter, "{m:?}");
    assert_eq!(m.leader, Some(g.id), "{m:?}");
    assert!(m.term > 0, "{m:?}");
}

async fn ids(g: Group) {
    let a = g.group.allocate_mds_id().await.unwrap();
    let b = g.group.allocate_mds_id().await.unwrap();
    assert_ne!(a, b);
    assert!(
        a != g.id && b != g.id,
        "{a}, {b} reuse the member's id {}",
        g.id
    );
}

async fn members(g: Group) {
    let m = g.group.members().await.expect("members");
    assert_alone(&m, &g);
}

async fn removals(g: Group) {
    assert_eq!(
        kind(
            "removing an MDS that is not a member",
            g.group.remove_mds(g.id + 100).await
        ),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind("removing the last member", g.group.remove_mds(g.id).await),
        ErrorKind::InvalidArgument
    );
    assert_alone(&g.group.members().await.unwrap(), &g);
}

async fn additions(g: Group) {
    assert_eq!(
        kind(
            "adding an id never allocated",
            g.group.add_mds(g.id + 1000, "127.0.0.1:1").await
        ),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(
            "adding the member again at another address",
            g.group.add_mds(g.id, "127.0.0.1:1").await
        ),
        ErrorKind::InvalidArgument
    );
    g.group
        .add_mds(g.id, &g.addr)
        .await
        .expect("adding a member again is a no-op");
    assert_alone(&g.group.members().await.unwrap(), &g);
}

//! The MDS group: membership changes (`make-mds` joining, `rm-mds`) and
//! the members' Raft state for `pstorage stat`.

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::raft::{MdsId, MdsNode};
use super::service::{raft_write_error, unexpected, MdsService};
use super::state::{ApplyOutcome, Command};
use crate::error::{Error, ErrorKind, Result};
use crate::traits::MdsGroup;
use crate::types::{
    validate_addr, EventKind, EventLevel, MdsInfo, MdsMember, MdsMembership, MdsRole,
    MAX_MDS_MEMBERS,
};

/// The group as the Raft node `raft` sees it now: its membership
/// configuration (which may lag the leader's on a follower), the leader it
/// knows and its term.
pub fn raft_membership(raft: &super::raft::MdsRaft) -> MdsMembership {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<MdsId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(&id, node)| MdsMember {
            id,
            addr: node.addr.clone(),
            voter: voters.contains(&id),
        })
        .collect();
    MdsMembership {
        members,
        leader: m.current_leader,
        term: m.current_term,
        config_index: m
            .membership_config
            .log_id()
            .as_ref()
            .map(|l| l.index)
            .unwrap_or(0),
    }
}

impl MdsService {
    /// Every MDS of the group as this MDS sees it. On the leader, followers'
    /// commit and applied indexes are what the leader knows they hold (their
    /// matched log index); elsewhere only this MDS's own entry has numbers.
    pub(super) fn mds_infos(&self) -> Vec<MdsInfo> {
        let Some((me, raft)) = self.raft() else {
            return vec![MdsInfo {
                id: MdsId(1),
                addr: self.config.addr.clone(),
                role: MdsRole::Leader,
                term: 0,
                commit_index: 0,
                applied_index: 0,
                lag: 0,
            }];
        };
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<MdsId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        let mut out = Vec::new();
        for (&id, node) in membership.nodes() {
            let voter = voters.contains(&id);
            let mut info = MdsInfo {
                id,
                addr: node.addr.clone(),
                role: MdsRole::Unknown,
                term: 0,
                commit_index: 0,
                applied_index: 0,
                lag: 0,
            };
            if id == *me {
                info.role = match m.state {
                    openraft::ServerState::Leader => MdsRole::Leader,
                    openraft::ServerState::Candidate => MdsRole::Candidate,
                    openraft::ServerState::Learner => MdsRole::Learner,
                    openraft::ServerState::Follower if voter => MdsRole::Follower,
                    _ => MdsRole::Learner,
                };
                info.term = m.current_term;
                info.commit_index = applied;
                info.applied_index = applied;
                info.lag = if m.current_leader == Some(*me) {
                    0
                } else {
                    u64::MAX
                };
            } else if let Some(replication) = m.replication.as_ref() {
                // This MDS leads: it knows how far each member got.
                let matched = replication
                    .get(&id)
                    .and_then(|l| l.as_ref())
                    .map(|l| l.index);
                info.role = match (voter, matched) {
                    (_, None) => MdsRole::Unreachable,
                    (true, Some(_)) => MdsRole::Follower,
                    (false, Some(_)) => MdsRole::Learner,
                };
                info.term = m.current_term;
                info.commit_index = matched.unwrap_or(0);
                info.applied_index = matched.unwrap_or(0);
                info.lag = last.saturating_sub(matched.unwrap_or(0));
            } else {
                info.role = if voter {
                    MdsRole::Follower
                } else {
                    MdsRole::Learner
                };
                info.lag = u64::MAX;
            }
            out.push(info);
        }
        // An MDS that is not the leader cannot tell its own lag.
        for info in &mut out {
            if info.lag == u64::MAX {
                info.lag = 0;
            }
        }
        out
    }

    /// The group as this MDS's Raft node sees it now (see
    /// [`MdsGroup::members`]); a single MDS without Raft is a group of one
    /// that leads.
    pub fn membership(&self) -> MdsMembership {
        match self.raft() {
            Some((_, raft)) => raft_membership(raft),
            None => MdsMembership {
                members: vec![MdsMember {
                    id: MdsId(1),
                    addr: self.config.addr.clone(),
                    voter: true,
                }],
                leader: Some(MdsId(1)),
                term: 0,
                config_index: 0,
            },
        }
    }

    fn group_raft(&self) -> Result<&super::raft::MdsRaft> {
        self.raft()
            .map(|(_, r)| r)
            .ok_or_else(|| Error::invalid("this MDS runs without Raft: it has no group to change"))
    }
}

#[async_trait]
impl MdsGroup for MdsService {
    async fn allocate_mds_id(&self) -> Result<MdsId> {
        match self.commit(Command::AllocateMdsId).await? {
            ApplyOutcome::MdsId(id) => Ok(MdsId(id)),
            other => Err(unexpected(other)),
        }
    }

    async fn add_mds(&self, id: MdsId, addr: &str) -> Result<()> {
        let raft = self.group_raft()?;
        validate_addr(&format!("MDS {id}"), addr)?;
        if id.0 == 0 || id.0 >= self.core().state.next_mds_id() {
            return Err(Error::invalid(format!(
                "MDS id {id} was never allocated in this cluster; create the MDS with `pstorage make-mds`"
            )));
        }
        let membership = raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<MdsId> = membership.membership().voter_ids().collect();
        if let Some(node) = membership.membership().get_node(&id) {
            if node.addr != addr {
                return Err(Error::invalid(format!(
                    "MDS {id} is a member at {}, not {addr}; remove it with rm-mds first",
                    node.addr
                )));
            }
            if voters.contains(&id) {
                return Ok(());
            }
        }
        let members = membership.membership().nodes().count();
        if members >= MAX_MDS_MEMBERS && membership.membership().get_node(&id).is_none() {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "the MDS group has {members} members, the most it takes is \
                     {MAX_MDS_MEMBERS}: remove one with rm-mds first"
                ),
            ));
        }
        tracing::info!("MDS group: adding MDS {id} at {addr} as a learner");
        raft.add_learner(
            id,
            MdsNode {
                addr: addr.to_string(),
            },
            true,
        )
        .await
        .map_err(raft_write_error)?;
        let mut new_voters = voters;
        new_voters.insert(id);
        raft.change_membership(new_voters.clone(), false)
            .await
            .map_err(raft_write_error)?;
        let now = self.now();
        self.core().log_event(
            now,
            EventKind::Mds,
            EventLevel::Info,
            format!("MDS {id} ({addr}) joined the metadata group; voters now {new_voters:?}"),
        );
        self.flush_events().await;
        Ok(())
    }

    async fn remove_mds(&self, id: MdsId) -> Result<()> {
        let raft = self.group_raft()?;
        let membership = raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<MdsId> = membership.membership().voter_ids().collect();
        let Some(node) = membership.membership().get_node(&id).cloned() else {
            return Err(Error::not_found(format!(
                "MDS {id} is not a member of the metadata group (members: {:?})",
                membership
                    .membership()
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>()
            )));
        };
        if voters.len() == 1 && voters.contains(&id) {
            return Err(Error::invalid(format!(
                "MDS {id} is the only one: a cluster needs at least one MDS"
            )));
        }
        let now = self.now();
        // Logged first: if it is the leader removing itself, it may not be
        // able to commit anything afterwards.
        self.core().log_event(
            now,
            EventKind::Mds,
            EventLevel::Info,
            format!(
                "MDS {id} ({}) is being removed from the metadata group",
                node.addr
            ),
        );
        self.flush_events().await;
        if voters.contains(&id) {
            let mut rest = voters;
            rest.remove(&id);
            raft.change_membership(rest, false)
                .await
                .map_err(raft_write_error)?;
        } else {
            raft.change_membership(
                openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                false,
            )
            .await
            .map_err(raft_write_error)?;
        }
        Ok(())
    }

    async fn members(&self) -> Result<MdsMembership> {
        Ok(self.membership())
    }
}

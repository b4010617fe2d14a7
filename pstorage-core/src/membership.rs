//! Following the MDS group (DESIGN.md section 5, "Metadata HA"): which
//! MDS addresses a client or chunk server dials, in which order, and how
//! that list stays current and survives restarts.
//!
//! `bs.list` is only the bootstrap. A [`MemberDirectory`] merges it with
//! what the group itself reports ([`MdsGroup::members`]): the members
//! learned come first (the leader first, then the other voters, then
//! learners, each by id), then the bootstrap addresses that are not
//! members (a last resort, e.g. after every member moved). Addresses that
//! failed recently (a refused connection, a call that timed out) are tried
//! after the others, oldest failure first, so a dead or frozen MDS costs
//! one failure, not one per call. A removed MDS drops out of the learned
//! list at the next refresh.
//!
//! What was learned is persisted through a [`MemberStore`]
//! ([`FileMemberStore`]: the versioned text file `mds.list`, see
//! [`encode_member_list`]) so that a node restarts even when every
//! bootstrap MDS is gone. A saved list is only a hint: the first answer of
//! any MDS after a restart replaces it.
//!
//! The directory decides *when* to refresh ([`MemberDirectory::refresh_due`]:
//! after a new connection or a failure, and every
//! [`DirectoryOptions::refresh_period`] while in use); the transport
//! (`pstorage-rpc`'s `MdsClient`) or the chunk server's session
//! ([`crate::chunk::session`]) calls [`MemberDirectory::refresh`].
//!
//! Thread-safety: every method takes `&self` and may be called from any
//! thread; the state is behind a mutex never held across an await.
//! Durations are measured with `tokio::time` (a paused clock drives them
//! in tests); the wall clock ([`Clock`]) only stamps saved lists.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::traits::{Clock, MdsGroup};
use crate::types::{MdsId, MdsMember, MdsMembership};

/// File name of the persisted member list: in a chunk server's directory,
/// and in a cluster's configuration directory for SDK clients.
pub const MEMBER_LIST_FILE: &str = "mds.list";
/// Format version of [`encode_member_list`]; newer files are refused.
pub const MEMBER_LIST_VERSION: u32 = 1;
/// First line of a member list file, followed by a space and the version.
const MEMBER_LIST_MAGIC: &str = "pstorage-mds-list";

/// Where a [`MemberDirectory`] keeps what it learned across restarts.
pub trait MemberStore: Send + Sync {
    /// The membership saved last and its wall-clock time (ms since the
    /// epoch), or `Ok(None)` if nothing was saved. Errors: `Corrupt` for
    /// a malformed list, `InvalidArgument` for a newer format.
    fn load(&self) -> Result<Option<(MdsMembership, u64)>>;
    /// Replaces the saved membership (atomically: a crash leaves the old or
    /// the new one).
    fn save(&self, membership: &MdsMembership, saved_at_ms: u64) -> Result<()>;
    /// Where it is kept, for messages.
    fn describe(&self) -> String;
}

/// A [`MemberStore`] in a file (`mds.list`), written atomically (a
/// temporary file in the same directory, then rename).
#[derive(Debug, Clone)]
pub struct FileMemberStore {
    path: PathBuf,
}

impl FileMemberStore {
    /// A store of the membership at `path` (`mds.list`).
    pub fn new(path: impl Into<PathBuf>) -> FileMemberStore {
        FileMemberStore { path: path.into() }
    }

    /// The store in `dir` ([`MEMBER_LIST_FILE`]).
    pub fn in_dir(dir: &Path) -> FileMemberStore {
        FileMemberStore::new(dir.join(MEMBER_LIST_FILE))
    }

    /// The file the membership is saved in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl MemberStore for FileMemberStore {
    fn load(&self) -> Result<Option<(MdsMembership, u64)>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => decode_member_list(&text)
                .map(Some)
                .map_err(|e| e.context(self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from(e).context(format!("reading {}", self.path.display()))),
        }
    }

    fn save(&self, membership: &MdsMembership, saved_at_ms: u64) -> Result<()> {
        let text = encode_member_list(membership, saved_at_ms);
        // Several processes of one node (CLI, SDK clients) may share the
        // file: each writes its own temporary file.
        let tmp = self.path.with_extension(format!(
            "tmp.{}.{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut f = crate::private_files::private_options()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::from(e).context(format!("writing {}", self.path.display())));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A [`MemberStore`] in memory (tests, simulation). Counts its saves.
#[derive(Debug, Default)]
pub struct MemMemberStore {
    saved: Mutex<Option<(MdsMembership, u64)>>,
    saves: std::sync::atomic::AtomicUsize,
}

impl MemMemberStore {
    /// An empty store.
    pub fn new() -> MemMemberStore {
        MemMemberStore::default()
    }

    /// What was saved last.
    pub fn saved(&self) -> Option<MdsMembership> {
        self.saved.lock().as_ref().map(|(m, _)| m.clone())
    }

    /// How many times [`MemberStore::save`] was called.
    pub fn saves(&self) -> usize {
        self.saves.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl MemberStore for MemMemberStore {
    fn load(&self) -> Result<Option<(MdsMembership, u64)>> {
        Ok(self.saved.lock().clone())
    }

    fn save(&self, membership: &MdsMembership, saved_at_ms: u64) -> Result<()> {
        *self.saved.lock() = Some((membership.clone(), saved_at_ms));
        self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}

/// Encodes a member list file (format 1): line-oriented text, one
/// `key value...` per line, members by id:
///
/// ```text
/// pstorage-mds-list 1
/// saved_at_ms 1700000000000
/// term 3
/// config_index 12
/// leader 2
/// mds 1 127.0.0.1:2510 voter
/// mds 2 127.0.0.1:2511 voter
/// mds 3 127.0.0.1:2512 learner
/// ```
///
/// `leader` is absent when unknown. Readers ignore lines starting with `#`.
pub fn encode_member_list(membership: &MdsMembership, saved_at_ms: u64) -> String {
    let mut members: Vec<&MdsMember> = membership.members.iter().collect();
    members.sort_by_key(|m| m.id);
    let mut out = format!("{MEMBER_LIST_MAGIC} {MEMBER_LIST_VERSION}\n");
    out.push_str(&format!("saved_at_ms {saved_at_ms}\n"));
    out.push_str(&format!("term {}\n", membership.term));
    out.push_str(&format!("config_index {}\n", membership.config_index));
    if let Some(leader) = membership.leader {
        out.push_str(&format!("leader {leader}\n"));
    }
    for m in members {
        let role = if m.voter { "voter" } else { "learner" };
        out.push_str(&format!("mds {} {} {role}\n", m.id, m.addr));
    }
    out
}

/// Decodes [`encode_member_list`]'s format; returns the membership and the
/// time it was saved. Errors: `InvalidArgument` for a newer format version
/// (written by a newer pstorage), `Corrupt` for anything malformed.
pub fn decode_member_list(text: &str) -> Result<(MdsMembership, u64)> {
    let corrupt = |what: String| {
        Error::new(
            ErrorKind::Corrupt,
            format!("malformed MDS member list: {what}; delete the file (it is rebuilt from bs.list and the MDSes)"),
        )
    };
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let header = lines.next().ok_or_else(|| corrupt("empty".into()))?;
    let version = match header.split_once(' ') {
        Some((MEMBER_LIST_MAGIC, v)) => v
            .trim()
            .parse::<u32>()
            .map_err(|_| corrupt(format!("bad version {v:?}")))?,
        _ => return Err(corrupt(format!("unknown header {header:?}"))),
    };
    if version == 0 || version > MEMBER_LIST_VERSION {
        return Err(Error::invalid(format!(
            "MDS member list format {version} is newer than this pstorage reads \
             ({MEMBER_LIST_VERSION}); upgrade pstorage or delete the file"
        )));
    }
    let mut membership = MdsMembership {
        members: Vec::new(),
        leader: None,
        term: 0,
        config_index: 0,
    };
    let mut saved_at_ms = 0;
    let number = |v: Option<&str>, key: &str| -> Result<u64> {
        v.and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| corrupt(format!("bad {key} line")))
    };
    for line in lines {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("saved_at_ms") => saved_at_ms = number(words.next(), "saved_at_ms")?,
            Some("term") => membership.term = number(words.next(), "term")?,
            Some("config_index") => membership.config_index = number(words.next(), "config_index")?,
            Some("leader") => membership.leader = Some(MdsId(number(words.next(), "leader")?)),
            Some("mds") => {
                let id = MdsId(number(words.next(), "mds")?);
                let addr = words
                    .next()
                    .ok_or_else(|| corrupt(format!("no address for MDS {id}")))?;
                crate::conf::with_default_port(addr)
                    .map_err(|e| corrupt(format!("MDS {id}: {}", e.message())))?;
                let voter = match words.next() {
                    Some("voter") => true,
                    Some("learner") => false,
                    other => return Err(corrupt(format!("bad role {other:?} of MDS {id}"))),
                };
                if membership.members.iter().any(|m| m.id == id) {
                    return Err(corrupt(format!("MDS {id} listed twice")));
                }
                membership.members.push(MdsMember {
                    id,
                    addr: addr.to_string(),
                    voter,
                });
            }
            // Unknown keys of the same version cannot exist; refuse them
            // rather than guess.
            Some(other) => return Err(corrupt(format!("unknown key {other:?}"))),
            None => {}
        }
    }
    if membership.members.is_empty() {
        return Err(corrupt("no MDS listed".into()));
    }
    Ok((membership, saved_at_ms))
}

/// Tunables of a [`MemberDirectory`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryOptions {
    /// How often a directory in use asks the group again (clients ~10 s;
    /// chunk servers refresh from their session every few seconds).
    pub refresh_period: Duration,
    /// How long an address that failed is tried after the others.
    pub failure_memory: Duration,
}

impl Default for DirectoryOptions {
    fn default() -> Self {
        DirectoryOptions {
            refresh_period: Duration::from_secs(10),
            failure_memory: Duration::from_secs(30),
        }
    }
}

/// The MDS addresses a node knows and the order to dial them in; see the
/// module documentation.
pub struct MemberDirectory {
    state: Mutex<DirectoryState>,
    store: Option<Arc<dyn MemberStore>>,
    clock: Arc<dyn Clock>,
    options: DirectoryOptions,
}

impl std::fmt::Debug for MemberDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("MemberDirectory")
            .field("bootstrap", &state.bootstrap)
            .field("learned", &state.learned)
            .finish_non_exhaustive()
    }
}

struct DirectoryState {
    bootstrap: Vec<String>,
    learned: Option<MdsMembership>,
    /// `learned` came from the store and no MDS has confirmed it since:
    /// the first answer replaces it whatever its indexes (the cluster may
    /// have been rebuilt meanwhile).
    from_store: bool,
    failed: BTreeMap<String, Instant>,
    last_refresh: Option<Instant>,
    /// A new connection or a failure happened since the last refresh.
    refresh_wanted: bool,
    refreshing: bool,
    /// A failed save was logged already (best effort: warn once).
    save_warned: bool,
}

/// Resets the in-flight mark of a refresh, also when it is cancelled.
struct RefreshGuard<'a>(&'a MemberDirectory);

impl Drop for RefreshGuard<'_> {
    fn drop(&mut self) {
        self.0.state().refreshing = false;
    }
}

impl MemberDirectory {
    /// A directory over `bootstrap` (the `bs.list` addresses, maybe empty
    /// when `store` holds a list) and what `store` saved before. A store
    /// that cannot be read is ignored with a warning: it is a cache.
    pub fn new(
        bootstrap: Vec<String>,
        store: Option<Arc<dyn MemberStore>>,
        clock: Arc<dyn Clock>,
        options: DirectoryOptions,
    ) -> MemberDirectory {
        let mut learned = None;
        if let Some(store) = &store {
            match store.load() {
                Ok(Some((membership, _))) => learned = Some(membership),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "ignoring the saved MDS member list {}: {e}",
                    store.describe()
                ),
            }
        }
        let mut unique = Vec::with_capacity(bootstrap.len());
        for addr in bootstrap {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        MemberDirectory {
            state: Mutex::new(DirectoryState {
                bootstrap: unique,
                from_store: learned.is_some(),
                learned,
                failed: BTreeMap::new(),
                last_refresh: None,
                refresh_wanted: true,
                refreshing: false,
                save_warned: false,
            }),
            store,
            clock,
            options,
        }
    }

    /// A directory over `bootstrap` that saves nothing (callers without a
    /// configuration directory, tests); it still learns from the group.
    pub fn fixed(bootstrap: Vec<String>) -> MemberDirectory {
        MemberDirectory::new(
            bootstrap,
            None,
            Arc::new(crate::traits::SystemClock),
            DirectoryOptions::default(),
        )
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, DirectoryState> {
        // Every update leaves the state consistent: recover from a panic.
        self.state.lock()
    }

    /// Every known address in the order to dial them (see the module
    /// documentation). Empty only if neither a bootstrap list nor a saved
    /// list named any MDS.
    pub fn addrs(&self) -> Vec<String> {
        let mut state = self.state();
        let now = Instant::now();
        let memory = self.options.failure_memory;
        state
            .failed
            .retain(|_, at| now.saturating_duration_since(*at) < memory);
        let mut order: Vec<String> = Vec::new();
        if let Some(m) = &state.learned {
            if let Some(leader) = m.leader_addr() {
                order.push(leader.to_string());
            }
            let mut members: Vec<&MdsMember> = m.members.iter().collect();
            members.sort_by_key(|m| (!m.voter, m.id));
            for member in members {
                if !order.contains(&member.addr) {
                    order.push(member.addr.clone());
                }
            }
        }
        for addr in &state.bootstrap {
            if !order.contains(addr) {
                order.push(addr.clone());
            }
        }
        // None (no recent failure) sorts first; the sort is stable.
        order.sort_by_key(|addr| state.failed.get(addr).copied());
        order
    }

    /// The membership learned (or loaded), if any.
    pub fn membership(&self) -> Option<MdsMembership> {
        self.state().learned.clone()
    }

    /// The bootstrap addresses it was made with.
    pub fn bootstrap(&self) -> Vec<String> {
        self.state().bootstrap.clone()
    }

    /// `addr` could not be reached, or a call on it failed or timed out:
    /// try it after the others for a while, and refresh at the next chance.
    pub fn note_failure(&self, addr: &str) {
        let mut state = self.state();
        state.failed.insert(addr.to_string(), Instant::now());
        state.refresh_wanted = true;
    }

    /// A connection to `addr` was made: it is fine again, and the group
    /// should be asked (through it) who is a member now.
    pub fn note_connected(&self, addr: &str) {
        let mut state = self.state();
        state.failed.remove(addr);
        state.refresh_wanted = true;
    }

    /// Whether a refresh should run now: none is running, and there was a
    /// new connection or a failure since the last one, or the last one is
    /// older than the refresh period.
    pub fn refresh_due(&self) -> bool {
        let state = self.state();
        !state.refreshing
            && (state.refresh_wanted
                || state
                    .last_refresh
                    .is_none_or(|at| at.elapsed() >= self.options.refresh_period))
    }

    /// Asks `group` for the members (within `timeout`) and learns the
    /// answer. Returns whether the known membership changed. If another
    /// refresh is running, returns `Ok(false)` at once. Errors: the call's,
    /// or `TimedOut`.
    pub async fn refresh(&self, group: &dyn MdsGroup, timeout: Duration) -> Result<bool> {
        {
            let mut state = self.state();
            if state.refreshing {
                return Ok(false);
            }
            state.refreshing = true;
            state.refresh_wanted = false;
        }
        let _guard = RefreshGuard(self);
        let answer = match tokio::time::timeout(timeout, group.members()).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "no MDS told the group members within {} ms",
                    timeout.as_millis()
                ),
            )),
        };
        let result = answer.map(|m| self.learn(m));
        let mut state = self.state();
        state.last_refresh = Some(Instant::now());
        if result.is_err() {
            // Try again at the next chance rather than a period later.
            state.refresh_wanted = true;
        }
        result
    }

    /// Takes in an MDS's answer to `members()`; returns whether what is
    /// known changed (then it is saved). An answer older than what is known
    /// (a lagging follower) does not replace it: members are taken from
    /// the answer with the higher `config_index`, the leader from the one
    /// with the higher `term`. An answer with no members (an MDS that has
    /// not joined the group yet) is ignored.
    pub fn learn(&self, answer: MdsMembership) -> bool {
        if answer.members.is_empty() {
            return false;
        }
        let saved = {
            let mut state = self.state();
            let from_store = state.from_store;
            let merged = match &state.learned {
                None => answer,
                Some(_) if from_store => answer,
                Some(known) => {
                    let mut merged = known.clone();
                    if answer.config_index >= known.config_index {
                        merged.members = answer.members.clone();
                        merged.config_index = answer.config_index;
                    }
                    if answer.term > known.term
                        || (answer.term == known.term && answer.leader.is_some())
                    {
                        merged.leader = answer.leader;
                        merged.term = answer.term;
                    }
                    if merged
                        .leader
                        .is_some_and(|l| !merged.members.iter().any(|m| m.id == l))
                    {
                        merged.leader = None;
                    }
                    merged
                }
            };
            state.from_store = false;
            let changed = state.learned.as_ref().is_none_or(|known| {
                !same_members(&known.members, &merged.members) || known.leader != merged.leader
            });
            if !changed {
                state.learned = Some(merged);
                return false;
            }
            tracing::info!(
                members = ?merged.members.iter().map(|m| (m.id, m.addr.as_str())).collect::<Vec<_>>(),
                leader = ?merged.leader,
                "MDS group membership learned"
            );
            state.learned = Some(merged.clone());
            merged
        };
        self.save(&saved);
        true
    }

    /// Saves `membership` to the store, best effort (a warning, once).
    fn save(&self, membership: &MdsMembership) {
        let Some(store) = &self.store else {
            return;
        };
        match store.save(membership, self.clock.now_ms()) {
            Ok(()) => self.state().save_warned = false,
            Err(e) => {
                let mut state = self.state();
                if !state.save_warned {
                    state.save_warned = true;
                    tracing::warn!(
                        "cannot save the MDS member list to {} (it only speeds up the next \
                         start): {e}",
                        store.describe()
                    );
                }
            }
        }
    }
}

fn same_members(a: &[MdsMember], b: &[MdsMember]) -> bool {
    let key = |v: &[MdsMember]| {
        let mut v: Vec<(MdsId, String, bool)> =
            v.iter().map(|m| (m.id, m.addr.clone(), m.voter)).collect();
        v.sort();
        v
    };
    key(a) == key(b)
}

#[cfg(test)]
mod tests;

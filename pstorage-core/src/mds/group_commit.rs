//! The leader's group commit: commands proposed while an entry is on its
//! way through the Raft group wait, and go together as the next entry, so
//! N concurrent metadata operations cost one log append (and one sync) on
//! each MDS instead of N. openraft (0.9) appends and syncs each entry on
//! its own before it takes the next client write, so without this every
//! operation paid a sync of its own, one after another.
//!
//! One entry is in flight at a time, driven by a task that lives while
//! proposals wait: it takes up to [`MAX_BATCH`] waiting commands (and
//! [`MAX_ENTRY_BYTES`] of them, or a single larger one), in the order they
//! were proposed, writes them as one entry ([`RaftRequest`]),
//! and answers each proposer with its own command's outcome (each command
//! applies on its own, in order: one refused changes nothing for the
//! others). A proposer that stops waiting does not withdraw its command:
//! as with a single write handed to openraft, it may still take effect.
//!
//! A command can also be proposed *later* ([`GroupCommit::propose_later`]):
//! queued in order like any other, answered by nobody, it goes with the next
//! entry that someone else's proposal starts, or on its own once
//! [`LATER_DELAY`] has passed with nothing else proposed. A lease's release
//! goes this way (its client is answered at once), so the release of one
//! file and the open of the next share an entry. [`GroupCommit::settle`]
//! waits until every command queued before it has had its entry.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use super::raft::{MdsRaft, RaftRequest};
use super::state::{ApplyOutcome, Command};
use crate::error::{Error, ErrorKind, Result};

/// Most commands in one entry.
pub const MAX_BATCH: usize = 64;

/// Most bytes of commands (encoded) in one entry, unless its only command
/// is larger: a command is at most a client's request (4 MiB on the wire),
/// so an entry stays far below what one `raftAppend` may carry, and the
/// Raft network can split appends by entries (`pstorage-rpc`'s
/// `raft::MAX_APPEND_BYTES`).
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// How long a command proposed later waits for another proposal to carry
/// it before it starts an entry of its own: longer than a client takes to
/// send its next request after an answer (a few hundred microseconds on
/// one host), short beside a lease.
pub const LATER_DELAY: Duration = Duration::from_millis(2);

/// Most bytes of one command (encoded): a client's request is at most
/// 4 MiB, and what the MDS logs on its own (events, revocations) stays
/// below this by its own bounds. A larger command is refused before it is
/// proposed, whatever it is: past validation, a tagged command's refusal is
/// logged with the command.
pub const MAX_COMMAND_BYTES: usize = 8 << 20;

/// The bytes `cmd` takes in an entry.
pub fn encoded_size(cmd: &Command) -> usize {
    // Encoding into a counter cannot fail for our types; count a failure
    // as a whole entry's worth, which puts the command alone.
    postcard::experimental::serialized_size(cmd).unwrap_or(MAX_ENTRY_BYTES)
}

/// How many of the commands of `sizes` (in order) the next entry takes: at
/// least one, at most [`MAX_BATCH`], and no more than [`MAX_ENTRY_BYTES`]
/// unless the first alone is larger.
pub fn batch_len(sizes: impl IntoIterator<Item = usize>) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for size in sizes.into_iter().take(MAX_BATCH) {
        total = total.saturating_add(size);
        if n > 0 && total > MAX_ENTRY_BYTES {
            break;
        }
        n += 1;
    }
    n
}

struct Waiting {
    /// Its [`encoded_size`].
    bytes: usize,
    /// Its place in the queue: commands are numbered from 0 as they are
    /// queued.
    seq: u64,
    cmd: Command,
    /// `None`: proposed later, nobody waits for its outcome.
    reply: Option<oneshot::Sender<Result<ApplyOutcome>>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A task is driving entries through the group.
    driving: bool,
    /// A timer will start driving for the commands proposed later.
    timer: bool,
    /// Commands numbered below this go with the next entry even if only
    /// commands proposed later wait (their timer fired, or a settle).
    urgent: u64,
    /// Commands queued so far (the next one's `seq`).
    queued: u64,
    /// Entries written, and the commands they carried (the metrics).
    entries: u64,
    commands: u64,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Every command numbered below this has had its entry's outcome.
    done: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            queue: Mutex::default(),
            done: watch::Sender::new(0),
        }
    }
}

/// What the group commit and the read barriers of one MDS did since it
/// started (its metrics endpoint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Raft entries the group commit wrote (whatever their outcome).
    pub entries: u64,
    /// Commands those entries carried: `commands / entries` is the batching.
    pub commands: u64,
    /// Commands waiting for the next entry right now (the queue depth).
    pub waiting: u64,
    /// Read barrier rounds run, each serving every read that waited.
    pub barrier_rounds: u64,
    /// Reads waiting for the next barrier round right now.
    pub barrier_waiting: u64,
    /// Reads served without a round: an MDS that is its group's only
    /// voter and leads it.
    pub barrier_skipped: u64,
}

/// The proposals of one MDS.
#[derive(Default)]
pub(super) struct GroupCommit {
    shared: Arc<Shared>,
}

impl GroupCommit {
    /// Entries and commands so far, and commands waiting (the other
    /// fields of [`CommitStats`] are the barriers').
    pub(super) fn stats(&self) -> CommitStats {
        let queue = self.shared.queue.lock();
        CommitStats {
            entries: queue.entries,
            commands: queue.commands,
            waiting: queue.waiting.len() as u64,
            ..CommitStats::default()
        }
    }

    /// Proposes `cmd` with whatever else is waiting and returns its own
    /// outcome. `timeout`: how long the proposer waits for it, and an
    /// entry for its commit (`TimedOut` then: the command may still take
    /// effect).
    pub(super) async fn propose(
        &self,
        raft: &MdsRaft,
        cmd: Command,
        timeout: Duration,
    ) -> Result<ApplyOutcome> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.shared.queue.lock();
            push(&mut queue, cmd, Some(reply))?;
            !std::mem::replace(&mut queue.driving, true)
        };
        if start {
            tokio::spawn(drive(Arc::clone(&self.shared), raft.clone(), timeout));
        }
        // Bounded from the proposal, as a write of its own was: waiting
        // behind an entry that times out must not double the wait.
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::new(
                ErrorKind::TimedOut,
                "the MDS stopped before the metadata group answered; the command may still \
                 take effect: retry",
            )),
            Err(_) => Err(commit_timed_out(timeout)),
        }
    }

    /// Queues `cmd` behind everything proposed so far, to go with the next
    /// entry, and returns at once: nobody is told its outcome. An entry
    /// starts for it after [`LATER_DELAY`] if no other proposal started
    /// one.
    pub(super) fn propose_later(
        &self,
        raft: &MdsRaft,
        cmd: Command,
        timeout: Duration,
    ) -> Result<()> {
        let arm = {
            let mut queue = self.shared.queue.lock();
            push(&mut queue, cmd, None)?;
            !queue.driving && !std::mem::replace(&mut queue.timer, true)
        };
        if arm {
            arm_timer(Arc::clone(&self.shared), raft.clone(), timeout);
        }
        Ok(())
    }

    /// Returns once every command queued before this call (those proposed
    /// later included) has had its entry's outcome, starting an entry now
    /// for those still waiting, or after `timeout`.
    pub(super) async fn settle(&self, raft: &MdsRaft, timeout: Duration) {
        let (target, start) = {
            let mut queue = self.shared.queue.lock();
            let target = queue.queued;
            queue.urgent = queue.urgent.max(target);
            let start = !queue.waiting.is_empty() && !std::mem::replace(&mut queue.driving, true);
            (target, start)
        };
        if start {
            tokio::spawn(drive(Arc::clone(&self.shared), raft.clone(), timeout));
        }
        let mut done = self.shared.done.subscribe();
        let _ = tokio::time::timeout(timeout, done.wait_for(|done| *done >= target)).await;
    }
}

/// After [`LATER_DELAY`], starts an entry for the commands proposed later
/// that are still waiting (if no entry is on its way).
fn arm_timer(shared: Arc<Shared>, raft: MdsRaft, timeout: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(LATER_DELAY).await;
        let start = {
            let mut queue = shared.queue.lock();
            queue.timer = false;
            queue.urgent = queue.queued;
            !queue.waiting.is_empty() && !std::mem::replace(&mut queue.driving, true)
        };
        if start {
            drive(shared, raft, timeout).await;
        }
    });
}

/// Queues `cmd` (refused if too large for an entry).
fn push(
    queue: &mut Queue,
    cmd: Command,
    reply: Option<oneshot::Sender<Result<ApplyOutcome>>>,
) -> Result<()> {
    let bytes = encoded_size(&cmd);
    if bytes > MAX_COMMAND_BYTES {
        return Err(Error::invalid(format!(
            "a metadata command of {bytes} bytes exceeds the largest the MDS group logs \
             ({MAX_COMMAND_BYTES} bytes)"
        )));
    }
    let seq = queue.queued;
    queue.queued += 1;
    queue.waiting.push(Waiting {
        bytes,
        seq,
        cmd,
        reply,
    });
    Ok(())
}

/// The error of a command not committed within `timeout`.
fn commit_timed_out(timeout: Duration) -> Error {
    Error::new(
        ErrorKind::TimedOut,
        format!(
            "the metadata group did not commit the command within {} s (this MDS may have lost \
             its leadership); it may still take effect: retry",
            timeout.as_secs()
        ),
    )
}

/// Writes the waiting commands, an entry at a time, until none wait.
async fn drive(shared: Arc<Shared>, raft: MdsRaft, timeout: Duration) {
    loop {
        let batch: Vec<Waiting> = {
            let mut queue = shared.queue.lock();
            // Commands proposed later wait for company (or their timer):
            // one queued as the entry before it ended would otherwise go
            // alone, right away.
            let urgent = queue.urgent;
            if !queue
                .waiting
                .iter()
                .any(|w| w.reply.is_some() || w.seq < urgent)
            {
                queue.driving = false;
                let arm = !queue.waiting.is_empty() && !std::mem::replace(&mut queue.timer, true);
                drop(queue);
                if arm {
                    arm_timer(shared, raft, timeout);
                }
                return;
            }
            let n = batch_len(queue.waiting.iter().map(|w| w.bytes));
            queue.entries += 1;
            queue.commands += n as u64;
            queue.waiting.drain(..n).collect()
        };
        let next = batch.last().map_or(0, |w| w.seq + 1);
        let (cmds, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|w| (w.cmd, w.reply)).unzip();
        let count = cmds.len();
        let written = tokio::time::timeout(timeout, raft.client_write(RaftRequest { cmds })).await;
        let results: Vec<Result<ApplyOutcome>> = match written {
            Ok(Ok(reply)) => reply.data.into_results(count),
            Ok(Err(e)) => {
                let e = super::service::raft_write_error(e);
                (0..count).map(|_| Err(e.clone())).collect()
            }
            Err(_) => {
                let e = commit_timed_out(timeout);
                (0..count).map(|_| Err(e.clone())).collect()
            }
        };
        for (reply, result) in replies.into_iter().zip(results) {
            // A proposer that stopped waiting (or never waited) is not told.
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
        shared.done.send_replace(next);
    }
}

/// Read barriers shared the same way: a read must not start its barrier
/// before it arrived, so a reader that arrives while a barrier round is in
/// flight waits for the next round, which starts when that one ends and
/// serves every reader that arrived meanwhile. Each round is one
/// `ensure_linearizable` (a heartbeat to a majority and the apply up to its
/// read index): N concurrent `stat`s cost about two rounds, not N.
#[derive(Default)]
pub(super) struct ReadBarriers {
    queue: Arc<Mutex<BarrierQueue>>,
}

impl ReadBarriers {
    /// Rounds run so far.
    pub(super) fn rounds(&self) -> u64 {
        self.queue.lock().rounds
    }

    /// Reads served without a round (one MDS: see `sole_voter_serving`).
    pub(super) fn skipped(&self) -> u64 {
        self.queue.lock().skipped
    }

    /// Counts a read served without a round.
    pub(super) fn count_skipped(&self) {
        self.queue.lock().skipped += 1;
    }

    /// Reads waiting for the next round.
    pub(super) fn waiting(&self) -> u64 {
        self.queue.lock().waiting.len() as u64
    }

    /// Returns once a barrier round that started after this call has
    /// confirmed this MDS's leadership and applied everything committed
    /// before it (its error otherwise).
    pub(super) async fn wait(&self, raft: &MdsRaft) -> Result<()> {
        let raft = raft.clone();
        self.wait_for(move || {
            let raft = raft.clone();
            async move {
                raft.ensure_linearizable()
                    .await
                    .map(|_| ())
                    .map_err(super::service::raft_read_error)
            }
        })
        .await
    }

    /// [`wait`](Self::wait) with the round's work given: `barrier` runs
    /// once per round (the rounds of this call's driver, if it starts one).
    async fn wait_for<B, F>(&self, barrier: B) -> Result<()>
    where
        B: Fn() -> F + Send + 'static,
        F: Future<Output = Result<()>> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock();
            queue.waiting.push(done);
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(rounds(Arc::clone(&self.queue), barrier));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::unavailable(
                "the MDS stopped before its read barrier finished: retry",
            ))
        })
    }
}

#[derive(Default)]
struct BarrierQueue {
    waiting: Vec<oneshot::Sender<Result<()>>>,
    /// A task is running rounds.
    running: bool,
    /// Rounds started.
    rounds: u64,
    /// Reads served without a round.
    skipped: u64,
}

/// Runs barrier rounds until no reader waits.
async fn rounds<B, F>(queue: Arc<Mutex<BarrierQueue>>, barrier: B)
where
    B: Fn() -> F,
    F: Future<Output = Result<()>>,
{
    loop {
        let waiting = {
            let mut queue = queue.lock();
            if queue.waiting.is_empty() {
                queue.running = false;
                return;
            }
            queue.rounds += 1;
            std::mem::take(&mut queue.waiting)
        };
        // Starts after every one of them arrived.
        let result = barrier().await;
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::Semaphore;

    #[test]
    fn an_entry_takes_commands_up_to_its_count_and_its_bytes() {
        assert_eq!(batch_len([]), 0);
        assert_eq!(batch_len([10; 100]), MAX_BATCH);
        assert_eq!(batch_len([10, 20, 30]), 3);
        // A command larger than an entry goes alone, first or not.
        assert_eq!(batch_len([5 * MAX_ENTRY_BYTES, 10]), 1);
        assert_eq!(batch_len([10, 5 * MAX_ENTRY_BYTES, 10]), 1);
        // Up to the budget, and not a byte over it.
        let quarter = MAX_ENTRY_BYTES / 4;
        assert_eq!(batch_len([quarter; 10]), 4);
        assert_eq!(batch_len([quarter, quarter, quarter, quarter + 1]), 3);
    }

    #[test]
    fn a_commands_size_is_its_encoding() {
        let cmd = Command::Unlink {
            path: format!("/{}", "x".repeat(1000)),
            now_ms: 7,
        };
        let encoded = postcard::to_allocvec(&cmd).unwrap();
        assert_eq!(encoded_size(&cmd), encoded.len());
    }

    /// Waits until `cond` holds, yielding to the other tasks.
    async fn until(cond: impl Fn() -> bool) {
        while !cond() {
            tokio::task::yield_now().await;
        }
    }

    /// The rule the sharing rests on (linearizable reads): a reader that
    /// arrives while a round is in flight is not answered by that round,
    /// which may have confirmed the leadership before the reader's write
    /// was acknowledged; it waits for the next round.
    #[tokio::test]
    async fn a_read_arriving_during_a_round_waits_for_the_next_one() {
        let barriers = Arc::new(ReadBarriers::default());
        let started = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Semaphore::new(0));
        let read = |barriers: &Arc<ReadBarriers>| {
            let (barriers, started, release) = (barriers.clone(), started.clone(), release.clone());
            tokio::spawn(async move {
                barriers
                    .wait_for(move || {
                        let (started, release) = (started.clone(), release.clone());
                        async move {
                            started.fetch_add(1, Ordering::SeqCst);
                            release.acquire().await.expect("open").forget();
                            Ok(())
                        }
                    })
                    .await
            })
        };
        let first = read(&barriers);
        until(|| started.load(Ordering::SeqCst) == 1).await;
        let second = read(&barriers);
        until(|| barriers.waiting() == 1).await;

        release.add_permits(1);
        first.await.unwrap().unwrap();
        // Either the next round starts for it, or (the bug) it was
        // answered already.
        until(|| started.load(Ordering::SeqCst) == 2 || second.is_finished()).await;
        assert!(
            !second.is_finished(),
            "answered by a round that started before it"
        );
        release.add_permits(1);
        second.await.unwrap().unwrap();
        assert_eq!(barriers.rounds(), 2);
        assert_eq!(barriers.waiting(), 0);
    }
}

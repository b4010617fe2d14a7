//! The clients' workload: each client owns one file (write lease) and one
//! directory, and runs writes, reads, flushes, reopen cycles and namespace
//! operations one at a time, checking every answer against its models.

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pstorage_core::client::{Client, ClientOptions, File};
use pstorage_core::types::{LeaseMode, OpenFlags, BLOCK_SIZE};
use pstorage_core::ErrorKind;
use rand::Rng;
use tokio::time::Instant;

use crate::check::{decode_block, encode_block, BlockModel, NameState, NamespaceModel};
use crate::trace::Trace;
use crate::SimRng;

/// What every client shares with the driver.
pub struct Shared {
    pub trace: Arc<Trace>,
    pub rng: SimRng,
    pub stop: AtomicBool,
    pub ops: AtomicU64,
    pub violations: Mutex<Vec<String>>,
    /// Bumped at every chunk server crash (unflushed writes may be lost).
    pub crashes: AtomicU64,
    /// Windows of faults beyond what the cluster tolerates without a pause
    /// (every chunk server down at once): `(start, end)`, `None` while it
    /// lasts. Operations overlapping one (or ending within
    /// [`OUTAGE_GRACE`] of its end) are exempt from the availability and
    /// latency checks.
    pub outages: Mutex<Vec<(Instant, Option<Instant>)>>,
    /// One write in eight covers 16 to 32 blocks (the chunk store writes
    /// those straight into its files, in place or into the blocks' other
    /// data slot). Only with the real chunk store: the memory one does
    /// nothing different with them, and its seeds keep their runs.
    pub big_writes: bool,
}

/// The client's `io_timeout` (retries of one operation) in the simulator:
/// `ClientOptions::default()`.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Slack on top of [`IO_TIMEOUT`] for the last call in flight when the
/// retries end (an MDS call's deadline is 8 s, a chain write's 3 s per
/// replica).
pub const LATENCY_SLACK: Duration = Duration::from_secs(15);
/// How long after an outage the cluster gets to serve again.
pub const OUTAGE_GRACE: Duration = Duration::from_secs(90);

impl Shared {
    pub fn violation(&self, text: String) {
        self.trace.event(format!("VIOLATION {text}"));
        self.violations.lock().push(text);
    }

    /// Whether an operation that ran over `[started, ended]` overlapped
    /// an outage (or its grace period).
    pub fn in_outage(&self, started: Instant, ended: Instant) -> bool {
        self.outages
            .lock()
            .iter()
            .any(|(from, to)| *from <= ended && to.is_none_or(|to| to + OUTAGE_GRACE >= started))
    }

    fn roll(&self, below: u32) -> u32 {
        self.rng.lock().gen_range(0..below)
    }
}

/// One client of the workload and its models.
pub struct Worker {
    pub id: u32,
    client: Client,
    shared: Arc<Shared>,
    blocks: Vec<BlockModel>,
    names: NamespaceModel,
    file: Option<File>,
    next_value: u64,
    seen_crashes: u64,
    last_open_error: Option<ErrorKind>,
    /// The operation in progress whose effect the models must allow if the
    /// client crashes in the middle of it.
    in_flight: InFlight,
    /// What the client is doing (for a report of a stuck operation).
    pub doing: Arc<Mutex<String>>,
}

/// An operation a crash may interrupt after part of it took effect.
#[derive(Debug, Clone, Default)]
enum InFlight {
    #[default]
    Nothing,
    /// A write of these values from this block on.
    Write { first: u64, values: Vec<u64> },
    /// A mkdir or unlink of this name of the client's directory.
    Name(String),
}

/// Names of a client's directory the workload uses.
const NAMES: u32 = 4;

impl Worker {
    pub fn new(id: u32, client: Client, shared: Arc<Shared>, blocks: u64) -> Worker {
        Worker {
            id,
            client,
            shared,
            blocks: vec![BlockModel::default(); blocks as usize],
            names: NamespaceModel::default(),
            file: None,
            next_value: 0,
            seen_crashes: 0,
            last_open_error: None,
            in_flight: InFlight::Nothing,
            doing: Arc::new(Mutex::new("starting".into())),
        }
    }

    pub fn client_options() -> ClientOptions {
        ClientOptions::default()
    }

    /// The client process crashed (its task was aborted wherever it was)
    /// and restarts as `client`: the file it had open is abandoned without
    /// a close (its lease stays until it expires), and the models allow
    /// what a crash allows: the interrupted write may have reached some
    /// replicas or none, the interrupted namespace operation may or may
    /// not have taken effect, and writes never flushed may be lost.
    pub fn crash(&mut self, client: Client) {
        match std::mem::take(&mut self.in_flight) {
            InFlight::Nothing => {}
            InFlight::Write { first, values } => {
                for (i, value) in values.into_iter().enumerate() {
                    self.blocks[(first + i as u64) as usize].write_done(value, false);
                }
            }
            InFlight::Name(name) => self.names.set(&name, NameState::Unknown),
        }
        for block in &mut self.blocks {
            block.crashed();
        }
        if let Some(file) = self.file.take() {
            // Its process is gone: no close, no last commit (the network
            // refuses what the dead node's leftover tasks send).
            file.abandon();
        }
        self.client = client;
        self.event("crashed; restarted as a new process".into());
        self.doing("restarted".into());
    }

    fn path(&self) -> String {
        format!("/f{}", self.id)
    }

    fn dir(&self) -> String {
        format!("/d{}", self.id)
    }

    fn event(&self, text: String) {
        self.shared.trace.event(format!("client{} {text}", self.id));
    }

    fn doing(&self, what: String) {
        *self.doing.lock() = what;
    }

    fn sync_crashes(&mut self) {
        let crashes = self.shared.crashes.load(Ordering::SeqCst);
        if crashes != self.seen_crashes {
            self.seen_crashes = crashes;
            for block in &mut self.blocks {
                block.crashed();
            }
        }
    }

    fn new_value(&mut self) -> u64 {
        self.next_value += 1;
        ((self.id as u64 + 1) << 48) | self.next_value
    }

    /// Runs operations until the driver says stop.
    pub async fn run(&mut self) {
        while !self.shared.stop.load(Ordering::SeqCst) {
            self.step().await;
            self.shared.ops.fetch_add(1, Ordering::SeqCst);
            let think = self.shared.roll(40) as u64;
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
        self.doing("done".into());
    }

    async fn ensure_open(&mut self) -> bool {
        if let Some(file) = &self.file {
            if !file.is_fenced() {
                return true;
            }
            self.event("file fenced (lease lost); reopening".into());
            // Like a crash of this client: writes it never flushed may be
            // lost (their size was never committed).
            for block in &mut self.blocks {
                block.crashed();
            }
            let _ = file.close().await;
            self.file = None;
        }
        self.doing(format!("open {}", self.path()));
        let flags = OpenFlags {
            create: true,
            ..OpenFlags::default()
        };
        match self
            .client
            .open(&self.path(), LeaseMode::Write, flags)
            .await
        {
            Ok(file) => {
                self.event(format!("open {} -> ok (size {})", self.path(), file.size()));
                self.file = Some(file);
                true
            }
            Err(e) => {
                self.last_open_error = Some(e.kind());
                self.event(format!("open {} -> {:?}", self.path(), e.kind()));
                tokio::time::sleep(Duration::from_millis(500)).await;
                false
            }
        }
    }

    async fn step(&mut self) {
        let started = Instant::now();
        if !self.ensure_open().await {
            // `Busy`: a lease left by an open whose answer was lost, until
            // it expires (the cluster is right to refuse).
            let busy = self.last_open_error == Some(ErrorKind::Busy);
            self.check_service("open", started, busy);
            return;
        }
        self.check_service("open", started, true);
        let started = Instant::now();
        let roll = self.shared.roll(100);
        let (what, ok) = match roll {
            0..=44 => ("write", self.write().await),
            45..=74 => ("read", self.read().await),
            75..=87 => ("flush", self.flush().await),
            88..=90 => ("close", self.reopen().await),
            _ => ("namespace operation", self.namespace().await),
        };
        self.check_service(what, started, ok);
    }

    /// The availability and latency checks of one operation: with at most
    /// one chunk server and one MDS faulty at a time (and the network
    /// faults), the cluster serves every operation within the client's
    /// `io_timeout` (plus the deadline of the call in flight): an
    /// operation that fails, or takes longer, is a violation (a missing
    /// deadline, a server that does not fail over, a copy that never
    /// finishes...). Not checked around an outage of every chunk server.
    fn check_service(&self, what: &str, started: Instant, ok: bool) {
        let ended = Instant::now();
        let took = ended - started;
        if self.shared.in_outage(started, ended) {
            return;
        }
        if took > IO_TIMEOUT + LATENCY_SLACK {
            self.shared.violation(format!(
                "client{}: a {what} took {:.1} s (more than the io_timeout of {} s plus {} s): \
                 an operation is stuck behind a fault the cluster tolerates",
                self.id,
                took.as_secs_f64(),
                IO_TIMEOUT.as_secs(),
                LATENCY_SLACK.as_secs()
            ));
        } else if !ok {
            self.shared.violation(format!(
                "client{}: a {what} failed after {:.1} s although at most one chunk server and \
                 one MDS were faulty at a time (unavailable)",
                self.id,
                took.as_secs_f64()
            ));
        }
    }

    fn pick_range(&self) -> (u64, u64) {
        let total = self.blocks.len() as u64;
        let first = self.shared.roll(total as u32) as u64;
        let count = 1 + self.shared.roll(3) as u64;
        (first, count.min(total - first))
    }

    async fn write(&mut self) -> bool {
        let total = self.blocks.len() as u64;
        let (first, count) = if self.shared.big_writes && total >= 32 && self.shared.roll(8) == 0 {
            let count = 16 + self.shared.roll(17) as u64;
            (self.shared.roll((total - count + 1) as u32) as u64, count)
        } else {
            self.pick_range()
        };
        let values: Vec<u64> = (0..count).map(|_| self.new_value()).collect();
        let mut data = Vec::with_capacity((count * BLOCK_SIZE) as usize);
        for (i, value) in values.iter().enumerate() {
            data.extend_from_slice(&encode_block(*value, first + i as u64));
        }
        self.doing(format!("write blocks {first}..{}", first + count));
        self.in_flight = InFlight::Write {
            first,
            values: values.clone(),
        };
        let file = self.file.as_ref().expect("open");
        let result = file
            .write_at_bytes(first * BLOCK_SIZE, Bytes::from(data))
            .await;
        self.in_flight = InFlight::Nothing;
        self.sync_crashes();
        let ok = result.is_ok();
        for (i, value) in values.iter().enumerate() {
            self.blocks[(first + i as u64) as usize].write_done(*value, ok);
        }
        self.event(format!(
            "write blocks {first}..{} values {:x?} -> {}",
            first + count,
            values,
            outcome(&result)
        ));
        ok
    }

    async fn read(&mut self) -> bool {
        let (first, count) = self.pick_range();
        self.doing(format!("read blocks {first}..{}", first + count));
        let file = self.file.as_ref().expect("open");
        let result = file
            .read_at_bytes(first * BLOCK_SIZE, count * BLOCK_SIZE)
            .await;
        self.sync_crashes();
        match result {
            Ok(bytes) => {
                let mut values = Vec::new();
                for (i, chunk) in bytes.chunks(BLOCK_SIZE as usize).enumerate() {
                    let block = first + i as u64;
                    let mut padded = chunk.to_vec();
                    // A short read ends the file: the rest reads as zeros.
                    padded.resize(BLOCK_SIZE as usize, 0);
                    match decode_block(&padded, block) {
                        Ok(value) => {
                            values.push(value);
                            if let Err(e) = self.blocks[block as usize].check_read(block, value) {
                                self.shared.violation(format!(
                                    "client{} {}: {e}",
                                    self.id,
                                    self.path()
                                ));
                            }
                        }
                        Err(e) => {
                            self.shared
                                .violation(format!("client{} {}: {e}", self.id, self.path()))
                        }
                    }
                }
                // Blocks past the end of the file read as zeros.
                for block in first + (bytes.len() as u64).div_ceil(BLOCK_SIZE)..first + count {
                    values.push(0);
                    if let Err(e) = self.blocks[block as usize].check_read(block, 0) {
                        self.shared.violation(format!(
                            "client{} {} (past the end of the file, size {}): {e}",
                            self.id,
                            self.path(),
                            bytes.len() as u64 + first * BLOCK_SIZE
                        ));
                    }
                }
                self.event(format!(
                    "read blocks {first}..{} -> {:x?}",
                    first + count,
                    values
                ));
                true
            }
            Err(e) => {
                self.event(format!(
                    "read blocks {first}..{} -> {:?}",
                    first + count,
                    e.kind()
                ));
                false
            }
        }
    }

    async fn flush(&mut self) -> bool {
        self.doing("flush".into());
        let file = self.file.as_ref().expect("open");
        let result = file.flush().await;
        self.sync_crashes();
        if result.is_ok() {
            for block in &mut self.blocks {
                block.flush_done();
            }
        }
        self.event(format!("flush -> {}", outcome(&result)));
        result.is_ok()
    }

    async fn reopen(&mut self) -> bool {
        self.doing("close".into());
        let file = self.file.take().expect("open");
        // close flushes first: a success makes everything durable.
        let result = file.close().await;
        self.sync_crashes();
        if result.is_ok() {
            for block in &mut self.blocks {
                block.flush_done();
            }
        }
        self.event(format!("close -> {}", outcome(&result)));
        result.is_ok()
    }

    async fn namespace(&mut self) -> bool {
        let dir = self.dir();
        let name = format!("n{}", self.shared.roll(NAMES));
        let path = format!("{dir}/{name}");
        match self.shared.roll(3) {
            0 => {
                self.doing(format!("mkdir {path}"));
                self.in_flight = InFlight::Name(name.clone());
                let result = self.client.mkdir(&path, true).await;
                self.in_flight = InFlight::Nothing;
                let state = match &result {
                    Ok(_) => NameState::Present,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => NameState::Present,
                    Err(_) => NameState::Unknown,
                };
                self.names.set(&name, state);
                self.event(format!("mkdir {path} -> {}", outcome(&result)));
                state != NameState::Unknown
            }
            1 => {
                self.doing(format!("unlink {path}"));
                self.in_flight = InFlight::Name(name.clone());
                let result = self.client.unlink(&path).await;
                self.in_flight = InFlight::Nothing;
                let state = match &result {
                    Ok(()) => NameState::Absent,
                    // The directory itself may not exist yet.
                    Err(e) if e.kind() == ErrorKind::NotFound => NameState::Absent,
                    Err(_) => NameState::Unknown,
                };
                self.names.set(&name, state);
                self.event(format!("unlink {path} -> {}", outcome(&result)));
                state != NameState::Unknown
            }
            _ => {
                self.doing(format!("readdir {dir}"));
                match self.client.readdir(&dir).await {
                    Ok(entries) => {
                        let listed: BTreeSet<String> =
                            entries.into_iter().map(|e| e.name).collect();
                        self.event(format!("readdir {dir} -> {listed:?}"));
                        if let Err(e) = self.names.check_listing(&listed) {
                            self.shared
                                .violation(format!("client{} {dir}: {e}", self.id));
                        }
                        true
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        let listed = BTreeSet::new();
                        self.event(format!("readdir {dir} -> NotFound"));
                        if let Err(e) = self.names.check_listing(&listed) {
                            self.shared.violation(format!(
                                "client{} {dir} (the directory is missing): {e}",
                                self.id
                            ));
                        }
                        true
                    }
                    Err(e) => {
                        self.event(format!("readdir {dir} -> {:?}", e.kind()));
                        false
                    }
                }
            }
        }
    }

    /// Once faults stopped: opens the file again if needed, flushes, and
    /// reads every block back. Returns false if an operation failed (the
    /// cluster should serve everything once healed). The caller bounds it:
    /// `open` is retried until it succeeds (a lease left by a call whose
    /// answer was lost makes it answer `Busy` until that lease expires).
    pub async fn verify_all(&mut self) -> bool {
        while !self.ensure_open().await {}
        self.flush().await;
        let total = self.blocks.len() as u64;
        let file = self.file.as_ref().expect("open");
        self.doing("final read".into());
        match file.read_at_bytes(0, total * BLOCK_SIZE).await {
            Ok(bytes) => {
                let mut padded = bytes.to_vec();
                padded.resize((total * BLOCK_SIZE) as usize, 0);
                for block in 0..total {
                    let range = (block * BLOCK_SIZE) as usize..((block + 1) * BLOCK_SIZE) as usize;
                    let checked = decode_block(&padded[range], block)
                        .and_then(|v| self.blocks[block as usize].check_read(block, v));
                    if let Err(e) = checked {
                        self.shared.violation(format!(
                            "client{} {} final read: {e}",
                            self.id,
                            self.path()
                        ));
                    }
                }
                self.event(format!("final read of {total} blocks -> ok"));
                true
            }
            Err(e) => {
                self.shared.violation(format!(
                    "client{}: the final read of {} failed once the faults stopped: {e}",
                    self.id,
                    self.path()
                ));
                false
            }
        }
    }
}

fn outcome<T>(result: &pstorage_core::Result<T>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?} ({e})", e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn shared() -> Shared {
        Shared {
            trace: Arc::new(Trace::new(false)),
            rng: Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(1))),
            stop: AtomicBool::new(false),
            ops: AtomicU64::new(0),
            violations: Mutex::new(Vec::new()),
            crashes: AtomicU64::new(0),
            outages: Mutex::new(Vec::new()),
            big_writes: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_operations_near_an_outage_are_exempt_from_the_availability_checks() {
        let shared = shared();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!shared.in_outage(at(0), at(10)), "no outage yet");
        shared.outages.lock().push((at(100), None));
        assert!(!shared.in_outage(at(0), at(99)), "ended before the outage");
        assert!(
            shared.in_outage(at(90), at(110)),
            "overlaps a running outage"
        );
        shared.outages.lock()[0].1 = Some(at(200));
        assert!(
            shared.in_outage(at(250), at(260)),
            "within the grace after it"
        );
        assert!(
            !shared.in_outage(at(200) + OUTAGE_GRACE + Duration::from_secs(1), at(400)),
            "started after the grace: checked again"
        );
    }
}

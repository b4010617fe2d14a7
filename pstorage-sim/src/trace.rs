//! The event trace of a run: every fault, client operation and notable
//! network event, stamped with the simulated time. Its hash
//! (`trace_hash`) is the fingerprint two runs of a seed must share.

use parking_lot::Mutex;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Events of one run.
pub struct Trace {
    start: Instant,
    inner: Mutex<Inner>,
    /// Print events as they happen.
    verbose: bool,
}

struct Inner {
    hasher: Sha256,
    events: u64,
    /// The last events, for a failure report.
    recent: std::collections::VecDeque<String>,
}

/// Events kept for the report of a failing seed.
const RECENT: usize = 60;

impl Trace {
    pub fn new(verbose: bool) -> Trace {
        Trace {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                hasher: Sha256::new(),
                events: 0,
                recent: std::collections::VecDeque::new(),
            }),
            verbose,
        }
    }

    /// Simulated milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Records an event.
    pub fn event(&self, text: String) {
        let line = format!("{:>9.3}s {text}", self.now_ms() as f64 / 1000.0);
        if self.verbose {
            println!("{line}");
        }
        let mut inner = self.inner.lock();
        inner.hasher.update(line.as_bytes());
        inner.hasher.update(b"\n");
        inner.events += 1;
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(line);
    }

    /// The hash of every event so far, in hex.
    pub fn hash(&self) -> String {
        let inner = self.inner.lock();
        let digest = inner.hasher.clone().finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn events(&self) -> u64 {
        self.inner.lock().events
    }

    /// The last events recorded.
    pub fn recent(&self) -> Vec<String> {
        self.inner.lock().recent.iter().cloned().collect()
    }
}

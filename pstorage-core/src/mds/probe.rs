//! A failure report is evidence, not truth: before the MDS drops a replica
//! that a client could not reach (or that did not answer in time), it
//! probes that chunk server itself ([`ChunkControl::ping`] under
//! `mds.cs.probe_tout`). This module keeps, per chunk server:
//!
//! - the last probe's verdict, which answers further reports for
//!   `mds.cs.probe_cache` ms (a burst of reports about one server costs one
//!   probe);
//! - the probe in flight, shared by every report that waits for it (at most
//!   one probe per server at a time);
//! - a token bucket of drops: reports may drop at most
//!   `mds.report.drop_burst` replicas of one server at once, refilled at
//!   `mds.report.drop_rate` per minute.
//!
//! Verdict ages and the bucket use `tokio::time` (short-lived deadlines, so
//! a paused test clock drives them), not the wall clock.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::traits::ControlConnector;
use crate::types::CsId;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) reachable: bool,
    /// Why not, when unreachable.
    pub(super) detail: String,
}

#[derive(Default)]
struct Entry {
    /// The last verdict and until when it answers reports.
    cached: Option<(Instant, Verdict)>,
    /// The probe in flight, with its generation.
    in_flight: Option<(u64, Shared<BoxFuture<'static, Verdict>>)>,
    generation: u64,
    /// Drop tokens left and when they were last refilled (`None`: full).
    tokens: Option<(f64, Instant)>,
}

/// Probe verdicts, probes in flight and drop budgets, per chunk server.
#[derive(Default)]
pub(super) struct Probes {
    entries: Mutex<BTreeMap<CsId, Entry>>,
}

impl Probes {
    fn entries(&self) -> parking_lot::MutexGuard<'_, BTreeMap<CsId, Entry>> {
        // Every critical section is a few field updates: nothing to repair.
        self.entries.lock()
    }

    /// Whether chunk server `cs` at `addr` answers a ping within `timeout`:
    /// the cached verdict if younger than `cache`, else the probe in flight
    /// or a new one. Never holds a lock across the network call.
    pub(super) async fn probe(
        &self,
        cs: CsId,
        addr: &str,
        connector: Arc<dyn ControlConnector>,
        timeout: Duration,
        cache: Duration,
    ) -> Verdict {
        let (generation, probe) = {
            let mut entries = self.entries();
            let entry = entries.entry(cs).or_default();
            if let Some((until, verdict)) = &entry.cached {
                if Instant::now() < *until {
                    return verdict.clone();
                }
            }
            match &entry.in_flight {
                Some((generation, probe)) => (*generation, probe.clone()),
                None => {
                    entry.generation += 1;
                    let probe = ping(cs, addr.to_string(), connector, timeout)
                        .boxed()
                        .shared();
                    entry.in_flight = Some((entry.generation, probe.clone()));
                    (entry.generation, probe)
                }
            }
        };
        let verdict = probe.await;
        let mut entries = self.entries();
        let entry = entries.entry(cs).or_default();
        if entry
            .in_flight
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
        {
            entry.in_flight = None;
            entry.cached = Some((Instant::now() + cache, verdict.clone()));
            tracing::info!(
                %cs,
                addr,
                reachable = verdict.reachable,
                detail = %verdict.detail,
                "MDS probed a chunk server reported unreachable"
            );
        }
        verdict
    }

    /// Takes one drop from the budget of `cs` (`burst` at most, refilled at
    /// `rate_per_min`); `false` when it is spent.
    pub(super) fn take_drop(&self, cs: CsId, burst: u64, rate_per_min: u64) -> bool {
        let now = Instant::now();
        let burst = burst.max(1) as f64;
        let mut entries = self.entries();
        let entry = entries.entry(cs).or_default();
        let tokens = match entry.tokens {
            None => burst,
            Some((tokens, at)) => {
                let refill = now.duration_since(at).as_secs_f64() * rate_per_min as f64 / 60.0;
                (tokens + refill).min(burst)
            }
        };
        if tokens >= 1.0 {
            entry.tokens = Some((tokens - 1.0, now));
            true
        } else {
            entry.tokens = Some((tokens, now));
            false
        }
    }

    /// Forgets the verdict about `cs` (it registered again, or was dropped).
    pub(super) fn forget_verdict(&self, cs: CsId) {
        if let Some(entry) = self.entries().get_mut(&cs) {
            entry.cached = None;
        }
    }
}

async fn ping(
    cs: CsId,
    addr: String,
    connector: Arc<dyn ControlConnector>,
    timeout: Duration,
) -> Verdict {
    let call = async {
        let control = connector.chunk_control(&addr).await?;
        control.ping().await
    };
    let result = match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorKind::TimedOut,
            format!(
                "chunk server {cs} ({addr}) did not answer the MDS's probe within {} ms \
                 (mds.cs.probe_tout)",
                timeout.as_millis()
            ),
        )),
    };
    match result {
        Ok(()) => Verdict {
            reachable: true,
            detail: String::new(),
        },
        Err(e) => Verdict {
            reachable: false,
            detail: e.to_string(),
        },
    }
}

//! Cluster parameters: tunables the administrator changes at run time with
//! `pstorage set-config KEY=VALUE`, persisted in the MDS state (so every
//! MDS of a group agrees on them) and read with `get-config`.
//!
//! The state stores only the keys that were set; everything else takes its
//! default from [`ClusterParams`] in the MDS configuration (which the
//! daemon's environment may tune for tests). Keys use the original
//! pstorage's names where one exists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::ConfigEntry;

/// Effective values of every cluster parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterParams {
    /// `mds.wd.offline_tout`: a chunk server silent this long is offline and
    /// dropped from its chains (its chunks are re-replicated), in ms.
    pub offline_timeout_ms: u64,
    /// `mds.alloc.fill_margin`: no new replicas on a chunk server with less
    /// than this percentage of its disk free...
    pub fill_margin_percent: u64,
    /// `mds.alloc.fill_margin_max`: ...but the margin is never more than
    /// this many bytes (5% of a large disk shared with other data would
    /// otherwise refuse new replicas with tens of GiB free).
    pub fill_margin_max_bytes: u64,
    /// `mds.repl.bandwidth`: total re-replication rate, bytes/s (0 = unlimited);
    /// split evenly among the copies in flight.
    pub repl_bandwidth_bytes_per_s: u64,
    /// `mds.repl.concurrency`: chunk copies in flight at most.
    pub repl_concurrency: u64,
    /// `cs.scrub.period`: every replica is verified at least once per this
    /// many ms (0 disables scrubbing).
    pub scrub_period_ms: u64,
    /// `cs.scrub.rate`: scrubbing reads at most this many bytes/s per chunk
    /// server (0 = unlimited).
    pub scrub_rate_bytes_per_s: u64,
    /// `io.replica_tout`: a data-path request to one replica fails with
    /// `TimedOut` after this many ms; a chain write to n replicas waits n
    /// times it (clients get it at open, chunk servers in heartbeats).
    pub io_replica_timeout_ms: u64,
    /// `io.flush_tout`: a flush of one replica fails with `TimedOut` after
    /// this many ms.
    pub io_flush_timeout_ms: u64,
    /// `mds.cs.probe_tout`: deadline of the MDS's own calls to a chunk
    /// server: the reachability probe before a reported replica is dropped,
    /// version pushes, replica creation and deletion, in ms.
    pub cs_probe_timeout_ms: u64,
    /// `mds.cs.probe_cache`: a probe's verdict about a chunk server answers
    /// further reports about it for this many ms.
    pub cs_probe_cache_ms: u64,
    /// `mds.report.drop_burst`: replicas of one chunk server that failure
    /// reports may drop at once (a token bucket per chunk server).
    pub report_drop_burst: u64,
    /// `mds.report.drop_rate`: the bucket refills at this many drops per
    /// minute.
    pub report_drop_rate_per_min: u64,
    /// `mds.repl.progress_tout`: a chunk copy that moved no bytes for this
    /// long is cancelled and planned again (its partial copy is reused), in
    /// ms. A copy as a whole has no deadline.
    pub repl_progress_timeout_ms: u64,
    /// `mds.repl.per_cs`: chunk copies in flight at most per chunk server,
    /// as source or target.
    pub repl_per_cs: u64,
    /// `cs.fence_tout`: a chunk server without a successful heartbeat for
    /// this long stops serving (its self-fence), in ms (chunk servers get
    /// it in heartbeat replies).
    pub cs_fence_timeout_ms: u64,
    /// `cs.hb_tout`: deadline of one chunk-server heartbeat, in ms; a
    /// silent MDS costs at most this before the next member is tried
    /// (never more than half the fence).
    pub cs_heartbeat_timeout_ms: u64,
    /// `mds.balance.rate`: replica moves rebalancing starts per minute at
    /// most (0 turns rebalancing off, failure domain fixes included).
    pub balance_rate_per_min: u64,
    /// `mds.balance.band`: rebalancing stops once the fullness of the
    /// servers of a tier differs by at most this percentage of the tier's
    /// mean fullness (never tighter than one chunk).
    pub balance_band_percent: u64,
}

impl Default for ClusterParams {
    fn default() -> Self {
        ClusterParams {
            offline_timeout_ms: 300_000,
            fill_margin_percent: 5,
            fill_margin_max_bytes: 4 << 30,
            repl_bandwidth_bytes_per_s: 100 << 20,
            repl_concurrency: 4,
            scrub_period_ms: 7 * 24 * 3600 * 1000,
            scrub_rate_bytes_per_s: 32 << 20,
            io_replica_timeout_ms: crate::types::IoTimeouts::DEFAULT_REPLICA_MS,
            io_flush_timeout_ms: crate::types::IoTimeouts::DEFAULT_FLUSH_MS,
            cs_probe_timeout_ms: 2_000,
            cs_probe_cache_ms: 2_000,
            report_drop_burst: 64,
            report_drop_rate_per_min: 120,
            repl_progress_timeout_ms: 30_000,
            repl_per_cs: 2,
            cs_fence_timeout_ms: crate::chunk::session::DEFAULT_FENCE.as_millis() as u64,
            cs_heartbeat_timeout_ms: crate::chunk::session::DEFAULT_HEARTBEAT_TIMEOUT.as_millis()
                as u64,
            balance_rate_per_min: 60,
            balance_band_percent: 10,
        }
    }
}

/// What a key means and which values it accepts.
struct Spec {
    key: &'static str,
    unit: &'static str,
    min: u64,
    max: u64,
    description: &'static str,
    field: fn(&mut ClusterParams) -> &mut u64,
}

const SPECS: &[Spec] = &[
    Spec {
        key: "mds.wd.offline_tout",
        unit: "ms",
        min: 500,
        max: 30 * 24 * 3600 * 1000,
        description: "a chunk server silent this long is offline; its chunks are re-replicated",
        field: |p| &mut p.offline_timeout_ms,
    },
    Spec {
        key: "mds.alloc.fill_margin",
        unit: "%",
        min: 0,
        max: 99,
        description: "no new replicas on a chunk server with less free disk than this",
        field: |p| &mut p.fill_margin_percent,
    },
    Spec {
        key: "mds.alloc.fill_margin_max",
        unit: "bytes",
        min: 0,
        max: u64::MAX,
        description: "the fill margin is never more than this",
        field: |p| &mut p.fill_margin_max_bytes,
    },
    Spec {
        key: "mds.repl.bandwidth",
        unit: "bytes/s",
        min: 0,
        max: u64::MAX,
        description: "total re-replication bandwidth (0 = unlimited)",
        field: |p| &mut p.repl_bandwidth_bytes_per_s,
    },
    Spec {
        key: "mds.repl.concurrency",
        unit: "chunks",
        min: 1,
        max: 256,
        description: "chunk copies in flight during re-replication",
        field: |p| &mut p.repl_concurrency,
    },
    Spec {
        key: "cs.scrub.period",
        unit: "ms",
        min: 0,
        max: 365 * 24 * 3600 * 1000,
        description: "every replica is verified at least once per period (0 = never)",
        field: |p| &mut p.scrub_period_ms,
    },
    Spec {
        key: "cs.scrub.rate",
        unit: "bytes/s",
        min: 0,
        max: u64::MAX,
        description: "scrubbing read rate per chunk server (0 = unlimited)",
        field: |p| &mut p.scrub_rate_bytes_per_s,
    },
    Spec {
        key: "io.replica_tout",
        unit: "ms",
        min: 100,
        max: 600_000,
        description: "data-path deadline per replica; a chain write to n replicas waits n times it",
        field: |p| &mut p.io_replica_timeout_ms,
    },
    Spec {
        key: "io.flush_tout",
        unit: "ms",
        min: 100,
        max: 600_000,
        description: "deadline of a flush of one replica",
        field: |p| &mut p.io_flush_timeout_ms,
    },
    Spec {
        key: "mds.cs.probe_tout",
        unit: "ms",
        min: 100,
        max: 600_000,
        description:
            "deadline of the MDS's probes, version pushes, creations and deletions on chunk servers",
        field: |p| &mut p.cs_probe_timeout_ms,
    },
    Spec {
        key: "mds.cs.probe_cache",
        unit: "ms",
        min: 0,
        max: 600_000,
        description: "a probe's verdict on a chunk server answers reports about it for this long",
        field: |p| &mut p.cs_probe_cache_ms,
    },
    Spec {
        key: "mds.report.drop_burst",
        unit: "replicas",
        min: 1,
        max: 1_000_000,
        description: "replicas of one chunk server that failure reports may drop at once",
        field: |p| &mut p.report_drop_burst,
    },
    Spec {
        key: "mds.report.drop_rate",
        unit: "replicas/min",
        min: 1,
        max: 1_000_000,
        description: "refill rate of the per-chunk-server drop budget of failure reports",
        field: |p| &mut p.report_drop_rate_per_min,
    },
    Spec {
        key: "mds.repl.progress_tout",
        unit: "ms",
        min: 1_000,
        max: 24 * 3600 * 1000,
        description: "a chunk copy that moved no bytes this long is cancelled and retried",
        field: |p| &mut p.repl_progress_timeout_ms,
    },
    Spec {
        key: "mds.repl.per_cs",
        unit: "chunks",
        min: 1,
        max: 256,
        description: "chunk copies in flight per chunk server (as source or target)",
        field: |p| &mut p.repl_per_cs,
    },
    Spec {
        key: "mds.balance.rate",
        unit: "moves/min",
        min: 0,
        max: 100_000,
        description: "replica moves rebalancing starts per minute at most (0 = no rebalancing)",
        field: |p| &mut p.balance_rate_per_min,
    },
    Spec {
        key: "mds.balance.band",
        unit: "%",
        min: 1,
        max: 100,
        description: "rebalancing stops when the fullness of a tier's servers differs by at most this % of its mean (at least one chunk)",
        field: |p| &mut p.balance_band_percent,
    },
    Spec {
        key: "cs.fence_tout",
        unit: "ms",
        min: 2_000,
        max: 600_000,
        description: "a chunk server without a successful heartbeat this long stops serving",
        field: |p| &mut p.cs_fence_timeout_ms,
    },
    Spec {
        key: "cs.hb_tout",
        unit: "ms",
        min: 200,
        max: 300_000,
        description: "deadline of a chunk server's heartbeat (at most half of cs.fence_tout)",
        field: |p| &mut p.cs_heartbeat_timeout_ms,
    },
];

fn spec(key: &str) -> Result<&'static Spec> {
    SPECS.iter().find(|s| s.key == key).ok_or_else(|| {
        let known: Vec<&str> = SPECS.iter().map(|s| s.key).collect();
        Error::invalid(format!(
            "unknown cluster parameter {key:?}; known are {}",
            known.join(", ")
        ))
    })
}

impl ClusterParams {
    /// The data-path deadlines clients and chunk servers apply.
    pub fn io_timeouts(&self) -> crate::types::IoTimeouts {
        crate::types::IoTimeouts {
            replica_ms: self.io_replica_timeout_ms,
            flush_ms: self.io_flush_timeout_ms,
        }
    }

    /// Checks that `key` exists and `value` is within its range.
    pub fn validate(key: &str, value: u64) -> Result<()> {
        let s = spec(key)?;
        if value < s.min || value > s.max {
            return Err(Error::invalid(format!(
                "{key}={value} is out of range: {} accepts {}..={} {}",
                s.key, s.min, s.max, s.unit
            )));
        }
        Ok(())
    }

    /// Parses `KEY=VALUE` (VALUE a non-negative integer in the key's unit).
    pub fn parse_assignment(assignment: &str) -> Result<(String, u64)> {
        let (key, value) = assignment.split_once('=').ok_or_else(|| {
            Error::invalid(format!(
                "bad setting {assignment:?}: expected KEY=VALUE, e.g. mds.wd.offline_tout=60000"
            ))
        })?;
        let key = key.trim();
        let s = spec(key)?;
        let value: u64 = value.trim().parse().map_err(|_| {
            Error::invalid(format!(
                "bad value {value:?} for {key}: expected a whole number of {}",
                s.unit
            ))
        })?;
        Self::validate(key, value)?;
        Ok((key.to_string(), value))
    }

    /// These defaults with the stored `overrides` applied. Unknown keys
    /// (written by a newer release) are ignored.
    pub fn with_overrides(mut self, overrides: &BTreeMap<String, u64>) -> ClusterParams {
        for (key, value) in overrides {
            if let Ok(s) = spec(key) {
                *(s.field)(&mut self) = *value;
            }
        }
        self
    }

    /// Every parameter with its effective value (these defaults with
    /// `overrides`) and default, in a fixed order.
    pub fn entries(&self, overrides: &BTreeMap<String, u64>) -> Vec<ConfigEntry> {
        let effective = self.with_overrides(overrides);
        SPECS
            .iter()
            .map(|s| {
                let mut defaults = *self;
                let mut current = effective;
                ConfigEntry {
                    key: s.key.to_string(),
                    value: *(s.field)(&mut current),
                    default: *(s.field)(&mut defaults),
                    unit: s.unit.to_string(),
                    description: s.description.to_string(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_parse_and_validate() {
        assert_eq!(
            ClusterParams::parse_assignment("mds.wd.offline_tout=60000").unwrap(),
            ("mds.wd.offline_tout".to_string(), 60000)
        );
        for bad in [
            "mds.wd.offline_tout",
            "mds.wd.offline_tout=abc",
            "mds.wd.offline_tout=-1",
            "mds.wd.offline_tout=10",
            "mds.alloc.fill_margin=100",
            "mds.repl.concurrency=0",
            "mds.repl.per_cs=0",
            "mds.repl.progress_tout=10",
            "no.such.key=1",
        ] {
            let e = ClusterParams::parse_assignment(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad}: {e}");
        }
    }

    #[test]
    fn overrides_apply_and_entries_show_defaults() {
        let defaults = ClusterParams::default();
        let overrides = BTreeMap::from([
            ("mds.alloc.fill_margin".to_string(), 50),
            ("from.a.newer.release".to_string(), 1),
        ]);
        let p = defaults.with_overrides(&overrides);
        assert_eq!(p.fill_margin_percent, 50);
        assert_eq!(p.offline_timeout_ms, defaults.offline_timeout_ms);
        let entries = defaults.entries(&overrides);
        assert_eq!(entries.len(), SPECS.len());
        let margin = entries
            .iter()
            .find(|e| e.key == "mds.alloc.fill_margin")
            .unwrap();
        assert_eq!((margin.value, margin.default), (50, 5));
    }
}

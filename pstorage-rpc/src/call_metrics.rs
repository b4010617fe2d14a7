//! Per-call latencies and calls in flight, counted where the calls are
//! made and served in this process, for the metrics endpoint of whichever
//! daemon runs here ([`crate::metrics`]):
//! - `pstorage_client_mds_request_seconds{op}` and
//!   `pstorage_client_mds_requests_in_flight`: the SDK's calls to the MDS
//!   (`nbd-serve`, `pstorage-mount`, a chunk server's session);
//! - `pstorage_client_cs_request_seconds{op}` and
//!   `pstorage_client_cs_requests_in_flight`: the SDK's data-path requests
//!   to chunk servers (and a chunk server's forwards down its chain);
//! - `pstorage_mds_request_seconds{op}` and `pstorage_mds_requests_in_flight`:
//!   the calls an MDS serves, by method;
//! - `pstorage_cs_request_seconds{op}` and `pstorage_cs_requests_in_flight`:
//!   the data-path requests a chunk server serves (a chain write's time
//!   includes its forward).
//!
//! They are per process (an in-process `LocalCluster` adds its nodes up).
//! A call dropped before it finished (a deadline) is counted with the time
//! it ran.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use crate::metrics::{MetricsText, OpHistograms};

/// One kind of call: its latency histograms and how many run now.
pub struct CallMetrics {
    histograms: OpHistograms,
    in_flight: AtomicI64,
    in_flight_name: &'static str,
    in_flight_help: &'static str,
}

impl CallMetrics {
    /// Histograms `name` (ending in `_seconds`) labelled by `op`, and the
    /// gauge `in_flight_name`. Panics on a name Prometheus refuses (a
    /// constant of the caller).
    pub fn new(
        name: &'static str,
        help: &'static str,
        in_flight_name: &'static str,
        in_flight_help: &'static str,
    ) -> CallMetrics {
        CallMetrics {
            histograms: OpHistograms::new(name, help).expect("a valid metric name"),
            in_flight: AtomicI64::new(0),
            in_flight_name,
            in_flight_help,
        }
    }

    /// Starts timing one `op`: counted in flight until the guard drops,
    /// then observed.
    pub fn start(&'static self, op: &'static str) -> CallTimer {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        CallTimer {
            metrics: self,
            op,
            started: Instant::now(),
        }
    }

    /// Calls running now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Adds the histograms and the in-flight gauge to a scrape.
    pub fn render_into(&self, m: &mut MetricsText) {
        m.histograms(&self.histograms);
        m.gauge(self.in_flight_name, self.in_flight_help, self.in_flight());
    }
}

/// A call being timed (see [`CallMetrics::start`]).
pub struct CallTimer {
    metrics: &'static CallMetrics,
    op: &'static str,
    started: Instant,
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .histograms
            .observe(self.op, self.started.elapsed());
    }
}

/// The SDK's calls to the MDS.
pub static CLIENT_MDS: LazyLock<CallMetrics> = LazyLock::new(|| {
    CallMetrics::new(
        "pstorage_client_mds_request_seconds",
        "Calls of this process's SDK clients to the MDS, by method, and how long they took.",
        "pstorage_client_mds_requests_in_flight",
        "Calls of this process's SDK clients to the MDS waiting for their answer.",
    )
});

/// The SDK's data-path requests to chunk servers.
pub static CLIENT_CS: LazyLock<CallMetrics> = LazyLock::new(|| {
    CallMetrics::new(
        "pstorage_client_cs_request_seconds",
        "Data-path requests of this process to chunk servers, by kind, and how long they took.",
        "pstorage_client_cs_requests_in_flight",
        "Data-path requests of this process to chunk servers waiting for their answer.",
    )
});

/// The calls an MDS serves.
pub static SERVED_MDS: LazyLock<CallMetrics> = LazyLock::new(|| {
    CallMetrics::new(
        "pstorage_mds_request_seconds",
        "Calls this MDS served, by method, and how long they took.",
        "pstorage_mds_requests_in_flight",
        "Calls this MDS is serving.",
    )
});

/// The data-path requests a chunk server serves.
pub static SERVED_CS: LazyLock<CallMetrics> = LazyLock::new(|| {
    CallMetrics::new(
        "pstorage_cs_request_seconds",
        "Data-path requests this chunk server served, by kind, and how long they took.",
        "pstorage_cs_requests_in_flight",
        "Data-path requests this chunk server is serving.",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_counts_in_flight_until_dropped_then_observes() {
        static M: LazyLock<CallMetrics> = LazyLock::new(|| {
            CallMetrics::new(
                "pstorage_test_request_seconds",
                "test",
                "pstorage_test_requests_in_flight",
                "test",
            )
        });
        let a = M.start("read");
        let b = M.start("write");
        assert_eq!(M.in_flight(), 2);
        drop(a);
        assert_eq!(M.in_flight(), 1);
        drop(b);
        let mut m = MetricsText::new();
        M.render_into(&mut m);
        let text = m.render();
        assert!(
            text.contains("pstorage_test_request_seconds_count{op=\"read\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pstorage_test_request_seconds_count{op=\"write\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pstorage_test_requests_in_flight 0"),
            "{text}"
        );
    }
}

//! `--metrics ADDR:PORT`: a daemon's metrics in the Prometheus text
//! exposition format (version 0.0.4, which Prometheus scrapes and
//! `promtool check metrics` checks) on `GET /metrics`.
//!
//! A scrape renders the metrics anew from the daemon's own counters and
//! state ([`MetricsText`], the `prometheus` crate's registry and text
//! encoder): nothing is kept for the endpoint between scrapes but the
//! histograms a daemon updates on its request path ([`OpHistograms`]).
//! The HTTP server is hyper's HTTP/1 server; each connection is served on
//! its own task, at most [`MAX_CONNECTIONS`] at a time, and a connection
//! is closed after [`IDLE_TIMEOUT`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::core::{Atomic, AtomicF64, AtomicU64, Collector, GenericCounterVec};
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use pstorage_core::chunk::ChunkServer;
use pstorage_core::mds::raft::{MdsId, MdsRaft};
use pstorage_core::mds::MdsService;
use pstorage_core::traits::MetadataService;
use pstorage_core::types::{ClusterHealth, ClusterStatus, CsStatus};
use pstorage_core::{Error, ErrorKind, Result};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection is closed after this long, answered or not.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a scrape answers: the rendered text (a future: a daemon may ask
/// its own service for its state).
pub type Render = Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

/// The content type of [`MetricsText::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics of one scrape, named `pstorage_*` by the caller.
#[derive(Default)]
pub struct MetricsText {
    registry: Registry,
}

/// Labels of a labelled metric: (name, value) pairs, the same names in
/// every series of one metric.
pub type Labels = Vec<(String, String)>;

impl MetricsText {
    /// An empty set of metrics.
    pub fn new() -> MetricsText {
        MetricsText::default()
    }

    /// Registers `metric`; a name given twice (a bug of the caller) is
    /// logged and the second left out, so a scrape still answers.
    fn add(&mut self, name: &str, metric: Box<dyn Collector>) {
        if let Err(e) = self.registry.register(metric) {
            tracing::warn!("metric {name} left out of the scrape: {e}");
        }
    }

    /// A counter (a total that only grows); `name` ends in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        match IntCounter::new(name, help) {
            Ok(c) => {
                c.inc_by(value);
                self.add(name, Box::new(c));
            }
            Err(e) => tracing::warn!("metric {name} left out of the scrape: {e}"),
        }
    }

    /// Counters with one series per value of `label`; `name` ends in
    /// `_total`. Integer (`u64`) or fractional (`f64`, seconds) totals.
    pub fn counters_by<P: Atomic + 'static>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: &[(&str, P::T)],
    ) {
        match GenericCounterVec::<P>::new(Opts::new(name, help), &[label]) {
            Ok(family) => {
                for (value, n) in series {
                    match family.get_metric_with_label_values(&[value]) {
                        Ok(c) => c.inc_by(*n),
                        Err(e) => tracing::warn!("metric {name}: series {value} left out: {e}"),
                    }
                }
                self.add(name, Box::new(family));
            }
            Err(e) => tracing::warn!("metric {name} left out of the scrape: {e}"),
        }
    }

    /// A gauge (a value that goes up and down).
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        match IntGauge::new(name, help) {
            Ok(g) => {
                g.set(value);
                self.add(name, Box::new(g));
            }
            Err(e) => tracing::warn!("metric {name} left out of the scrape: {e}"),
        }
    }

    /// A gauge with one series per label set in `series`.
    pub fn gauges(&mut self, name: &str, help: &str, series: &[(Labels, i64)]) {
        let Some((first, _)) = series.first() else {
            return;
        };
        let names: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
        match IntGaugeVec::new(Opts::new(name, help), &names) {
            Ok(family) => {
                for (labels, value) in series {
                    let values: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
                    match family.get_metric_with_label_values(&values) {
                        Ok(g) => g.set(*value),
                        Err(e) => tracing::warn!("metric {name}: series {labels:?} left out: {e}"),
                    }
                }
                self.add(name, Box::new(family));
            }
            Err(e) => tracing::warn!("metric {name} left out of the scrape: {e}"),
        }
    }

    /// The latency histograms of `ops` (seconds), labelled by operation.
    pub fn histograms(&mut self, ops: &OpHistograms) {
        self.add("histograms", Box::new(ops.family.clone()));
    }

    /// The text of every metric added, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding the metrics failed: {e}");
        }
        out
    }
}

/// Latency histograms by operation (`op` label), updated on a daemon's
/// request path and rendered by each scrape. Cheap to clone (shared).
#[derive(Clone)]
pub struct OpHistograms {
    family: HistogramVec,
}

impl OpHistograms {
    /// Histograms named `name` (ending in `_seconds`): 10 us to ~10 s,
    /// doubling. `InvalidArgument` for a name Prometheus refuses.
    pub fn new(name: &str, help: &str) -> Result<OpHistograms> {
        let invalid =
            |e: prometheus::Error| Error::invalid(format!("histogram {name}: {e}")).caused_by(e);
        let buckets = exponential_buckets(0.000_01, 2.0, 21).map_err(invalid)?;
        let family = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["op"])
            .map_err(invalid)?;
        Ok(OpHistograms { family })
    }

    /// Records one `op` that took `took`.
    pub fn observe(&self, op: &str, took: Duration) {
        if let Ok(h) = self.family.get_metric_with_label_values(&[op]) {
            h.observe(took.as_secs_f64());
        }
    }
}

/// Binds the metrics endpoint at `addr` (`HOST:PORT`); `InvalidArgument`
/// naming the address when that fails (in use, not local, malformed).
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        Error::invalid(format!(
            "cannot serve metrics at {addr}: {e}; give --metrics a free local HOST:PORT"
        ))
        .caused_by(e)
    })
}

/// Serves `GET /metrics` on `listener` with what `render` answers, until
/// `shutdown` resolves. Other paths answer 404, other methods 405.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            permit = slots.clone().acquire_owned() => permit.map_err(|e| {
                Error::new(ErrorKind::Internal, format!("metrics connection slots closed: {e}"))
            })?,
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let render = render.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &render).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(IDLE_TIMEOUT, conn).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(e)) => tracing::debug!("metrics endpoint: connection ended: {e}"),
            }
        });
    }
}

/// The answer to one request.
async fn answer(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE, render().await),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET /metrics is served\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "pstorage serves its metrics at /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The metrics of chunk server `server`: data-path and re-replication
/// counters since it started, space, replicas held and its journal.
pub fn chunk_server(server: Arc<ChunkServer>) -> Render {
    Arc::new(move || {
        let server = server.clone();
        async move {
            let io = server.stats();
            let store = server.store().clone();
            // The store answers from memory, except a first open of the
            // directory listing: off the runtime's threads.
            let (space, replicas, journal) = tokio::task::spawn_blocking(move || {
                (
                    store.space().unwrap_or_default(),
                    store.list().map(|l| l.len() as u64).unwrap_or(0),
                    store.journal_stats().unwrap_or_default(),
                )
            })
            .await
            .unwrap_or_default();
            let mut m = MetricsText::new();
            m.gauge(
                "pstorage_cs_id",
                "This chunk server's id.",
                i64::from(server.id().0),
            );
            m.counter("pstorage_cs_read_ops_total", "Reads served.", io.read_ops);
            m.counter(
                "pstorage_cs_ring_reads_total",
                "Reads whose blocks not in the page cache were read through io_uring.",
                server.ring_reads(),
            );
            m.counter(
                "pstorage_cs_read_bytes_total",
                "Bytes read by clients and peers.",
                io.read_bytes,
            );
            m.counter(
                "pstorage_cs_write_ops_total",
                "Writes applied (chain writes included).",
                io.write_ops,
            );
            m.counter(
                "pstorage_cs_write_bytes_total",
                "Bytes written.",
                io.write_bytes,
            );
            m.counter(
                "pstorage_cs_flush_ops_total",
                "Flushes made durable.",
                io.flush_ops,
            );
            m.counter(
                "pstorage_cs_replicated_chunks_total",
                "Replicas copied here by re-replication or resync.",
                io.replicated_chunks,
            );
            m.counter(
                "pstorage_cs_replicated_bytes_total",
                "Bytes read from copy sources (the blocks that differed).",
                io.replicated_bytes,
            );
            m.gauge(
                "pstorage_cs_space_total_bytes",
                "Size of the data disk.",
                gauge_of(space.total_bytes),
            );
            m.gauge(
                "pstorage_cs_space_free_bytes",
                "Free space of the data disk.",
                gauge_of(space.free_bytes),
            );
            m.gauge("pstorage_cs_replicas", "Replicas held.", gauge_of(replicas));
            m.gauge(
                "pstorage_cs_journal_size_bytes",
                "Write journal ring size (0: none).",
                gauge_of(journal.size),
            );
            m.gauge(
                "pstorage_cs_journal_used_bytes",
                "Write journal bytes not yet applied and trimmed.",
                gauge_of(journal.used),
            );
            m.gauge(
                "pstorage_cs_serving",
                "1 while the chunk server serves (registered, not fenced).",
                i64::from(server.is_serving()),
            );
            crate::call_metrics::SERVED_CS.render_into(&mut m);
            // Its forwards down chains, and its session with the MDS.
            crate::call_metrics::CLIENT_CS.render_into(&mut m);
            crate::call_metrics::CLIENT_MDS.render_into(&mut m);
            m.render()
        }
        .boxed()
    })
}

/// The metrics of MDS `id`: its Raft state, and on the leader the
/// cluster's (chunk servers by status, chunks by health, re-replication
/// and rebalancing progress, space) as `pstorage stat` shows it.
pub fn mds(id: MdsId, service: Arc<MdsService>, raft: MdsRaft) -> Render {
    Arc::new(move || {
        let (service, raft) = (service.clone(), raft.clone());
        async move {
            let mut m = MetricsText::new();
            let (term, last_log, applied, leader, snapshot, matched) = {
                let r = raft.metrics();
                let r = r.borrow();
                let matched: Vec<(Labels, i64)> = r
                    .replication
                    .iter()
                    .flatten()
                    .map(|(follower, log)| {
                        (
                            label("mds", &follower.0.to_string()),
                            gauge_of(log.map_or(0, |l| l.index)),
                        )
                    })
                    .collect();
                (
                    r.current_term,
                    r.last_log_index.unwrap_or(0),
                    r.last_applied.map_or(0, |l| l.index),
                    r.current_leader,
                    r.snapshot.map_or(0, |l| l.index),
                    matched,
                )
            };
            m.gauge("pstorage_mds_id", "This MDS's id.", gauge_of(id.0));
            m.gauge(
                "pstorage_mds_raft_term",
                "Current Raft term.",
                gauge_of(term),
            );
            m.gauge(
                "pstorage_mds_raft_last_log_index",
                "Index of the last log entry.",
                gauge_of(last_log),
            );
            m.gauge(
                "pstorage_mds_raft_applied_index",
                "Index of the last applied entry.",
                gauge_of(applied),
            );
            m.gauge(
                "pstorage_mds_raft_snapshot_index",
                "Index of the last entry in this MDS's snapshot.",
                gauge_of(snapshot),
            );
            // On the leader: how far each member's log matches its own
            // (last_log_index minus this is a member's lag).
            m.gauges(
                "pstorage_mds_raft_matched_index",
                "On the leader: the last log index each member is known to hold.",
                &matched,
            );
            m.gauge(
                "pstorage_mds_is_leader",
                "1 on the metadata group's leader.",
                i64::from(leader == Some(id)),
            );
            crate::call_metrics::SERVED_MDS.render_into(&mut m);
            let c = service.commit_stats();
            m.counter(
                "pstorage_mds_commit_entries_total",
                "Raft entries this MDS's group commit wrote (as leader).",
                c.entries,
            );
            m.counter(
                "pstorage_mds_commit_commands_total",
                "Commands those entries carried (commands / entries: the batching).",
                c.commands,
            );
            m.gauge(
                "pstorage_mds_commit_waiting",
                "Commands waiting for the next Raft entry.",
                gauge_of(c.waiting),
            );
            m.counter(
                "pstorage_mds_read_barrier_rounds_total",
                "Read barrier rounds run (each serves every read that waited for it).",
                c.barrier_rounds,
            );
            m.gauge(
                "pstorage_mds_read_barrier_waiting",
                "Reads waiting for the next read barrier round.",
                gauge_of(c.barrier_waiting),
            );
            m.counter(
                "pstorage_mds_read_barrier_skipped_total",
                "Reads served without a read barrier round (the only voter of its group, leading it).",
                c.barrier_skipped,
            );
            let d = service.duty_stats();
            m.counters_by::<AtomicF64>(
                "pstorage_mds_duty_seconds_total",
                "Time this MDS's periodic duties ran (wall clock): the tick, as leader, and the re-replication planning rounds.",
                "duty",
                &[("tick", d.tick_seconds.max(0.0)), ("plan", d.plan_seconds.max(0.0))],
            );
            m.counters_by::<AtomicU64>(
                "pstorage_mds_duty_runs_total",
                "Runs of those duties.",
                "duty",
                &[("tick", d.ticks), ("plan", d.plans)],
            );
            if leader == Some(id) {
                if let Ok(status) = service.cluster_status().await {
                    cluster(&mut m, &status);
                }
            }
            m.render()
        }
        .boxed()
    })
}

/// The cluster-wide metrics the leader exports.
fn cluster(m: &mut MetricsText, s: &ClusterStatus) {
    let health = [
        (ClusterHealth::Healthy, "healthy"),
        (ClusterHealth::Degraded, "degraded"),
        (ClusterHealth::Failure, "failure"),
        (ClusterHealth::Unknown, "unknown"),
    ];
    let series: Vec<(Labels, i64)> = health
        .iter()
        .map(|(h, name)| (label("health", name), i64::from(s.health == *h)))
        .collect();
    m.gauges(
        "pstorage_cluster_health",
        "1 for the cluster's health.",
        &series,
    );
    let statuses = [
        (CsStatus::Active, "active"),
        (CsStatus::Inactive, "inactive"),
        (CsStatus::Offline, "offline"),
        (CsStatus::Dropped, "dropped"),
    ];
    let series: Vec<(Labels, i64)> = statuses
        .iter()
        .map(|(st, name)| {
            let n = s.cs.iter().filter(|c| c.status == *st).count() as u64;
            (label("status", name), gauge_of(n))
        })
        .collect();
    m.gauges(
        "pstorage_cluster_chunk_servers",
        "Chunk servers by status.",
        &series,
    );
    let c = &s.chunk_counts;
    let series = [
        (label("health", "healthy"), gauge_of(c.healthy)),
        (label("health", "degraded"), gauge_of(c.degraded)),
        (label("health", "urgent"), gauge_of(c.urgent)),
        (label("health", "blocked"), gauge_of(c.blocked)),
        (label("health", "replicating"), gauge_of(c.replicating)),
    ];
    m.gauges(
        "pstorage_cluster_chunks",
        "Chunks by replica health.",
        &series,
    );
    m.gauge("pstorage_cluster_files", "Files.", gauge_of(s.files));
    m.gauge("pstorage_cluster_dirs", "Directories.", gauge_of(s.dirs));
    m.gauge(
        "pstorage_cluster_logical_bytes",
        "Bytes of the files' sizes.",
        gauge_of(s.logical_bytes),
    );
    let total: u64 = s.cs.iter().map(|c| c.space.total_bytes).sum();
    let free: u64 = s.cs.iter().map(|c| c.space.free_bytes).sum();
    m.gauge(
        "pstorage_cluster_space_total_bytes",
        "Space of the chunk servers' disks.",
        gauge_of(total),
    );
    m.gauge(
        "pstorage_cluster_space_free_bytes",
        "Free space of the chunk servers' disks.",
        gauge_of(free),
    );
    let r = &s.replication;
    m.gauge(
        "pstorage_replication_pending_chunks",
        "Chunks waiting for a copy.",
        gauge_of(r.pending_chunks),
    );
    m.gauge(
        "pstorage_replication_in_flight",
        "Copies running.",
        gauge_of(r.in_flight),
    );
    m.counter(
        "pstorage_replication_done_chunks_total",
        "Chunks copied since this MDS leads.",
        r.done_chunks,
    );
    m.counter(
        "pstorage_replication_done_bytes_total",
        "Bytes copied since this MDS leads.",
        r.done_bytes,
    );
    m.counter(
        "pstorage_replication_failed_chunks_total",
        "Copies failed since this MDS leads.",
        r.failed_chunks,
    );
    let b = &s.rebalance;
    m.gauge(
        "pstorage_rebalance_in_flight",
        "Rebalancing moves running.",
        gauge_of(b.in_flight),
    );
    m.gauge(
        "pstorage_rebalance_pending",
        "Rebalancing moves waiting.",
        gauge_of(b.pending),
    );
    m.counter(
        "pstorage_rebalance_done_total",
        "Rebalancing moves done.",
        b.done,
    );
    m.gauge(
        "pstorage_rebalance_spread_permille",
        "Spread of disk use between the fullest and emptiest chunk server, per mille.",
        gauge_of(b.spread_permille),
    );
}

/// A gauge's value from an unsigned count (saturating).
fn gauge_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One label.
fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_scrape_gets_the_rendered_text_and_other_paths_get_404() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ops = OpHistograms::new("pstorage_op_seconds", "Latency.").unwrap();
        ops.observe("write", Duration::from_micros(120));
        let render: Render = Arc::new(move || {
            let ops = ops.clone();
            async move {
                let mut m = MetricsText::new();
                m.counter("pstorage_cs_write_ops_total", "Writes applied.", 7);
                m.gauge("pstorage_cs_free_bytes", "Free space.", 42);
                m.gauges(
                    "pstorage_mds_chunk_servers",
                    "Chunk servers by status.",
                    &[(vec![("status".into(), "active".into())], 3)],
                );
                m.histograms(&ops);
                m.render()
            }
            .boxed()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, render, async {
            let _ = stopped.await;
        }));
        let text = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("text/plain; version=0.0.4"), "{text}");
        assert!(text.contains("pstorage_cs_write_ops_total 7"), "{text}");
        assert!(text.contains("pstorage_cs_free_bytes 42"), "{text}");
        assert!(
            text.contains("pstorage_mds_chunk_servers{status=\"active\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("pstorage_op_seconds_count{op=\"write\"} 1"),
            "{text}"
        );
        let missing = get(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let posted = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(posted.starts_with("HTTP/1.1 405"), "{posted}");
        // Garbage gets an error answer (or a closed connection), and the
        // endpoint keeps serving.
        let _ = get(addr, "\x16\x03\x01garbage\r\n\r\n").await;
        let again = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let taken = bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind(&addr).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains(&addr), "{e}");
    }
}

//! Prometheus metrics for what an operator graphs: leadership, Raft progress, lease counts and
//! capacity, write rate, errors and latency, and how well writes batch.
//!
//! Counters are plain atomics; gauges are read from Raft metrics and the state machine when
//! scraped. The text format is written by hand: it is a few lines.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::node::Member;

/// Upper bounds (seconds) of the write latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
pub struct Metrics {
    pub writes: AtomicU64,
    pub write_errors_not_leader: AtomicU64,
    pub write_errors_no_quorum: AtomicU64,
    pub write_errors_fatal: AtomicU64,
    pub batches: AtomicU64,
    pub batched_writes: AtomicU64,
    pub watchers: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn observe_write(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// One metric in the Prometheus text format.
pub fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The exposition text for one member.
pub fn render(m: &Member) -> String {
    let x = m.raft.metrics().borrow().clone();
    let (revision, leases, reservations, capacity) = {
        let d = m.sm.read();
        (
            d.alloc.revision(),
            d.alloc.lease_count(),
            d.alloc.reservations().count(),
            d.alloc.config().map(|c| c.v4_capacity()).unwrap_or(0),
        )
    };
    let k = &m.metrics;
    let mut o = String::new();
    let leader = u8::from(x.state == ServerState::Leader);
    metric(
        &mut o,
        "twill_controller_is_leader",
        "gauge",
        "1 if this member is the Raft leader.",
        leader,
    );
    metric(
        &mut o,
        "twill_controller_has_leader",
        "gauge",
        "1 if this member knows a leader.",
        u8::from(x.current_leader.is_some()),
    );
    metric(
        &mut o,
        "twill_controller_term",
        "gauge",
        "Current Raft term.",
        x.current_term,
    );
    metric(
        &mut o,
        "twill_controller_last_log_index",
        "gauge",
        "Index of the last Raft log entry.",
        x.last_log_index.unwrap_or(0),
    );
    metric(
        &mut o,
        "twill_controller_applied_index",
        "gauge",
        "Index of the last applied Raft log entry.",
        x.last_applied.map(|l| l.index).unwrap_or(0),
    );
    metric(
        &mut o,
        "twill_controller_snapshot_index",
        "gauge",
        "Index covered by the latest snapshot.",
        x.snapshot.map(|l| l.index).unwrap_or(0),
    );
    metric(
        &mut o,
        "twill_controller_voters",
        "gauge",
        "Voting members in the cluster configuration.",
        x.membership_config.membership().voter_ids().count(),
    );
    metric(
        &mut o,
        "twill_controller_revision",
        "gauge",
        "Allocator revision (bumped by every lease or config change).",
        revision,
    );
    metric(
        &mut o,
        "twill_controller_leases",
        "gauge",
        "Live subnet leases.",
        leases,
    );
    metric(
        &mut o,
        "twill_controller_reservations",
        "gauge",
        "Subnet reservations.",
        reservations,
    );
    metric(
        &mut o,
        "twill_controller_subnets",
        "gauge",
        "IPv4 subnets the configuration can hand out.",
        capacity,
    );
    metric(
        &mut o,
        "twill_controller_watchers",
        "gauge",
        "Open Watch streams on this member.",
        k.watchers.load(Ordering::Relaxed),
    );
    metric(
        &mut o,
        "twill_controller_writes_total",
        "counter",
        "Writes proposed on this member.",
        k.writes.load(Ordering::Relaxed),
    );
    let _ = writeln!(o, "# HELP twill_controller_write_errors_total Writes this member could not commit, by reason.\n# TYPE twill_controller_write_errors_total counter");
    for (reason, c) in [
        ("not_leader", &k.write_errors_not_leader),
        ("no_quorum", &k.write_errors_no_quorum),
        ("fatal", &k.write_errors_fatal),
    ] {
        let _ = writeln!(
            o,
            "twill_controller_write_errors_total{{reason=\"{reason}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    metric(
        &mut o,
        "twill_controller_batches_total",
        "counter",
        "Raft entries carrying client writes.",
        k.batches.load(Ordering::Relaxed),
    );
    metric(
        &mut o,
        "twill_controller_batched_writes_total",
        "counter",
        "Client writes carried in those entries.",
        k.batched_writes.load(Ordering::Relaxed),
    );
    let _ = writeln!(o, "# HELP twill_controller_write_seconds Time from proposal to applied answer.\n# TYPE twill_controller_write_seconds histogram");
    for (i, b) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            o,
            "twill_controller_write_seconds_bucket{{le=\"{b}\"}} {}",
            k.latency_buckets[i].load(Ordering::Relaxed)
        );
    }
    let count = k.latency_count.load(Ordering::Relaxed);
    let _ = writeln!(
        o,
        "twill_controller_write_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        o,
        "twill_controller_write_seconds_sum {}",
        k.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(o, "twill_controller_write_seconds_count {count}");
    o
}

/// Serves `GET /metrics` (and `/healthz`) over plain HTTP/1.1 until the member stops.
pub async fn serve(listener: TcpListener, m: Arc<Member>) {
    let mut stopping = m.stopping();
    let stop = async move {
        let _ = stopping.changed().await;
    };
    serve_http(listener, stop, move |path| match path {
        "/metrics" => ("200 OK", render(&m)),
        "/healthz" => ("200 OK", "ok\n".to_string()),
        _ => ("404 Not Found", "try /metrics or /healthz\n".to_string()),
    })
    .await
}

/// A minimal HTTP/1.1 server for health and metrics endpoints: `route` maps a request path to
/// a status line and a text body. Runs until `stop` resolves.
pub async fn serve_http<R>(
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
    route: R,
) where
    R: Fn(&str) -> (&'static str, String) + Send + Sync + 'static,
{
    let route = Arc::new(route);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => return,
        };
        let Ok((mut sock, _)) = accepted else {
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            // Read the whole request head; it may arrive in several pieces. A GET has no body.
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while n < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => {
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = route(head.split_whitespace().nth(1).unwrap_or(""));
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

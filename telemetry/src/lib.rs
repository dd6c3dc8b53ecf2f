//! The small HTTP server that the controller and the agent both run for operators and
//! orchestrators: `/healthz` (the process answers), `/readyz` (derived at every request from
//! what the process knows) and `/metrics` (Prometheus, through the Prometheus project's own
//! `prometheus-client`).
//!
//! The HTTP side is hyper's, with its limits: a connection must send its request head within
//! [`HEADER_TIMEOUT`], lives at most [`CONNECTION_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are
//! served at once (more wait in the kernel's backlog), so a scraper that hangs or a port scan
//! cannot pile up tasks.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use axum;
pub use prometheus_client;

/// Time a client has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection, keep-alive included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// The content type of the OpenMetrics text that `prometheus-client` writes (Prometheus asks for
/// it and parses it; so do the classic text-format parsers).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the process should receive work, and if not, why (each reason one short sentence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(Vec<String>),
}

type ReadyFn = dyn Fn() -> Readiness + Send + Sync;
type RefreshFn = dyn Fn() + Send + Sync;

/// What the endpoints report: a registry of metrics, an optional hook that brings gauges up to
/// date just before a scrape (values read from elsewhere, such as Raft's own metrics), and the
/// readiness check.
#[derive(Clone)]
pub struct Endpoints {
    registry: Arc<Registry>,
    refresh: Option<Arc<RefreshFn>>,
    ready: Arc<ReadyFn>,
}

impl Endpoints {
    /// Endpoints for `registry`; ready until [`Endpoints::with_readiness`] says otherwise.
    pub fn new(registry: Registry) -> Self {
        Endpoints {
            registry: Arc::new(registry),
            refresh: None,
            ready: Arc::new(|| Readiness::Ready),
        }
    }

    pub fn with_readiness(mut self, f: impl Fn() -> Readiness + Send + Sync + 'static) -> Self {
        self.ready = Arc::new(f);
        self
    }

    pub fn with_refresh(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.refresh = Some(Arc::new(f));
        self
    }

    /// The exposition text, as `/metrics` serves it.
    pub fn render(&self) -> String {
        if let Some(r) = &self.refresh {
            r();
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Only a metric's own Display can fail here; say so rather than serve half a page.
            tracing::error!(error = %e, "cannot encode metrics");
            return String::new();
        }
        out
    }

    fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .fallback(|| async { (StatusCode::NOT_FOUND, "try /healthz, /readyz or /metrics\n") })
            .with_state(self)
    }
}

async fn readyz(State(e): State<Endpoints>) -> Response {
    match (e.ready)() {
        Readiness::Ready => (StatusCode::OK, "ready\n").into_response(),
        Readiness::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        )
            .into_response(),
    }
}

async fn metrics(State(e): State<Endpoints>) -> Response {
    // Encoding walks every metric; keep it off the runtime's worker threads' hot path.
    match tokio::task::spawn_blocking(move || e.render()).await {
        Ok(body) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr`; separate from [`serve`] so a taken port is an error at start, not a log line.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves the endpoints on `listener` until `stop` resolves.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, stop: impl Future<Output = ()>) {
    serve_router(listener, endpoints.router(), stop).await
}

/// Serves any router (the controller's status page) with the same limits as the endpoints.
pub async fn serve_router(listener: TcpListener, router: Router, stop: impl Future<Output = ()>) {
    let service = TowerToHyperService::new(router);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = &mut stop => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "health/metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "health/metrics connection"),
                Err(_) => tracing::debug!(%peer, "health/metrics connection held too long; closed"),
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (code, body)
    }

    #[tokio::test]
    async fn endpoints_answer_and_readiness_follows_the_check() {
        let mut reg = Registry::default();
        let c = Counter::<u64>::default();
        reg.register("demo_requests", "Requests seen", c.clone());
        let g = Gauge::<i64>::default();
        reg.register("demo_level", "A level read at scrape time", g.clone());
        let by: Family<Vec<(String, String)>, Counter> = Family::default();
        reg.register("demo_errors", "Errors by reason", by.clone());
        c.inc_by(3);
        by.get_or_create(&vec![("reason".into(), "no_quorum".into())])
            .inc();
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let e = Endpoints::new(reg)
            .with_refresh(move || {
                g.set(42);
            })
            .with_readiness(move || {
                if r.load(Ordering::Relaxed) {
                    Readiness::Ready
                } else {
                    Readiness::NotReady(vec!["no lease".into()])
                }
            });
        let l = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(l, e, async {
            let _ = stop_rx.await;
        }));

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "not ready: no lease\n".into())
        );
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        ready.store(false, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.0, 503, "readiness goes back");
        assert_eq!(get(addr, "/nope").await.0, 404);

        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        let value = |name: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name)
                .map(|s| s.value.clone())
        };
        // A classic text-format parser takes an OpenMetrics counter's `_total` sample as untyped.
        assert!(matches!(
            value("demo_requests_total"),
            Some(prometheus_parse::Value::Counter(3.0) | prometheus_parse::Value::Untyped(3.0))
        ));
        assert!(matches!(
            value("demo_level"),
            Some(prometheus_parse::Value::Gauge(42.0))
        ));
        assert!(body.contains("# TYPE demo_requests counter\n"));
        let err = scrape
            .samples
            .iter()
            .find(|s| s.metric == "demo_errors_total")
            .expect("labelled counter");
        assert_eq!(err.labels.get("reason"), Some("no_quorum"));

        let _ = stop_tx.send(());
        server.await.expect("server stops");
    }

    #[tokio::test]
    async fn a_client_that_never_sends_its_request_is_dropped() {
        let l = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(serve(
            l,
            Endpoints::new(Registry::default()),
            std::future::pending(),
        ));
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 64];
        // hyper closes it after the header timeout (with or without a 408 first).
        let r = tokio::time::timeout(HEADER_TIMEOUT * 3, async {
            loop {
                match silent.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "an idle connection was kept past the header timeout"
        );
        // Others are still served.
        assert_eq!(get(addr, "/healthz").await.0, 200);
    }
}

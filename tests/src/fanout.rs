//! Watch fan-out: how long after a write is acknowledged the last of many watchers has it.
//! Each watcher is one stream of its own, on a connection of its own (as each agent has) or
//! sharing a given number of them, spread over every member;
//! one client writes one at a time; each watcher notes when each revision reaches it. For a
//! write, the figure is the last watcher's receipt less the writer's acknowledgement (negative
//! when every watcher had it before the writer's answer arrived).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use twill_client::{Client, ClientOptions};
use twill_proto::v1 as pb;

use crate::etcd::pb as etcd;

/// How long the watchers may take to have every write after the last acknowledgement.
const DRAIN: Duration = Duration::from_secs(30);

/// What one run measured.
pub struct Fanout {
    /// Per write, last watcher's receipt less the acknowledgement, in milliseconds.
    pub lag_ms: Vec<f64>,
    /// Writes some watcher never received within [`DRAIN`] (should be none).
    pub missed: usize,
    pub watchers: usize,
    /// Per member (in the order of the URLs given), the median and the 99th percentile over
    /// writes of the lag to the last of that member's watchers: shows whether one member, the
    /// leader or a follower, sets the figure and its tail.
    pub member_ms: Vec<(f64, f64)>,
    /// The writer's pace, from the first acknowledgement to the last: the watchers' work for
    /// one write overlaps the next ones.
    pub writes_per_s: f64,
}

impl Fanout {
    /// The `q` quantile of the lag, in milliseconds.
    pub fn quantile(&self, q: f64) -> f64 {
        quantile(&self.lag_ms, q)
    }
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[(((v.len() - 1) as f64) * q).round() as usize]
}

/// Per watcher, the moment each revision arrived, in the order they did.
type Receipts = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Waits for every watcher to have the last acknowledged revision (or [`DRAIN`]), stops them,
/// and folds the receipts against the acknowledgements.
/// `receipts` are per watcher, with the index of the member serving it.
async fn fold(
    mut tasks: JoinSet<Result<()>>,
    receipts: Vec<(usize, Receipts)>,
    acks: Vec<(u64, Instant)>,
) -> Result<Fanout> {
    let last = acks.last().map(|a| a.0).unwrap_or(0);
    let writes_per_s = match (acks.first(), acks.last()) {
        (Some(a), Some(b)) if b.1 > a.1 => (acks.len() - 1) as f64 / (b.1 - a.1).as_secs_f64(),
        _ => f64::NAN,
    };
    let has_last = |r: &Receipts| lock(r).last().is_some_and(|(rev, _)| *rev >= last);
    let deadline = Instant::now() + DRAIN;
    while !receipts.iter().all(|(_, r)| has_last(r)) && Instant::now() < deadline {
        // A watcher that failed says why.
        if let Some(r) = tasks.try_join_next() {
            r.context("watcher task")??;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tasks.abort_all();
    let watchers = receipts.len();
    let members = receipts.iter().map(|(m, _)| m + 1).max().unwrap_or(0);
    // Per revision: the last receipt overall, how many watchers had it, and per member the last
    // receipt among its watchers.
    let mut latest: HashMap<u64, (Instant, usize, Vec<Option<Instant>>)> = HashMap::new();
    for (member, r) in &receipts {
        for (rev, at) in lock(r).iter() {
            let e = latest
                .entry(*rev)
                .or_insert_with(|| (*at, 0, vec![None; members]));
            e.0 = e.0.max(*at);
            e.1 += 1;
            e.2[*member] = Some(e.2[*member].map_or(*at, |m| m.max(*at)));
        }
    }
    let lag = |at: Instant, ack: Instant| {
        if at >= ack {
            (at - ack).as_secs_f64() * 1e3
        } else {
            -((ack - at).as_secs_f64() * 1e3)
        }
    };
    let mut lag_ms = Vec::new();
    let mut per_member: Vec<Vec<f64>> = vec![Vec::new(); members];
    let mut missed = 0;
    for (rev, ack) in acks {
        match latest.get(&rev) {
            Some((at, n, by_member)) if *n == watchers => {
                lag_ms.push(lag(*at, ack));
                for (m, at) in by_member.iter().enumerate() {
                    if let Some(at) = at {
                        per_member[m].push(lag(*at, ack));
                    }
                }
            }
            _ => missed += 1,
        }
    }
    let p50_p99 = |v: Vec<f64>| (quantile(&v, 0.5), quantile(&v, 0.99));
    Ok(Fanout {
        lag_ms,
        missed,
        watchers,
        member_ms: per_member.into_iter().map(p50_p99).collect(),
        writes_per_s,
    })
}

/// Waits up to a minute for `watchers` watches to have started (`ready` counts them).
async fn started(ready: &AtomicUsize, watchers: usize, who: &str) -> Result<()> {
    let start = Instant::now();
    while ready.load(Ordering::SeqCst) < watchers {
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {} of {watchers} {who} watches started",
                ready.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// twill: `watchers` Watch streams from revision 0 over `connections` clients (one per watcher
/// is what real agents do), each client pinned to one member in turn; one client acquires
/// `writes` leases one after the other.
pub async fn twill(
    urls: &[String],
    tls: tonic::transport::ClientTlsConfig,
    watchers: usize,
    writes: usize,
    connections: usize,
) -> Result<Fanout> {
    let opts = ClientOptions {
        retry_for: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(5),
        tls: Some(tls),
        ..Default::default()
    };
    let connections = connections.clamp(1, watchers.max(1));
    let clients = (0..connections)
        .map(|i| Client::with_options(&[urls[i % urls.len()].clone()], opts.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut receipts = Vec::new();
    for w in 0..watchers {
        let mut watch = clients[w % connections].watch(0).await?;
        let ready = ready.clone();
        let got = Receipts::default();
        receipts.push(((w % connections) % urls.len(), got.clone()));
        tasks.spawn(async move {
            loop {
                let Some(m) = watch.message().await? else {
                    bail!("a watch ended before the last write");
                };
                let at = Instant::now();
                match m.msg {
                    Some(pb::watch_response::Msg::Snapshot(_)) => {
                        ready.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(pb::watch_response::Msg::Event(e)) => lock(&got).push((e.revision, at)),
                    _ => {}
                }
            }
        });
    }
    started(&ready, watchers, "twill").await?;
    let writer = Client::with_options(urls, opts)?;
    let mut acks = Vec::with_capacity(writes);
    for n in 0..writes {
        let r = writer
            .acquire(pb::AcquireRequest {
                node: format!("fanout-{n:05}"),
                public_ip: "192.0.2.1".into(),
                ..Default::default()
            })
            .await?;
        acks.push((r.revision, Instant::now()));
    }
    fold(tasks, receipts, acks).await
}

fn etcd_channel(url: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad etcd endpoint {url}"))?
        .tcp_nodelay(true)
        .connect_lazy())
}

/// etcd: the same, with `watchers` Watch streams on a key prefix (one watch each) and one client
/// putting `writes` keys under it one after the other.
pub async fn etcd(
    endpoints: &[String],
    watchers: usize,
    writes: usize,
    connections: usize,
) -> Result<Fanout> {
    const PREFIX: &[u8] = b"/fanout/";
    // The prefix's end: its last byte plus one.
    const END: &[u8] = b"/fanout0";
    let connections = connections.clamp(1, watchers.max(1));
    let channels = (0..connections)
        .map(|i| etcd_channel(&endpoints[i % endpoints.len()]))
        .collect::<Result<Vec<_>>>()?;
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut receipts = Vec::new();
    for w in 0..watchers {
        let mut client = etcd::watch_client::WatchClient::new(channels[w % connections].clone());
        let create = etcd::WatchRequest {
            request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(
                etcd::WatchCreateRequest {
                    key: PREFIX.to_vec(),
                    range_end: END.to_vec(),
                    ..Default::default()
                },
            )),
        };
        // The request side stays open after the create: closing it could end the watch.
        let requests = futures::stream::iter([create]).chain(futures::stream::pending());
        let mut stream = client.watch(requests).await?.into_inner();
        let ready = ready.clone();
        let got = Receipts::default();
        receipts.push(((w % connections) % endpoints.len(), got.clone()));
        tasks.spawn(async move {
            while let Some(m) = stream.message().await? {
                let at = Instant::now();
                if m.created {
                    ready.fetch_add(1, Ordering::SeqCst);
                }
                if m.canceled {
                    bail!("etcd cancelled a watch: {}", m.cancel_reason);
                }
                let mut got = lock(&got);
                for e in &m.events {
                    got.push((
                        e.kv.as_ref().map(|kv| kv.mod_revision as u64).unwrap_or(0),
                        at,
                    ));
                }
            }
            bail!("an etcd watch ended before the last write")
        });
    }
    started(&ready, watchers, "etcd").await?;
    let mut kv = etcd::kv_client::KvClient::new(etcd_channel(&endpoints[0])?);
    let mut acks = Vec::with_capacity(writes);
    for n in 0..writes {
        let mut key = PREFIX.to_vec();
        key.extend_from_slice(format!("{n:05}").as_bytes());
        let r = kv
            .put(etcd::PutRequest {
                key,
                value: b"x".to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let rev = r.header.map(|h| h.revision as u64).unwrap_or(0);
        acks.push((rev, Instant::now()));
    }
    fold(tasks, receipts, acks).await
}

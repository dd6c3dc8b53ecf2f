//! Many simulated agents on one cluster. Each does what `twill agent` does to the controller:
//! acquires its lease, watches from the revision it got, renews when a third of the TTL is
//! left and reports its health on the agent's default interval. Agents share connections
//! (a real node has one of its own), each pinned to one member in turn, so watches are served
//! by every member and followers forward the writes. What is measured is what the members pay:
//! CPU per member over a window, and how acquisitions fare while it runs. [`start_etcd`] puts
//! the same agents on etcd the way flannel's do, for the same figures side by side.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::task::JoinSet;
use twill_client::{Client, ClientOptions};
use twill_proto::v1 as pb;

use crate::etcd::FlannelEtcd;

/// The agent's default `--health-interval`.
pub const HEALTH_EVERY: Duration = Duration::from_secs(10);

/// How long one call of a simulated agent may take before it is tried again, on twill and on
/// etcd alike: while thousands of agents join, every join is a write sent to every watcher
/// already there, and a call bounded by a second would give up on a busy but working cluster.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters the simulated agents keep while they run.
#[derive(Default)]
pub struct Counters {
    pub renewals: AtomicUsize,
    pub reports: AtomicUsize,
    pub events: AtomicUsize,
    /// Watches that broke and were resumed from the last revision seen, as the agent does.
    pub resumed: AtomicUsize,
    /// Renewals and reports that failed (the agent tries again later).
    pub refused: AtomicUsize,
    pub failures: AtomicUsize,
}

/// The running agents; dropping this stops them.
pub struct Agents {
    pub counters: Arc<Counters>,
    pub joined_in: Duration,
    tasks: JoinSet<()>,
}

impl Agents {
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }

    /// Stops the agents: an error if any of them failed while they ran.
    pub fn finish(mut self) -> Result<()> {
        let failed = self.counters.failures.load(Ordering::Relaxed);
        self.stop();
        if failed > 0 {
            bail!("{failed} simulated agents failed (see the log)");
        }
        Ok(())
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

fn options(tls: tonic::transport::ClientTlsConfig) -> ClientOptions {
    ClientOptions {
        retry_for: Duration::from_secs(60),
        attempt_timeout: ATTEMPT_TIMEOUT,
        tls: Some(tls),
        ..Default::default()
    }
}

/// Starts `agents` simulated agents over `connections` connections and returns once every one
/// holds its lease and has its watch open. `ttl` is the cluster's lease TTL.
pub async fn start(
    urls: &[String],
    tls: tonic::transport::ClientTlsConfig,
    agents: usize,
    connections: usize,
    ttl: Duration,
) -> Result<Agents> {
    let connections = connections.clamp(1, agents.max(1));
    let clients: Vec<Arc<Client>> = (0..connections)
        .map(|i| {
            Client::with_options([urls[i % urls.len()].clone()], options(tls.clone())).map(Arc::new)
        })
        .collect::<Result<_, _>>()?;
    spawn(clients, agents, |a, c, counters, ready, gate| async move {
        agent(a, c, ttl, &counters, &ready, &gate).await
    })
    .await
}

/// Runs `agents` simulated agents, agent `a` on `clients[a % clients.len()]`, and waits until
/// every one is ready (see [`joined`]). An agent that fails is counted and says why.
async fn spawn<C, F, Fut>(clients: Vec<Arc<C>>, agents: usize, agent: F) -> Result<Agents>
where
    C: Send + Sync + 'static,
    F: Fn(usize, Arc<C>, Arc<Counters>, Arc<AtomicUsize>, Arc<tokio::sync::Semaphore>) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let ready = Arc::new(AtomicUsize::new(0));
    // Joins 64 at a time, as nodes of a cluster coming up would. Many more at once on this
    // machine make attempts time out; each timed-out call resets its HTTP/2 stream, and a member
    // closes a connection whose client resets more than 20 streams it had not yet taken up
    // (hyper's guard against rapid-reset floods), failing every agent on that connection.
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for a in 0..agents {
        let c = clients[a % clients.len()].clone();
        let run = agent(a, c, counters.clone(), ready.clone(), gate.clone());
        let counters = counters.clone();
        tasks.spawn(async move {
            if let Err(e) = run.await {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("simulated agent {a} stopped: {e:#}");
            }
        });
    }
    joined(counters, &ready, agents, started, tasks).await
}

/// Waits until `agents` agents are `ready` (at most 10 minutes, failing at the first agent
/// that fails) and hands them over.
async fn joined(
    counters: Arc<Counters>,
    ready: &AtomicUsize,
    agents: usize,
    started: Instant,
    tasks: JoinSet<()>,
) -> Result<Agents> {
    while ready.load(Ordering::Relaxed) < agents {
        if counters.failures.load(Ordering::Relaxed) > 0 {
            bail!("a simulated agent failed while joining");
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {} of {agents} agents joined in 10 minutes",
                ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Agents {
        counters,
        joined_in: started.elapsed(),
        tasks,
    })
}

/// The same load on etcd, as flannel's agents put it there: `agents` agents over `connections`
/// connections (each pinned to one member in turn), each taking a subnet of `network` with
/// [`FlannelEtcd::acquire`] and then watching every subnet key from then on; 64 join at a time.
/// flannel renews its 24 h lease an hour before it ends and reports no health, so nothing else
/// reaches etcd during a run: etcd carries less than twill's agents put on twill (no health
/// reports), and the comparison leans its way.
pub async fn start_etcd(
    endpoints: &[String],
    agents: usize,
    connections: usize,
    network: ipnet::Ipv4Net,
    subnet_len: u8,
) -> Result<Agents> {
    if endpoints.is_empty() {
        bail!("no etcd endpoints");
    }
    let connections = connections.clamp(1, agents.max(1));
    let clients: Vec<Arc<FlannelEtcd>> = (0..connections)
        .map(|i| {
            FlannelEtcd::new(
                vec![endpoints[i % endpoints.len()].clone()],
                network,
                subnet_len,
            )
            .map(|c| Arc::new(c.with_attempt_timeout(ATTEMPT_TIMEOUT)))
        })
        .collect::<Result<_>>()?;
    spawn(clients, agents, |a, c, counters, ready, gate| async move {
        etcd_agent(a, c, &counters, &ready, &gate).await
    })
    .await
}

/// One flannel agent on etcd: acquire, watch the subnets, and resume the watch after the last
/// revision it saw when it breaks.
async fn etcd_agent(
    a: usize,
    c: Arc<FlannelEtcd>,
    counters: &Counters,
    ready: &AtomicUsize,
    gate: &tokio::sync::Semaphore,
) -> Result<()> {
    let (mut watch, mut seen) = {
        let _turn = gate.acquire().await.context("join gate")?;
        c.acquire(&format!("sim-{a:05}")).await?;
        c.watch_subnets(0).await?
    };
    ready.fetch_add(1, Ordering::Relaxed);
    loop {
        match watch.message().await {
            Ok(Some(m)) if !m.canceled => {
                counters.events.fetch_add(m.events.len(), Ordering::Relaxed);
                if let Some(h) = m.header {
                    seen = seen.max(h.revision);
                }
            }
            Ok(_) | Err(_) => {
                counters.resumed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                watch = c.watch_subnets(seen + 1).await?.0;
            }
        }
    }
}

/// One agent: acquire, watch, then renew and report for as long as it runs.
async fn agent(
    a: usize,
    c: Arc<Client>,
    ttl: Duration,
    counters: &Counters,
    ready: &AtomicUsize,
    gate: &tokio::sync::Semaphore,
) -> Result<()> {
    let node = format!("sim-{a:05}");
    let (lease, mut watch) = {
        let _turn = gate.acquire().await.context("join gate")?;
        let r = c
            .acquire(pb::AcquireRequest {
                node: node.clone(),
                public_ip: format!("198.18.{}.{}", a / 250, a % 250 + 1),
                ..Default::default()
            })
            .await?;
        let lease = r.lease.context("answer without a lease")?;
        let watch = c.watch_changes(r.revision).await?;
        (lease, watch)
    };
    ready.fetch_add(1, Ordering::Relaxed);
    // As the agent: a watch that breaks is resumed from the last revision it had.
    let mut seen = lease.create_revision;
    let reading = async {
        loop {
            match watch.message().await {
                Ok(Some(m)) => match m.msg {
                    Some(pb::watch_response::Msg::Event(e)) => {
                        counters.events.fetch_add(1, Ordering::Relaxed);
                        seen = seen.max(e.revision);
                    }
                    Some(pb::watch_response::Msg::Snapshot(s)) => seen = seen.max(s.revision),
                    Some(pb::watch_response::Msg::Progress(p)) => seen = seen.max(p.revision),
                    None => {}
                },
                Ok(None) | Err(_) => {
                    counters.resumed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    watch = c.watch_changes(seen).await?;
                }
            }
        }
        #[allow(unreachable_code)]
        Ok::<_, anyhow::Error>(())
    };
    // Renewals and reports start at a random phase, as agents that joined at different times.
    let phase = |every: Duration| every.mul_f64(rand::random::<f64>());
    let renew_every = ttl - ttl / 3;
    let mut next_renew = tokio::time::Instant::now() + phase(renew_every);
    let mut next_report = tokio::time::Instant::now() + phase(HEALTH_EVERY);
    let health = pb::NodeHealth {
        ready: true,
        reconcile_ok: true,
        backend: "vxlan".into(),
        version: "sim".into(),
        interval_ms: HEALTH_EVERY.as_millis() as u64,
        ..Default::default()
    };
    let working = async {
        loop {
            let until = next_renew.min(next_report);
            tokio::time::sleep_until(until).await;
            let now = tokio::time::Instant::now();
            // A failed call is tried again on the next round, as the agent does.
            if now >= next_renew {
                match c.renew(&node, lease.create_revision).await {
                    Ok(_) => {
                        counters.renewals.fetch_add(1, Ordering::Relaxed);
                        next_renew = now + renew_every;
                    }
                    Err(_) => {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        next_renew = now + Duration::from_secs(1);
                    }
                }
            }
            if now >= next_report {
                let mut h = health.clone();
                h.reconcile_at_ms = twill_proto::now_ms();
                if c.report_health(&node, h).await.is_ok() {
                    counters.reports.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                }
                next_report = now + HEALTH_EVERY;
            }
        }
        #[allow(unreachable_code)]
        Ok::<_, anyhow::Error>(())
    };
    tokio::select! {
        r = reading => r.context("watch"),
        r = working => r.context("renew or report"),
    }
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tick = u64::try_from(tick).ok().filter(|t| *t > 0)?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / tick as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_time() {
        let before = cpu_time(std::process::id()).expect("own /proc/self/stat");
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let after = cpu_time(std::process::id()).expect("own /proc/self/stat");
        assert!(after > before, "{before:?} -> {after:?} after {x} spins");
    }
}

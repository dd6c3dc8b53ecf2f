//! etcd 3.4 as the benchmark peer: a 3-member cluster of `etcd` processes on loopback, and
//! flannel's way of taking a subnet from it (a lease grant, then a transaction that creates the
//! subnet's key only if it does not exist, retried with the next subnet on conflict).
//!
//! Subnets are picked from a counter shared by all clients instead of flannel's read of every
//! existing lease before each attempt: that is cheaper for etcd, so ratios against it are
//! conservative.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tonic::transport::Channel;

pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;

pub struct EtcdCluster {
    dir: PathBuf,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl EtcdCluster {
    pub fn available() -> bool {
        Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub async fn start(n: usize, dir: &Path) -> Result<EtcdCluster> {
        let mut c = EtcdCluster {
            dir: dir.to_path_buf(),
            client_ports: (0..n).map(|_| crate::free_port()).collect::<Result<_>>()?,
            peer_ports: (0..n).map(|_| crate::free_port()).collect::<Result<_>>()?,
            children: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            c.spawn(i, true)?;
        }
        c.wait_leader(Duration::from_secs(30)).await?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize, new: bool) -> Result<()> {
        let cluster: Vec<String> = self
            .peer_ports
            .iter()
            .enumerate()
            .map(|(j, p)| format!("m{j}=http://127.0.0.1:{p}"))
            .collect();
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &self.client_url(i)])
            .args(["--advertise-client-urls", &self.client_url(i)])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_ports[i]),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_ports[i]),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", "twill-bench"])
            .args([
                "--initial-cluster-state",
                if new { "new" } else { "existing" },
            ])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start etcd (Debian package etcd-server)")?;
        self.children[i] = Some(child);
        Ok(())
    }

    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_ports[i])
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.client_ports.len())
            .map(|i| self.client_url(i))
            .collect()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(|c| c.id())
    }

    /// The index of the member that is leader, as the running members report it.
    pub async fn wait_leader(&self, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            for i in 0..self.children.len() {
                if self.children[i].is_none() {
                    continue;
                }
                let Ok(ch) = Channel::from_shared(self.client_url(i))?.connect().await else {
                    continue;
                };
                let Ok(s) = MaintenanceClient::new(ch)
                    .status(pb::StatusRequest {})
                    .await
                else {
                    continue;
                };
                let s = s.into_inner();
                let me = s.header.map(|h| h.member_id).unwrap_or(0);
                if s.leader != 0 && s.leader == me {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("etcd elected no leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i, false)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// One flannel-like client: it tries its endpoints in turn when one fails.
pub struct FlannelEtcd {
    endpoints: Vec<String>,
    current: std::sync::Mutex<(usize, Option<Channel>)>,
    next_subnet: Arc<AtomicU32>,
}

impl FlannelEtcd {
    pub fn new(endpoints: Vec<String>, next_subnet: Arc<AtomicU32>) -> Self {
        FlannelEtcd {
            endpoints,
            current: std::sync::Mutex::new((0, None)),
            next_subnet,
        }
    }

    fn channel(&self) -> Result<Channel> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = &cur.1 {
            return Ok(ch.clone());
        }
        let ch = Channel::from_shared(self.endpoints[cur.0].clone())?
            // A follower that lost its leader holds a proposal for etcd's own request timeout
            // (about 5 s); a client that gives up after 1 s and tries another member fails over
            // as fast as etcd allows.
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(1))
            .connect_lazy();
        cur.1 = Some(ch.clone());
        Ok(ch)
    }

    fn fail_over(&self) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.0 = (cur.0 + 1) % self.endpoints.len();
        cur.1 = None;
    }

    /// Takes a subnet for `node`, retrying across members for up to a minute.
    pub async fn acquire(&self, node: &str) -> Result<String> {
        let started = Instant::now();
        loop {
            match self.try_acquire(node).await {
                Ok(s) => return Ok(s),
                Err(e) if started.elapsed() < Duration::from_secs(60) => {
                    let _ = e;
                    self.fail_over();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_acquire(&self, node: &str) -> Result<String> {
        let ch = self.channel()?;
        let lease = LeaseClient::new(ch.clone())
            .lease_grant(pb::LeaseGrantRequest { ttl: 86_400, id: 0 })
            .await?
            .into_inner()
            .id;
        let mut kv = KvClient::new(ch);
        loop {
            // 10.0.0.0/8 in /24s, skipping the first as flannel does.
            let idx = self.next_subnet.fetch_add(1, Ordering::Relaxed) + 1;
            if idx >= 1 << 16 {
                bail!("10.0.0.0/8 exhausted");
            }
            let subnet = format!("10.{}.{}.0-24", idx >> 8, idx & 0xff);
            let key = format!("/coreos.com/network/subnets/{subnet}").into_bytes();
            let value = format!(
                "{{\"PublicIP\":\"192.0.2.1\",\"BackendType\":\"vxlan\",\"Node\":\"{node}\"}}"
            );
            let txn = pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: pb::compare::CompareResult::Equal as i32,
                    target: pb::compare::CompareTarget::Create as i32,
                    key: key.clone(),
                    target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                }],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key,
                        value: value.into_bytes(),
                        lease,
                    })),
                }],
                failure: vec![],
            };
            if kv.txn(txn).await?.into_inner().succeeded {
                return Ok(subnet);
            }
        }
    }
}

//! The controller cluster a chaos run attacks: members in this process (faults injected into
//! their Raft transport, clocks that can be stepped) or `twill controller` processes (killed
//! with SIGKILL, paused with SIGSTOP).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;
use twill_client::Client;
use twill_controller::disk::{DiskFaults, FaultCounts};
use twill_controller::network::Faults;
use twill_controller::NodeId;

use crate::procs::{KillAt, SnapshotFiles, TwillProcs};
use crate::tmpfs::Tmpfs;
use crate::Cluster;

/// Where the controller members run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Tasks in this process: partitions, message loss and delay, clock steps, restarts, disk
    /// faults.
    InProcess,
    /// `twill controller` processes: SIGKILL and SIGSTOP, and (root) a real full disk.
    Processes,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::InProcess => "in-process",
            Mode::Processes => "processes",
        })
    }
}

/// Log entries between a processes-mode member's snapshots. Small, so that with the run's
/// writes (a dozen agents renewing every second or so) each member writes a snapshot about
/// every second, and `kill-mid-snapshot` finds one under way within its wait.
pub const SNAPSHOT_EVERY: &str = "10";

/// What a `kill-mid-snapshot` fault did.
#[derive(Clone, Debug)]
pub struct SnapshotKill {
    /// The kill was sent when a snapshot write had begun; `false`: none began within the wait
    /// and the member was killed anyway.
    pub during_write: bool,
    /// The member's snapshot files once it was dead.
    pub files: SnapshotFiles,
    /// How long the nemesis waited for a write.
    pub waited: Duration,
}

impl SnapshotKill {
    /// The kill landed in the middle of a snapshot write: sent once one had begun, and its
    /// temporary file was still there (not renamed) once the member was dead.
    pub fn mid_write(&self) -> bool {
        self.during_write && self.files.mid_write()
    }
}

/// The size of a processes-mode member's tmpfs (see [`Controllers::start`]) but while
/// `disk-full-real` holds it full.
pub const TMPFS_SIZE: &str = "64m";

/// What a `disk-full-real` fault did.
#[derive(Clone, Debug)]
pub struct FullDisk {
    /// The size the member's tmpfs was shrunk to: what it used then, in whole pages.
    pub size: u64,
    /// How the member ended, if it exited on its own within the wait.
    pub exited: Option<std::process::ExitStatus>,
    /// From the shrink to its exit, or the whole wait.
    pub waited: Duration,
    /// What the member logged meanwhile.
    pub log: String,
}

impl FullDisk {
    /// Its log names the full disk: a write of its failed with ENOSPC.
    pub fn said_enospc(&self) -> bool {
        self.log.contains("No space left on device")
    }
}

/// The network every chaos run hands out: sixteen /28s, so leases are scarce.
pub const NETWORK: &str = "10.99.0.0/24";
pub const SUBNET_LEN: u8 = 28;
pub const POOL: usize = 16;

pub enum Controllers {
    InProcess {
        cluster: Cluster,
        faults: BTreeMap<NodeId, Arc<Faults>>,
        /// Each member's disk, kept across restarts: its counters add up over the run.
        disks: BTreeMap<NodeId, DiskFaults>,
    },
    Processes {
        procs: TwillProcs,
        /// Each member's tmpfs, under its data directory's name (root, when asked for):
        /// unmounted after the processes are gone, since fields drop in this order.
        disks: Vec<Tmpfs>,
        _dir: TempDir,
    },
}

impl Controllers {
    /// Starts `members` members. In processes mode with `real_disks`, each member's data
    /// directory is a tmpfs of its own ([`TMPFS_SIZE`]) and its log goes to a file beside it
    /// (`disk-full-real` reads it); `real_disks` needs root.
    pub async fn start(
        mode: Mode,
        members: usize,
        ttl: Duration,
        seed: u64,
        real_disks: bool,
    ) -> Result<Self> {
        match mode {
            Mode::InProcess => {
                let faults: BTreeMap<NodeId, Arc<Faults>> = (1..=members as NodeId)
                    .map(|id| (id, Arc::new(Faults::new(seed.wrapping_mul(31) + id))))
                    .collect();
                let disks: BTreeMap<NodeId, DiskFaults> = (1..=members as NodeId)
                    .map(|id| (id, DiskFaults::new()))
                    .collect();
                let f = faults.clone();
                let d = disks.clone();
                let ttl_ms = ttl.as_millis() as u64;
                let cluster = Cluster::start_with(members as u64, move |o| {
                    o.initial_config.network = NETWORK.parse().expect("valid literal");
                    o.initial_config.subnet_len = SUBNET_LEN;
                    o.initial_config.subnet_min = Some("10.99.0.0".parse().expect("literal"));
                    o.initial_config.subnet_max = Some("10.99.0.240".parse().expect("literal"));
                    o.initial_config.lease_ttl_ms = ttl_ms;
                    o.write_timeout = Duration::from_secs(2);
                    o.watch_progress = Duration::from_secs(1);
                    o.faults = f.get(&o.id).cloned();
                    o.disk_faults = d.get(&o.id).cloned();
                })
                .await?;
                Ok(Controllers::InProcess {
                    cluster,
                    faults,
                    disks,
                })
            }
            Mode::Processes => {
                let dir = tempfile::tempdir()?;
                let bin = crate::twill_binary()?;
                let ttl = format!("{}ms", ttl.as_millis());
                let mut disks = Vec::new();
                if real_disks {
                    for i in 1..=members {
                        disks.push(Tmpfs::mount(dir.path().join(format!("m{i}")), TMPFS_SIZE)?);
                    }
                }
                let procs = TwillProcs::start_with(
                    &bin,
                    members,
                    dir.path(),
                    &[
                        "--network",
                        NETWORK,
                        "--subnet-len",
                        "28",
                        "--subnet-min",
                        "10.99.0.0",
                        "--subnet-max",
                        "10.99.0.240",
                        "--lease-ttl",
                        &ttl,
                        "--write-timeout",
                        "2s",
                        "--snapshot-every",
                        SNAPSHOT_EVERY,
                    ],
                    real_disks,
                )
                .await?;
                Ok(Controllers::Processes {
                    procs,
                    disks,
                    _dir: dir,
                })
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        match self {
            Controllers::InProcess { cluster, .. } => cluster.urls(),
            Controllers::Processes { procs, .. } => procs.urls(),
        }
    }

    pub fn len(&self) -> usize {
        self.urls().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leader's index (0-based) as the first member that answers names it.
    pub async fn leader(&self) -> Option<usize> {
        for u in self.urls() {
            let asked = tokio::time::timeout(
                Duration::from_millis(500),
                Client::status_of(&u, Some(crate::admin_tls())),
            );
            if let Ok(Ok(s)) = asked.await {
                if s.leader != 0 {
                    return Some(s.leader as usize - 1);
                }
            }
        }
        None
    }

    /// Crashes member `i`: SIGKILL for a process, an abrupt shutdown in process.
    pub async fn kill(&mut self, i: usize) {
        match self {
            Controllers::InProcess { cluster, .. } => cluster.stop(i as NodeId + 1).await,
            Controllers::Processes { procs, .. } => procs.kill(i),
        }
    }

    /// Waits up to `within` for member `i`'s next snapshot write and SIGKILLs it at the moment
    /// `at` names; without one in time, kills it anyway. Processes only (`None` in process).
    pub async fn kill_mid_snapshot(
        &mut self,
        i: usize,
        within: Duration,
        at: KillAt,
    ) -> Result<Option<SnapshotKill>> {
        let Controllers::Processes { procs, .. } = self else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let (during_write, files) = procs.kill_mid_snapshot(i, within, at).await?;
        Ok(Some(SnapshotKill {
            during_write,
            files,
            waited: started.elapsed(),
        }))
    }

    /// Whether each member runs on a tmpfs of its own, for `disk-full-real`.
    pub fn real_disks(&self) -> bool {
        matches!(self, Controllers::Processes { disks, .. } if !disks.is_empty())
    }

    /// Fills member `i`'s disk: shrinks its tmpfs to what it uses, then waits up to `within`
    /// for the member to exit on its own (polling). The disk stays full: [`Self::unfill_disk`].
    /// `None` without real disks.
    pub async fn fill_disk(&mut self, i: usize, within: Duration) -> Result<Option<FullDisk>> {
        let Controllers::Processes { procs, disks, .. } = self else {
            return Ok(None);
        };
        let Some(disk) = disks.get(i) else {
            return Ok(None);
        };
        let from = procs.log(i).len();
        let size = disk.fill()?;
        let started = std::time::Instant::now();
        let exited = loop {
            if let Some(s) = procs.exited(i) {
                break Some(s);
            }
            if started.elapsed() >= within {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let waited = started.elapsed();
        let log = procs.log(i).get(from..).unwrap_or_default().to_string();
        Ok(Some(FullDisk {
            size,
            exited,
            waited,
            log,
        }))
    }

    /// Gives member `i`'s tmpfs its room back ([`TMPFS_SIZE`]).
    pub fn unfill_disk(&self, i: usize) -> Result<()> {
        if let Controllers::Processes { disks, .. } = self {
            if let Some(d) = disks.get(i) {
                d.resize(TMPFS_SIZE)?;
            }
        }
        Ok(())
    }

    /// Starts member `i` again from its data directory.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        match self {
            Controllers::InProcess { cluster, .. } => cluster.restart(i as NodeId + 1).await,
            Controllers::Processes { procs, .. } => procs.restart(i),
        }
    }

    /// Cuts `side` off from the other members, both ways. In process only.
    pub fn partition(&self, side: &[usize]) -> bool {
        let Controllers::InProcess { faults, .. } = self else {
            return false;
        };
        let side: Vec<NodeId> = side.iter().map(|i| *i as NodeId + 1).collect();
        for (id, f) in faults {
            if side.contains(id) {
                f.cut_off(faults.keys().copied().filter(|x| !side.contains(x)));
            } else {
                f.cut_off(side.iter().copied());
            }
        }
        true
    }

    /// Loses `per_mille` of Raft messages and delays the rest. In process only.
    pub fn degrade(&self, per_mille: u32, delay: Duration) -> bool {
        let Controllers::InProcess { faults, .. } = self else {
            return false;
        };
        for f in faults.values() {
            f.degrade(per_mille, delay);
        }
        true
    }

    pub fn heal_network(&self) {
        if let Controllers::InProcess { faults, .. } = self {
            for f in faults.values() {
                f.heal();
            }
        }
    }

    /// Steps member `i`'s wall clock. In process only (a process's clock is the machine's).
    pub fn step_clock(&self, i: usize, ms: i64) -> bool {
        let Controllers::InProcess { cluster, .. } = self else {
            return false;
        };
        match cluster.members.get(&(i as NodeId + 1)) {
            Some(r) => {
                r.member.clock.step(ms);
                true
            }
            None => false,
        }
    }

    /// Member `i`'s disk. In process only.
    pub fn disk(&self, i: usize) -> Option<&DiskFaults> {
        match self {
            Controllers::InProcess { disks, .. } => disks.get(&(i as NodeId + 1)),
            Controllers::Processes { .. } => None,
        }
    }

    /// The disk faults really injected so far, over every member. In process only.
    pub fn disk_counts(&self) -> FaultCounts {
        let mut sum = FaultCounts::default();
        if let Controllers::InProcess { disks, .. } = self {
            for c in disks.values().map(DiskFaults::counts) {
                sum.failed_syncs += c.failed_syncs;
                sum.failed_writes += c.failed_writes;
                sum.delayed_syncs += c.delayed_syncs;
                sum.torn_writes += c.torn_writes;
                sum.refused_after_crash += c.refused_after_crash;
            }
        }
        sum
    }

    /// Why member `i`'s Raft stopped on an error of its own (a failed log or snapshot write), if
    /// it has; waits up to `within` for it. `None` for a member that runs (or is not running at
    /// all, or runs in another process).
    pub async fn fatal(&self, i: usize, within: Duration) -> Option<String> {
        let Controllers::InProcess { cluster, .. } = self else {
            return None;
        };
        let r = cluster.members.get(&(i as NodeId + 1))?;
        // A zero timeout still polls once: an already stopped member is reported.
        tokio::time::timeout(within, r.member.fatal()).await.ok()
    }

    /// SIGSTOP (`stop`) or SIGCONT member `i`. Processes only.
    pub fn signal_pause(&self, i: usize, stop: bool) -> bool {
        let Controllers::Processes { procs, .. } = self else {
            return false;
        };
        let Some(pid) = procs.pid(i) else {
            return false;
        };
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on a child this harness started and still owns.
        unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
    }

    pub async fn shutdown(self) {
        match self {
            Controllers::InProcess { cluster, .. } => cluster.shutdown().await,
            Controllers::Processes {
                mut procs, disks, ..
            } => {
                for i in 0..procs.urls().len() {
                    // A paused member would not die of SIGKILL until continued on some kernels.
                    if let Some(pid) = procs.pid(i) {
                        // SAFETY: as above.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
                    }
                    procs.kill(i);
                }
                // Unmounted once nothing runs on them.
                drop(procs);
                drop(disks);
            }
        }
    }
}

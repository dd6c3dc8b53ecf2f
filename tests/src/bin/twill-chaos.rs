//! Long chaos campaigns: one run per seed, alternating modes and cluster sizes, every history
//! checked. Ends with a summary line; exits 1 if any run found a violation. With `--hours`, a
//! soak instead (`twill_tests::chaos::soak`): one cluster for hours, its members' memory and
//! file descriptors sampled and judged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use twill_tests::chaos::{self, Campaign, Mode};

const HELP: &str = "twill-chaos: chaos campaigns against a twill controller cluster

Each run starts a controller cluster (members in this process, or `twill controller`
processes), 12 simulated agents, a reader and a watcher per member; injects faults on a
schedule drawn from the seed; heals; lets 4 agents leave and 8 join; then checks the history:
no overlapping leases, no acknowledged lease lost, no lease expired before its holder's
deadline, watch streams in order and converged, each node's lease history linearizable,
every agent leased again and freed subnets reused.

Usage: twill-chaos [--seeds N] [--minutes M] [--first-seed S]
                   [--mode in-process|processes|both|agents] [--members 3|5|both]
                   [--faults-for SECONDS] [--kinds K1,K2,...]
       twill-chaos --hours H [--first-seed S]

  --seeds N          runs to do (default 10)
  --minutes M        stop starting runs after M minutes (default: no limit)
  --first-seed S     seed of the first run (default 1); run i uses S+i
  --mode             where members run (default both: alternate); `agents` runs real
                     `twill agent` processes in network namespaces against one controller
                     process instead (needs root)
  --members          cluster size (default both: alternate 3 and 5)
  --faults-for SECS  how long each run injects faults (default 30)
  --hours H          soak instead of campaigns (H may be a fraction, e.g. 0.05): one cluster
                     of 3 `twill controller` processes lives H hours, 2 s lease TTL, 10
                     simulated agents at a time, each leaving after 2-10 s without releasing,
                     so leases expire and subnets are reused by the thousand; a member paused
                     (SIGSTOP 1.5-4 s) or an agent stalled past its TTL every 10-40 s, never a
                     restart. Members snapshot every 1,000 entries and keep 1,000 watch
                     events, so these bounded buffers are full within a minute. Every 30 s
                     (H/40 for short soaks) prints each member's RSS, fds, threads, applied
                     index and leases; at the end a table, a verdict per
                     member, the history checks, and exits 1 on a violation or if a member's
                     anonymous RSS (RssAnon: its heap) grew >20 % or its fds by >16 (last-quarter mean over the second
                     quarter's) while still rising. Only --first-seed applies with it.
  --kinds LIST       draw only these fault kinds (comma-separated), e.g.
                     disk-fsync-fail,disk-full,disk-slow,disk-torn; default: all of the
                     mode's kinds. In process: kill-member, partition, lossy-network,
                     clock-step, crash-agent, stall-agent and the disk faults disk-fsync-fail
                     (fsync EIO), disk-full (writes ENOSPC), disk-slow (fsync +100 ms..2 s),
                     disk-torn (a write torn, then a dead disk). Processes: kill-member,
                     pause-member, crash-agent, stall-agent, kill-mid-snapshot (SIGKILL
                     while a snapshot is being written, then restart), disk-full-real
                     (root only, not offered otherwise: members on tmpfs of their own, one
                     shrunk to what it uses so it must exit saying ENOSPC, then enlarged
                     and the member restarted). Agents mode:
                     kill-controller, pause-controller, kill-agent, stall-agent,
                     cut-controller (an agent's namespace drops its traffic with the
                     controller for 0.3-3 s or 4-9 s, packets counted), cut-underlay (two
                     nodes' underlay cut for 1-4 s under a ping, packets counted),
                     clock-step-controller (the controller's wall clock stepped +-2..30 s
                     through libfaketime, package faketime, then the controller restarted on
                     it; the step is checked in its leader time).

Disk faults are counted twice: as injected (faults injected) and as really hit (the member's
disk counters rose: an fsync failed or was delayed, a write failed or was torn), shown as
kind=hit/injected; a kind that was injected but never hit shows 0/N. A kill-mid-snapshot
counts as hit when it landed in the middle of a snapshot write (the member's temporary
snapshot file still there once it was dead), shown as kill-mid-snapshot=landed/injected.
In agents mode a cut that dropped no packet, or a clock step the controller does not show,
is a fault-missed violation.

A failing run prints its seed, its violations and the history around the first one; rerun it
with --first-seed SEED --seeds 1 and the same --mode/--members. The seed fixes the fault
schedule and the clients' choices, not thread timing, so a rerun repeats the faults but may
not repeat the failure.";

struct Args {
    seeds: u64,
    minutes: Option<f64>,
    first: u64,
    modes: Vec<Mode>,
    agents: bool,
    sizes: Vec<usize>,
    faults_for: Duration,
    kinds: Option<Vec<&'static str>>,
    /// `--hours`: a soak instead of campaigns.
    hours: Option<f64>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        seeds: 10,
        minutes: None,
        first: 1,
        modes: vec![Mode::InProcess, Mode::Processes],
        agents: false,
        sizes: vec![3, 5],
        faults_for: Duration::from_secs(30),
        kinds: None,
        hours: None,
    };
    let mut campaign_flags = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            std::process::exit(0);
        }
        let Some(v) = it.next() else {
            bail!("{flag} needs a value (see --help)");
        };
        let num = |v: &str| -> Result<u64> {
            v.parse()
                .map_err(|_| anyhow::anyhow!("{flag}: {v:?} is not a whole number"))
        };
        if !["--first-seed", "--hours"].contains(&flag.as_str()) {
            campaign_flags.push(flag.clone());
        }
        match flag.as_str() {
            "--hours" => {
                let h: f64 = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--hours: {v:?} is not a number"))?;
                if !(h > 0.0 && h <= 1000.0) {
                    bail!("--hours: {v} is not between 0 and 1000");
                }
                a.hours = Some(h);
            }
            "--seeds" => a.seeds = num(&v)?,
            "--first-seed" => a.first = num(&v)?,
            "--faults-for" => a.faults_for = Duration::from_secs(num(&v)?),
            "--minutes" => {
                a.minutes = Some(
                    v.parse()
                        .map_err(|_| anyhow::anyhow!("--minutes: {v:?} is not a number"))?,
                )
            }
            "--mode" => {
                a.modes = match v.as_str() {
                    "in-process" => vec![Mode::InProcess],
                    "processes" => vec![Mode::Processes],
                    "both" => vec![Mode::InProcess, Mode::Processes],
                    "agents" => {
                        a.agents = true;
                        vec![Mode::Processes]
                    }
                    _ => bail!("--mode: {v:?} is not in-process, processes, both or agents"),
                }
            }
            "--kinds" => {
                let mut kinds = Vec::new();
                for k in v.split(',').filter(|k| !k.is_empty()) {
                    let Some(known) = chaos::kinds_of(Mode::InProcess)
                        .iter()
                        .chain(chaos::kinds_of(Mode::Processes))
                        .chain(chaos::agents::KINDS.iter())
                        .find(|x| **x == k)
                    else {
                        bail!("--kinds: unknown fault kind {k:?} (see --help)");
                    };
                    kinds.push(*known);
                }
                if kinds.is_empty() {
                    bail!("--kinds: no kind given");
                }
                a.kinds = Some(kinds);
            }
            "--members" => {
                a.sizes = match v.as_str() {
                    "3" => vec![3],
                    "5" => vec![5],
                    "both" => vec![3, 5],
                    _ => bail!("--members: {v:?} is not 3, 5 or both"),
                }
            }
            _ => bail!("unknown flag {flag} (see --help)"),
        }
    }
    if a.hours.is_some() && !campaign_flags.is_empty() {
        bail!(
            "--hours runs a soak; {} only apply to campaigns",
            campaign_flags.join(", ")
        );
    }
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if let Some(kinds) = &a.kinds {
        if a.agents {
            if let Some(k) = kinds.iter().find(|k| !chaos::agents::KINDS.contains(k)) {
                bail!("--kinds: {k} cannot be injected in agents mode");
            }
        } else {
            for m in &a.modes {
                if let Some(k) = kinds.iter().find(|k| !chaos::kinds_of(*m).contains(k)) {
                    bail!("--kinds: {k} cannot be injected in {m} mode");
                }
            }
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("twill-chaos: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twill-chaos: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match args.hours {
        Some(h) => rt.block_on(soak(h, args.first)),
        None => rt.block_on(campaigns(args)),
    };
    std::process::exit(code);
}

/// One soak; exits 1 on a violation, on a member whose RSS or fds grow, or if it cannot run.
async fn soak(hours: f64, seed: u64) -> i32 {
    let s = chaos::soak::Soak::new(seed, hours);
    println!(
        "soak: seed {seed}, {:.1} min, a sample every {:?}, TTL {:?}, {} agents at a time, members with --snapshot-every {} --watch-history {}",
        s.duration.as_secs_f64() / 60.0,
        s.interval,
        s.ttl,
        s.live_agents,
        s.snapshot_every,
        s.watch_history
    );
    match chaos::soak::run(&s).await {
        Ok(r) => {
            r.print();
            i32::from(r.failed())
        }
        Err(e) => {
            println!("soak: the run itself failed: {e:#}");
            1
        }
    }
}

async fn campaigns(a: Args) -> i32 {
    let started = Instant::now();
    let mut runs = 0;
    let mut ops = 0;
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut disk = chaos::DiskTally::default();
    let mut violations = 0;
    let mut failed_seeds = Vec::new();
    for i in 0..a.seeds {
        if let Some(m) = a.minutes {
            if started.elapsed().as_secs_f64() > m * 60.0 {
                break;
            }
        }
        let seed = a.first + i;
        let mode = a.modes[i as usize % a.modes.len()];
        let members = a.sizes[(i as usize / a.modes.len()) % a.sizes.len()];
        let r = if a.agents {
            let mut c = Campaign::new(seed, Mode::Processes, 1, a.faults_for);
            c.kinds = a.kinds.clone();
            tokio::task::spawn_blocking(move || {
                let bin = twill_tests::twill_binary()?;
                chaos::agents::run_campaign(&c, 3, &bin).map(|(r, _)| r)
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
        } else {
            let mut c = Campaign::new(seed, mode, members, a.faults_for);
            c.kinds = a.kinds.clone();
            chaos::run(&c).await
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                println!("seed {seed}: the run itself failed: {e:#}");
                failed_seeds.push(seed);
                runs += 1;
                continue;
            }
        };
        runs += 1;
        ops += r.operations;
        for (k, v) in &r.faults {
            *faults.entry(k).or_default() += v;
        }
        disk.add(&r.disk);
        r.print();
        if !r.violations.is_empty() {
            violations += r.violations.len();
            failed_seeds.push(seed);
        }
    }
    let by_kind: Vec<String> = faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let total: usize = faults.values().sum();
    // Every disk kind of an in-process campaign is listed, so a kind that never ran shows 0/0.
    if a.modes.contains(&Mode::InProcess) && !a.agents {
        for k in chaos::DISK_KINDS {
            let drawn = a.kinds.as_ref().is_none_or(|ks| ks.contains(&k));
            if drawn {
                faults.entry(k).or_insert(0);
            }
        }
    }
    let disk = disk.describe(&faults);
    println!(
        "runs: {runs}, faults injected: {total} ({}){}, operations checked: {ops}, violations: {violations}{}, in {:.1} min",
        by_kind.join(" "),
        if disk.is_empty() {
            String::new()
        } else {
            format!(", disk faults that hit the disk: {disk}")
        },
        if failed_seeds.is_empty() {
            String::new()
        } else {
            format!(" (failing seeds: {failed_seeds:?})")
        },
        started.elapsed().as_secs_f64() / 60.0
    );
    if violations > 0 || !failed_seeds.is_empty() {
        1
    } else {
        0
    }
}

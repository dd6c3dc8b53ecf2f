//! BGP benchmark (root): one injecting peer (BIRD with N static routes) sends its table to a
//! receiver; the figure is the time from the receiver's first prefix to its having all N in its
//! RIB (session setup, which differs by each daemon's connect timers, is left out). Receivers, one at a time, in the same run: twill's speaker, BIRD 2 and GoBGP. Run it
//! with `scripts/bench-bgp [--prefixes N] [--rounds R]`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use twill_bgp::rib::Change;
use twill_bgp::speaker::{self, Control, SpeakerConfig};
use twill_tests::bgp::{gobgp_conf, kill_pid_file, output_of, peer, Lan};
use twill_tests::netns::{in_netns, is_root};

const LIMIT: Duration = Duration::from_secs(120);

fn prefix(i: u32) -> String {
    let a = 10 + i / 65_536;
    let b = (i / 256) % 256;
    let c = i % 256;
    format!("{a}.{b}.{c}.0/24")
}

fn injector_conf(n: u32) -> String {
    let mut c = String::from(
        "router id 192.0.2.1;\nprotocol device {}\nprotocol direct { ipv4; interface \"eth0\"; }\nprotocol static inject {\n  ipv4;\n",
    );
    for i in 0..n {
        c.push_str(&format!("  route {} blackhole;\n", prefix(i)));
    }
    c.push_str("}\n");
    for host in [2, 3, 4] {
        c.push_str(&format!(
            "protocol bgp to{host} {{\n  local 192.0.2.1 as 64512;\n  neighbor 192.0.2.{host} as 64512;\n  connect retry time 1;\n  ipv4 {{ import none; export where source = RTS_STATIC; next hop self; }};\n}}\n"
        ));
    }
    c
}

/// twill's speaker in host .2's namespace until it holds `n` prefixes.
fn twill_round(lan: &Lan, n: u32) -> Result<Duration> {
    let mut first: Option<Instant> = None;
    let cfg = SpeakerConfig {
        local_as: 64512,
        router_id: "192.0.2.2".parse()?,
        cluster_id: None,
        local_address: "192.0.2.2".parse()?,
        local_address_v6: None,
        peers: vec![peer(1, 64512)],
        originate: vec![],
        advertise: vec![],
        listen: None,
        import: Default::default(),
        graceful_restart: None,
    };
    in_netns(&lan.ns(2), move || {
        Box::pin(async move {
            let start = Instant::now();
            let (changes_tx, mut changes) = tokio::sync::mpsc::channel(65_536);
            let (control, control_rx) = tokio::sync::mpsc::channel(1);
            let sp = tokio::spawn(speaker::run(
                cfg,
                changes_tx,
                control_rx,
                Default::default(),
            ));
            let mut best = std::collections::HashSet::new();
            let r = loop {
                if best.len() as u32 >= n {
                    break Ok(first.map(|f| f.elapsed()).unwrap_or_default());
                }
                match tokio::time::timeout_at((start + LIMIT).into(), changes.recv()).await {
                    Ok(Some(Change::Best(p, _))) => {
                        first.get_or_insert_with(Instant::now);
                        best.insert(p);
                    }
                    Ok(Some(Change::Gone(p))) => {
                        best.remove(&p);
                    }
                    _ => {
                        break Err(anyhow::anyhow!(
                            "twill had {} of {n} after {LIMIT:?}",
                            best.len()
                        ))
                    }
                }
            };
            let _ = control.send(Control::Stop).await;
            let _ = sp.await;
            r
        })
    })?
}

/// Polls `count` until it reaches `n`; the time from the first nonzero count.
fn poll(what: &str, n: u32, mut count: impl FnMut() -> u32) -> Result<Duration> {
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    while start.elapsed() < LIMIT {
        let c = count();
        if c > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if c >= n {
            return Ok(first.map(|f| f.elapsed()).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{what} did not get every prefix within {LIMIT:?}")
}

fn first_number(s: &str) -> u32 {
    s.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

/// BIRD in host .3 until its session's table holds `n` prefixes.
fn bird_round(lan: &mut Lan, n: u32) -> Result<Duration> {
    let conf = "router id 192.0.2.3;\nprotocol device {}\nprotocol bgp from_injector {\n  local 192.0.2.3 as 64512;\n  neighbor 192.0.2.1 as 64512;\n  ipv4 { import all; export none; };\n}\n";
    let sock = lan.start_bird(3, conf)?;
    let d = poll("BIRD", n, || {
        let out = output_of(Command::new("birdc").arg("-s").arg(&sock).args([
            "show",
            "route",
            "protocol",
            "from_injector",
            "count",
        ]));
        // "BIRD 2.0.12 ready.\n100000 of 100000 routes for 100000 networks in table master4"
        out.lines().nth(1).map(first_number).unwrap_or(0)
    });
    if let Some(f) = lan.pid_files.pop() {
        kill_pid_file(&f);
        let _ = std::fs::remove_file(&f);
    }
    d
}

/// GoBGP in host .4 until its RIB holds `n` destinations.
fn gobgp_round(lan: &mut Lan, n: u32) -> Result<Duration> {
    lan.start_gobgp(4, &gobgp_conf(4, 64512, "192.0.2.1", 64512))?;
    let d = poll("GoBGP", n, || {
        let out = lan.gobgp(4, &["global", "rib", "summary", "-a", "ipv4"]);
        // "Table ipv4-unicast\nDestination: 100000, Path: 100000"
        out.split("Destination:")
            .nth(1)
            .map(first_number)
            .unwrap_or(0)
    });
    lan.stop_children();
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut n: u32 = 100_000;
    let mut rounds = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--prefixes" => n = args.next().context("--prefixes N")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds R")?.parse()?,
            "-h" | "--help" => {
                println!(
                    "bench-bgp [--prefixes N (100000)] [--rounds R (3)]: needs root, bird2, gobgpd"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    if !is_root() {
        bail!("needs root (network namespaces)");
    }
    let mut lan = Lan::new("bb", &[1, 2, 3, 4])?;
    let t = Instant::now();
    lan.start_bird(1, &injector_conf(n))?;
    println!(
        "injector: BIRD with {n} static /24s, started in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (mut tw, mut bi, mut go) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let a = twill_round(&lan, n)?;
        let b = bird_round(&mut lan, n)?;
        let c = gobgp_round(&mut lan, n)?;
        println!(
            "round {}: twill {:.2} s, BIRD {:.2} s, GoBGP {:.2} s",
            r + 1,
            a.as_secs_f64(),
            b.as_secs_f64(),
            c.as_secs_f64()
        );
        tw.push(a);
        bi.push(b);
        go.push(c);
    }
    let (a, b, c) = (median(tw), median(bi), median(go));
    println!(
        "{n} prefixes from one injector, first to last in the RIB, median of {rounds}: twill {:.2} s, BIRD {:.2} s (twill/BIRD {:.2}), GoBGP {:.2} s (twill/GoBGP {:.2})",
        a.as_secs_f64(),
        b.as_secs_f64(),
        a.as_secs_f64() / b.as_secs_f64(),
        c.as_secs_f64(),
        a.as_secs_f64() / c.as_secs_f64()
    );
    Ok(())
}

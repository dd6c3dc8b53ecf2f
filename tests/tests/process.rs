//! `twill controller` as a real process: SIGKILL during acquisitions loses no acknowledged
//! lease, SIGTERM stops it cleanly, and a damaged data directory is refused by name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use twill_client::{Client, ClientOptions};
use twill_proto::v1 as pb;
use twill_tests::{free_port, twill_binary};

struct Controller {
    child: Child,
    url: String,
    data: PathBuf,
}

fn spawn(dir: &Path, port: u16, extra: &[&str]) -> Controller {
    let bin = twill_binary().expect("twill binary");
    let child = Command::new(bin)
        .arg("controller")
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--network", "10.0.0.0/12"])
        .args(extra)
        .env("TWILL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn twill controller");
    Controller {
        child,
        url: format!("https://127.0.0.1:{port}"),
        data: dir.to_path_buf(),
    }
}

/// The admin credential the controller wrote beside its data, as the CLI finds it.
fn admin_tls(data: &Path) -> Option<tonic::transport::ClientTlsConfig> {
    twill_pki::Credentials::load(&data.join("admin.pem"))
        .ok()
        .map(|c| c.client_tls())
}

async fn wait_ready(ctl: &Controller) {
    let url = &ctl.url;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Some(tls) = admin_tls(&ctl.data) else {
            assert!(Instant::now() < deadline, "no admin.pem within 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if let Ok(s) = Client::status_of(url, Some(tls)).await {
            if s.state == "leader" && s.applied_index > 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "controller at {url} not ready within 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `twill controller` on a data directory that should be refused; returns its output.
fn run_to_exit(dir: &Path, port: u16) -> Output {
    let bin = twill_binary().expect("twill binary");
    let mut child = Command::new(bin)
        .arg("controller")
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("controller started on a damaged data directory instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn client(ctl: &Controller) -> Client {
    Client::with_options(
        [ctl.url.as_str()],
        ClientOptions {
            retry_for: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(5),
            tls: admin_tls(&ctl.data),
            ..Default::default()
        },
    )
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_acquisitions_loses_no_acknowledged_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port().expect("port");
    let mut ctl = spawn(&data, port, &[]);
    wait_ready(&ctl).await;

    let acked = twill_tests::Acked::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = twill_tests::spawn_acquirers(
        (0..8).map(|_| client(&ctl)).collect(),
        acked.clone(),
        stop.clone(),
        "acquire eventually succeeds across restarts",
    );

    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let n = acked.lock().unwrap().len();
        ctl.child.kill().expect("SIGKILL");
        ctl.child.wait().expect("reap");
        eprintln!("round {round}: killed with {n} acknowledged leases");
        ctl = spawn(&data, port, &[]);
        wait_ready(&ctl).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too few acquisitions to prove anything: {}",
        acked.len()
    );
    let listed = twill_tests::lease_table(&client(&ctl)).await.expect("list");
    for (node, subnet) in &acked {
        assert_eq!(
            listed.get(node),
            Some(subnet),
            "acknowledged lease of {node} lost or changed"
        );
    }
    let distinct: std::collections::BTreeSet<_> = listed.values().collect();
    assert_eq!(distinct.len(), listed.len(), "two nodes share a subnet");
    let _ = ctl.child.kill();
    let _ = ctl.child.wait();
}

fn sigterm(c: &mut Controller) -> std::process::ExitStatus {
    let pid = c.child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = c.child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "controller did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A data directory with a few leases and, with a low snapshot threshold, a snapshot file.
async fn populated(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let port = free_port().expect("port");
    let mut ctl = spawn(&data, port, &["--snapshot-every", "5"]);
    wait_ready(&ctl).await;
    let c = client(&ctl);
    for i in 0..30 {
        c.acquire(pb::AcquireRequest {
            node: format!("n{i}"),
            public_ip: "192.0.2.9".into(),
            ..Default::default()
        })
        .await
        .expect("acquire");
    }
    // Snapshots are built in the background: wait for the file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !data.join("snapshot.bin").exists() {
        assert!(Instant::now() < deadline, "no snapshot written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sigterm(&mut ctl).success(),
        "SIGTERM must stop the controller cleanly"
    );
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_raft_log_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = populated(dir.path()).await;
    let log = data.join("raft.redb");
    let len = std::fs::metadata(&log).expect("log exists").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .expect("open");
    f.set_len(len / 3).expect("truncate");
    drop(f);
    let out = run_to_exit(&data, free_port().expect("port"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&log.display().to_string()),
        "error must name the file: {stderr}"
    );
    assert_eq!(
        std::fs::metadata(&log).expect("still there").len(),
        len / 3,
        "the damaged file was replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = populated(dir.path()).await;
    let snap = data.join("snapshot.bin");
    let mut bytes = std::fs::read(&snap).expect("read snapshot");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&snap, &bytes).expect("write");
    let out = run_to_exit(&data, free_port().expect("port"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&snap.display().to_string()),
        "error must name the file: {stderr}"
    );
    assert_eq!(
        std::fs::read(&snap).expect("still there"),
        bytes,
        "the damaged file was replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_nonzero_with_a_clear_message() {
    let bin = twill_binary().expect("twill binary");
    let cases: &[(&[&str], &str)] = &[
        (
            &["controller", "--network", "10.0.0.0/33"],
            "not an IPv4 CIDR",
        ),
        (&["controller", "--subnet-len", "31"], "31"),
        (
            &["controller", "--id", "1", "--peer", "2=http://127.0.0.1:1"],
            "not this one",
        ),
        (&["controller", "--peer", "x=http://a"], "member id"),
        (&["controller", "--lease-ttl", "10"], "missing unit"),
        (&["controller", "--threads", "0"], "--threads"),
        (&["controller", "--threads", "many"], "--threads"),
        (
            &["controller", "--backend", "host-gw", "--vni", "4"],
            "vxlan backend only",
        ),
        (
            &["leases", "--controller", "127.0.0.1:1"],
            "invalid controller endpoint",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(&bin).args(*args).output().expect("run twill");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(want),
            "{args:?}: expected {want:?} in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}

/// `--threads` (or TWILL_THREADS) sizes the runtime that serves clients and watches: the
/// member says how many threads it has when it starts, and the flag wins over the variable.
#[test]
fn threads_size_the_serving_runtime() {
    use std::io::{BufRead, BufReader};
    let bin = twill_binary().expect("twill binary");
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (&["--threads", "1"], None, "threads=1"),
        (&[], Some("3"), "threads=3"),
        (&["--threads", "2"], Some("3"), "threads=2"),
    ];
    for (flags, env, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().expect("port");
        let mut cmd = Command::new(&bin);
        cmd.arg("controller")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(*flags)
            .env("TWILL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match env {
            Some(v) => cmd.env("TWILL_THREADS", v),
            None => cmd.env_remove("TWILL_THREADS"),
        };
        let mut child = cmd.spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        // Reads until the start line (or the end of the output, if the member fails first).
        let line = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("starting controller"));
        let _ = child.kill();
        let _ = child.wait();
        let line = line.unwrap_or_else(|| panic!("{flags:?} {env:?}: no start line"));
        assert!(
            line.split_whitespace().any(|w| w == *want),
            "{flags:?} {env:?}: want {want:?} in {line}"
        );
    }
}

/// The member join flow end to end with real processes: a member token from the running
/// cluster, `twill controller --join --join-token … --ca-hash …`, then `members add`; the new
/// member serves reads with a certificate it never saw the CA key for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_a_running_controller_with_a_member_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p1, p2) = (free_port().expect("port"), free_port().expect("port"));
    let mut a = spawn(&dir.path().join("a"), p1, &[]);
    wait_ready(&a).await;
    let admin = client(&a);
    admin
        .acquire(pb::AcquireRequest {
            node: "n1".into(),
            public_ip: "192.0.2.1".into(),
            ..Default::default()
        })
        .await
        .expect("acquire");
    let t = admin
        .create_token(pb::CreateTokenRequest {
            member: true,
            bound_to: "2".into(),
            uses: 1,
            ..Default::default()
        })
        .await
        .expect("member token");
    let b_dir = dir.path().join("b");
    let mut b = spawn(
        &b_dir,
        p2,
        &[
            "--id",
            "2",
            "--join",
            "--join-token",
            &t.token,
            "--ca-hash",
            &t.ca_hash,
            "--controller",
            &a.url,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b_dir.join("tls").join("member.pem").exists() {
        assert!(
            Instant::now() < deadline,
            "the new member got no certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !b_dir.join("tls").join("ca.pem").exists(),
        "a joined member has the CA key from the replicated state only"
    );
    let r = admin.add_member(2, &b.url).await.expect("members add");
    assert!(
        r.members.iter().any(|m| m.id == 2 && m.voter),
        "{:?}",
        r.members
    );
    let via_b = Client::with_options(
        [b.url.as_str()],
        ClientOptions {
            retry_for: Duration::from_secs(20),
            tls: admin_tls(&a.data),
            ..Default::default()
        },
    )
    .expect("client");
    let leases = via_b
        .list_leases()
        .await
        .expect("a read through the new member");
    assert!(leases.leases.iter().any(|l| l.node == "n1"));
    let e = twill_client::certs::join(
        &[b.url.clone()],
        &t.token,
        &t.ca_hash,
        &twill_client::certs::JoinAs {
            name: "2".into(),
            member: true,
            hosts: Vec::new(),
        },
    )
    .await
    .expect_err("the token was for one use");
    assert!(e.to_string().contains("used up"), "{e}");
    let _ = b.child.kill();
    let _ = a.child.kill();
    let _ = b.child.wait();
    let _ = a.child.wait();
}

/// An operator command whose every endpoint refuses the connection says so after one round, with
/// the endpoints and what to do, instead of retrying for seconds against closed ports.
#[test]
fn a_cli_with_no_controller_listening_says_so_at_once() {
    let bin = twill_binary().expect("twill binary");
    // Two ports that were free a moment ago: nothing listens there.
    let closed: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("http://{}", l.local_addr().expect("addr"))
        })
        .collect();
    // Runs `twill CMD --controller <the closed ports>`: whether it succeeded, and its stderr.
    let against_closed = |cmd: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(cmd)
            .args(["--controller", &closed.join(",")])
            .output()
            .expect("run twill");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for cmd in [&["status"][..], &["leases"][..]] {
        let (ok, stderr) = against_closed(cmd);
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "no controller answers at {} (connection refused)",
                closed.join(", ")
            )) && stderr.contains("start one with `twill controller` or pass --controller"),
            "{cmd:?}: {stderr}"
        );
        assert!(
            !stderr.contains("unavailable after"),
            "it retried: {stderr}"
        );
    }
    // Bad input is refused before any call: the message is about the input, not the endpoint.
    for (cmd, says) in [
        (&["reserve", "Bad_Name", "10.0.7.0/24"][..], "uppercase"),
        (&["reserve", "n1", "10.0.7.1/24"][..], "host bits set"),
        (&["reserve", "n1", "10.0.7.0/99"][..], "not an IPv4 subnet"),
        (&["release", "n1-"][..], "node name"),
        (&["unreserve", "n1..x"][..], "node name"),
        (&["leases", "--explain", "N1"][..], "uppercase"),
        (&["members", "remove", "0"][..], "0 is not in 1.."),
        (
            &["members", "add", "4", "10.0.0.4:7420"][..],
            "starts with http",
        ),
    ] {
        let (ok, stderr) = against_closed(cmd);
        assert!(!ok, "{cmd:?}: {stderr}");
        assert!(
            stderr.contains(says) && !stderr.contains("no controller answers"),
            "{cmd:?}: {stderr}"
        );
    }
}

/// `twill leases --explain NODE` against a running controller: a lease taken as the lowest
/// free and renewed, one given by a reservation; an unknown node and a malformed name (refused
/// before any call: the endpoint given is closed) exit 1 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_explain_says_why_each_node_has_its_subnet() {
    let dir = tempfile::tempdir().expect("dir");
    let mut ctl = spawn(dir.path(), free_port().expect("port"), &[]);
    wait_ready(&ctl).await;
    let c = client(&ctl);
    let acq = |node: &str, ip: &str| pb::AcquireRequest {
        node: node.into(),
        public_ip: ip.into(),
        ..Default::default()
    };
    let n1 = c
        .acquire(acq("n1", "192.0.2.1"))
        .await
        .expect("n1")
        .lease
        .expect("lease");
    c.renew("n1", n1.create_revision).await.expect("renew n1");
    c.reserve("n2", "10.0.200.0/24").await.expect("reserve");
    c.acquire(acq("n2", "192.0.2.2")).await.expect("n2");

    let bin = twill_binary().expect("twill binary");
    let run = |args: &[&str], controller: &str| {
        std::process::Command::new(&bin)
            .args(["leases", "--explain"])
            .args(args)
            .args(["--controller", controller])
            .arg("--credentials")
            .arg(dir.path().join("admin.pem"))
            .output()
            .expect("run twill")
    };
    let out = run(&["n1"], &ctl.url);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for says in [
        "lease          10.0.1.0/24 at public IP 192.0.2.1",
        "the lowest free subnet of the pool",
        "granted under the current one, set at revision 1",
        "last renewed",
        "reservation    none",
    ] {
        assert!(text.contains(says), "{says:?} missing:\n{text}");
    }
    let out = run(&["n2", "--json"], &ctl.url);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["lease"]["subnet"], "10.0.200.0/24");
    assert_eq!(v["lease"]["reason"], "reserved");
    assert_eq!(v["reservation"], "10.0.200.0/24");
    assert_eq!(v["config_revision"], 1);

    let out = run(&["ghost"], &ctl.url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("node ghost holds no lease"), "{err}");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let out = run(&["Not_A_Node"], &closed);
    let err = String::from_utf8_lossy(&out.stderr);
    // Refused while the command line is read: a usage error.
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"Not_A_Node\"") && !err.contains("no controller answers"),
        "{err}"
    );
    let _ = sigterm(&mut ctl);
}

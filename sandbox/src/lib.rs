//! A sandbox cluster: node namespaces on an underlay bridge (192.0.2.0/24), a controller and one
//! agent per node running inside them as real processes, and pods made through `twill-cni`.
//! Used by `twill sandbox` and by the namespace tests. Everything lives in namespaces created
//! here and removed on drop; nothing is connected to the root namespace. With
//! [`Topology::enable_ipv6`] the underlay is dual-stack (2001:db8::N/64) and pods get an address
//! of each family.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Whether this process runs as root (namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when running as root; in CI (CI=true) not being root is a failure, elsewhere the test
/// prints "skipped" and passes.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root, and CI runs as root: failing instead of skipping");
    }
    eprintln!("skipped: {test} needs root (network namespaces)");
    false
}

/// Runs `f` on a new thread inside namespace `ns`, with its own current-thread runtime (a
/// namespace switch affects one thread only, so never a tokio worker).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> Result<T> {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: a valid namespace fd; only this new thread changes namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(f()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// Creates namespace `ns` with `eth0` = 192.0.2.<host>/24, its peer end attached to `br0` in
/// namespace `bridge_ns`.
pub fn attach_to_bridge(ns: &str, host: u8, bridge_ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    let port = format!("p{host}");
    ip(&[
        "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", bridge_ns,
    ])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("192.0.2.{host}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", bridge_ns, "link", "set", &port, "master", "br0"])?;
    ip(&["-n", bridge_ns, "link", "set", &port, "up"])
}

pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn ip_out(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A pod: a namespace given an address on its node's `cni0` by `twill-cni`.
pub struct Pod {
    pub ns: String,
    pub node: usize,
    /// Its IPv4 address.
    pub addr: String,
    /// Its IPv6 address, when the node's subnet.env has an IPv6 subnet.
    pub addr6: Option<String>,
}

pub struct Node {
    pub ns: String,
    pub name: String,
    pub addr: String,
    pub agent: Option<Child>,
    pub dir: PathBuf,
}

/// An underlay bridge namespace, a controller namespace and `n` node namespaces.
pub struct Topology {
    pub tag: String,
    pub underlay: String,
    pub ctl_ns: String,
    pub controller: Option<Child>,
    pub nodes: Vec<Node>,
    /// Data directories of the controller and the agents.
    pub dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
    pub pods: Vec<Pod>,
    /// `--resync` given to the agents.
    pub agent_resync: String,
    /// Extra flags for every agent.
    pub agent_extra: Vec<String>,
    /// Agents started while set write their log (at info) to `agent.log` in their node's
    /// directory, appended across restarts, instead of the test's output.
    pub agent_logs: bool,
    bin: PathBuf,
    /// The join token and CA hash agents join with, made at the first agent's start.
    join: Option<(String, String)>,
    /// A CA the controller starts with (`--ca`) instead of making its own.
    pub ca_file: Option<PathBuf>,
    /// Set by [`Topology::enable_ipv6`]: nodes have underlay IPv6 addresses, and nodes and pods
    /// skip duplicate address detection.
    pub dual_stack: bool,
}

pub const CONTROLLER_ADDR: &str = "192.0.2.100";

/// Node `i`'s (0-based) underlay IPv6 address and prefix length, once [`Topology::enable_ipv6`]
/// has run.
pub fn node_ipv6(i: usize) -> String {
    format!("2001:db8::{}/64", i + 1)
}

/// Turns duplicate address detection off in namespace `ns`, for its existing interfaces and the
/// ones made later, so IPv6 addresses are usable as soon as they are added.
fn no_dad(ns: &str) -> Result<()> {
    for scope in ["all", "default"] {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
            .arg(format!("net.ipv6.conf.{scope}.accept_dad=0"))
            .output()
            .context("run sysctl")?;
        if !out.status.success() {
            bail!(
                "{ns}: accept_dad=0: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

impl Topology {
    /// Runs `bin` for every controller and agent started from now on (an upgrade).
    pub fn set_binary(&mut self, bin: &Path) {
        self.bin = bin.to_path_buf();
    }

    pub fn new(tag: &str, n: usize, bin: &Path) -> Result<Topology> {
        Topology::new_reporting(tag, n, bin, |_| {})
    }

    /// [`Topology::new`], calling `made(k)` once the k-th node namespace is on the underlay.
    pub fn new_reporting(
        tag: &str,
        n: usize,
        bin: &Path,
        mut made: impl FnMut(usize),
    ) -> Result<Topology> {
        let id = std::process::id();
        let tmp = tempfile::tempdir()?;
        let t = Topology {
            tag: format!("{tag}{id}"),
            underlay: format!("tw-ul-{tag}{id}"),
            ctl_ns: format!("tw-ctl-{tag}{id}"),
            controller: None,
            nodes: Vec::new(),
            dir: tmp.path().to_path_buf(),
            tmp: Some(tmp),
            pods: Vec::new(),
            agent_resync: "500ms".into(),
            agent_extra: Vec::new(),
            agent_logs: false,
            bin: bin.to_path_buf(),
            join: None,
            ca_file: None,
            dual_stack: false,
        };
        let mut t = t;
        ip(&["netns", "add", &t.underlay])?;
        ip(&["-n", &t.underlay, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &t.underlay, "link", "set", "br0", "up"])?;
        let ctl = t.ctl_ns.clone();
        t.attach(&ctl, 100)?;
        for i in 1..=n {
            let ns = format!("tw-n{i}-{}", t.tag);
            t.attach(&ns, i as u8)?;
            let dir = t.dir.join(format!("node{i}"));
            std::fs::create_dir_all(&dir)?;
            t.nodes.push(Node {
                ns,
                name: format!("node{i}"),
                addr: format!("192.0.2.{i}"),
                agent: None,
                dir,
            });
            made(i);
        }
        Ok(t)
    }

    /// Makes the topology dual-stack; call it before the agents start (they pick their IPv6
    /// address at start). Each node's `eth0` gets [`node_ipv6`] without duplicate address
    /// detection, DAD is off in the nodes (for `cni0`) and in pods made later, and
    /// [`Topology::wait_subnet`] also waits for the node's IPv6 subnet. The controller still
    /// needs `--ipv6-network` among its flags.
    pub fn enable_ipv6(&mut self) -> Result<()> {
        for (i, n) in self.nodes.iter().enumerate() {
            no_dad(&n.ns)?;
            ip(&[
                "-n",
                &n.ns,
                "addr",
                "add",
                &node_ipv6(i),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        self.dual_stack = true;
        Ok(())
    }

    /// A namespace with `eth0` = 192.0.2.<host>/24 on the underlay bridge.
    fn attach(&mut self, ns: &str, host: u8) -> Result<()> {
        attach_to_bridge(ns, host, &self.underlay)
    }

    pub fn controller_url(&self) -> String {
        format!("https://{CONTROLLER_ADDR}:7420")
    }

    /// The admin credential the controller writes at its first start.
    pub fn admin_credentials(&self) -> PathBuf {
        self.dir.join("controller").join("admin.pem")
    }

    /// A join token for the agents (any number of uses, a day long) and the CA's hash, made
    /// once with the admin credential, as an operator would with `twill token create`.
    pub fn join_token(&mut self) -> Result<(String, String)> {
        if let Some(j) = &self.join {
            return Ok(j.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let out = loop {
            match self.twill(&["token", "create", "--json"]) {
                Ok(out) => break out,
                Err(e) if Instant::now() > deadline => return Err(e.context("create a join token")),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("token create printed {out:?}"))?;
        let (Some(token), Some(hash)) = (v["token"].as_str(), v["ca_hash"].as_str()) else {
            bail!("token create printed {out:?}");
        };
        let j = (token.to_string(), hash.to_string());
        self.join = Some(j.clone());
        Ok(j)
    }

    /// Starts the controller with extra flags (e.g. the backend).
    pub fn start_controller(&mut self, extra: &[&str]) -> Result<()> {
        let data = self.dir.join("controller");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ctl_ns])
            .arg(&self.bin)
            .args([
                "controller",
                "--listen",
                &format!("{CONTROLLER_ADDR}:7420"),
                "--data-dir",
            ])
            .arg(&data)
            .args(extra)
            .args(
                self.ca_file
                    .iter()
                    .flat_map(|f| [std::ffi::OsStr::new("--ca"), f.as_os_str()]),
            )
            .env("TWILL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("start controller")?;
        self.controller = Some(child);
        Ok(())
    }

    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let (token, hash) = self.join_token()?;
        let url = self.controller_url();
        let bin = self.bin.clone();
        let resync = self.agent_resync.clone();
        let n = &mut self.nodes[i];
        let (level, stderr) = if self.agent_logs {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(n.dir.join("agent.log"))
                .context("agent.log")?;
            ("info", Stdio::from(log))
        } else {
            ("warn", Stdio::inherit())
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &n.ns])
            .arg(&bin)
            .args([
                "agent",
                "--controller",
                &url,
                "--node-name",
                &n.name,
                "--iface",
                "eth0",
                "--resync",
                &resync,
            ])
            .arg("--state-dir")
            .arg(n.dir.join("state"))
            .arg("--subnet-file")
            .arg(n.dir.join("subnet.env"))
            .args(["--join-token", &token, "--ca-hash", &hash])
            .args(&self.agent_extra)
            .env("TWILL_LOG", level)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("start agent")?;
        n.agent = Some(child);
        Ok(())
    }

    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs an agent in node `i` to completion (for inputs it must refuse), with a time limit.
    pub fn agent_once(&mut self, i: usize, args: &[&str]) -> Result<std::process::Output> {
        let (token, hash) = self.join_token()?;
        let n = &self.nodes[i];
        let mut child = Command::new("ip")
            .args(["netns", "exec", &n.ns])
            .arg(&self.bin)
            .args([
                "agent",
                "--controller",
                &self.controller_url(),
                "--node-name",
                &n.name,
            ])
            .args(args)
            .arg("--state-dir")
            .arg(n.dir.join("state"))
            .arg("--subnet-file")
            .arg(n.dir.join("subnet.env"))
            .args(["--join-token", &token, "--ca-hash", &hash])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("agent with {args:?} kept running instead of failing");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child.wait_with_output()?)
    }

    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops node `i`'s agent as systemd and the kubelet do: SIGTERM, then waits for it.
    pub fn term_agent(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.nodes[i].agent.take() {
            let sent = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()?;
            if !sent.success() {
                let _ = c.kill();
                let _ = c.wait();
                bail!("kill -TERM {} failed", c.id());
            }
            c.wait()?;
        }
        Ok(())
    }

    /// Runs `twill <args> --controller URL` inside the controller namespace.
    pub fn twill(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ctl_ns])
            .arg(&self.bin)
            .args(args)
            .args(["--controller", &self.controller_url()])
            .arg("--credentials")
            .arg(self.admin_credentials())
            .output()?;
        if !out.status.success() {
            bail!(
                "twill {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the controller with `flags` and every node's agent, waits for each node's
    /// subnet.env and gives each node a bare pod bridge on its subnet's gateway address; returns
    /// the nodes' FLANNEL_SUBNETs.
    pub fn start_nodes_with_pod_bridges(&mut self, flags: &[&str]) -> Result<Vec<String>> {
        self.start_controller(flags)?;
        for i in 0..self.nodes.len() {
            self.start_agent(i)?;
        }
        let mut subnets = Vec::new();
        for i in 0..self.nodes.len() {
            let s = self.wait_subnet(i, Duration::from_secs(30))?;
            self.add_pod_bridge(i, &s)?;
            subnets.push(s);
        }
        Ok(subnets)
    }

    /// The node's FLANNEL_SUBNET (pod gateway address/len) once subnet.env exists (and, when
    /// dual-stack, has FLANNEL_IPV6_SUBNET too).
    pub fn wait_subnet(&self, i: usize, within: Duration) -> Result<String> {
        let path = self.nodes[i].dir.join("subnet.env");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(s) = std::fs::read_to_string(&path) {
                let key = |k: &str| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(str::to_string)
                };
                if let Some(v) = key("FLANNEL_SUBNET=") {
                    if !self.dual_stack || key("FLANNEL_IPV6_SUBNET=").is_some() {
                        return Ok(v);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("{}: no subnet.env within {within:?}", self.nodes[i].name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A pod bridge with the gateway address, as the CNI bridge plugin makes it.
    pub fn add_pod_bridge(&self, i: usize, gw: &str) -> Result<()> {
        let ns = &self.nodes[i].ns;
        ip(&["-n", ns, "link", "add", "cni0", "type", "bridge"])?;
        ip(&["-n", ns, "addr", "add", gw, "dev", "cni0"])?;
        ip(&["-n", ns, "link", "set", "cni0", "up"])
    }

    pub fn ping(&self, i: usize, from: &str, to: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.nodes[i].ns,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                from,
                to,
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Creates pod `k` on node `i` through `twill-cni` (delegating to the reference plugins in
    /// `cni_path`), the way a container runtime would.
    pub fn add_pod(&mut self, i: usize, k: usize, cni: &Path, cni_path: &str) -> Result<()> {
        let node = &self.nodes[i];
        let ns = format!("tw-p{}-{k}-{}", i + 1, self.tag);
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        if self.dual_stack {
            // The bridge plugin adds the pod's IPv6 address; without DAD it works at once. (The
            // plugin turns DAD off on the pod's interface itself, but only with hairpinMode,
            // which a delegate override may drop.)
            no_dad(&ns)?;
        }
        // The IPAM twill-cni would use, with its state kept in the sandbox instead of
        // /var/lib/cni, so nothing is left behind.
        let env = std::fs::read_to_string(node.dir.join("subnet.env"))?;
        let subnet = twill_agent::cni::parse_subnet_env(&env)
            .map_err(|e| anyhow::anyhow!("subnet.env: {}", e.msg))?;
        let mut ipam =
            twill_agent::cni::delegate_config(&serde_json::json!({}), &subnet)["ipam"].clone();
        ipam["dataDir"] = serde_json::json!(node.dir.join("ipam"));
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("twill-sandbox-{}", self.tag),
            "type": "twill-cni",
            "subnetFile": node.dir.join("subnet.env"),
            "dataDir": node.dir.join("cni"),
            "delegate": {"ipam": ipam},
        });
        let dirs = format!(
            "{cni_path}:{}",
            cni.parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(cni)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &ns)
            .env("CNI_NETNS", format!("/var/run/netns/{ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", dirs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run twill-cni")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(conf.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if !out.status.success() {
            bail!("twill-cni ADD for {ns}: {result}");
        }
        // One address per range set, IPv4 first; pick each family by its form.
        let addrs: Vec<&str> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next())
            .collect();
        let addr = addrs
            .iter()
            .find(|a| !a.contains(':'))
            .context("twill-cni returned no IPv4 address")?
            .to_string();
        let addr6 = addrs
            .iter()
            .find(|a| a.contains(':'))
            .map(|a| a.to_string());
        if self.dual_stack && addr6.is_none() {
            bail!("twill-cni returned no IPv6 address for {ns}: {result}");
        }
        self.pods.push(Pod {
            ns,
            node: i,
            addr,
            addr6,
        });
        Ok(())
    }

    /// Whether pod `a` reaches pod `b` over IPv4 (one ping, one second).
    pub fn pod_ping(&self, a: usize, b: usize) -> bool {
        self.ping_from_pod(a, "-4", &self.pods[b].addr)
    }

    /// Whether pod `a` reaches pod `b` over IPv6 (one ping, one second); false when either has
    /// no IPv6 address.
    pub fn pod_ping6(&self, a: usize, b: usize) -> bool {
        self.pods[a].addr6.is_some()
            && self.pods[b]
                .addr6
                .as_deref()
                .is_some_and(|to| self.ping_from_pod(a, "-6", to))
    }

    fn ping_from_pod(&self, a: usize, family: &str, to: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.pods[a].ns,
                "ping",
                family,
                "-c",
                "1",
                "-W",
                "1",
                to,
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Leaves the namespaces in place (for `twill sandbox --keep`): nothing is stopped or removed.
    pub fn keep(mut self) -> Vec<String> {
        let mut names: Vec<String> = self.nodes.iter().map(|n| n.ns.clone()).collect();
        names.extend(self.pods.iter().map(|p| p.ns.clone()));
        names.push(self.ctl_ns.clone());
        names.push(self.underlay.clone());
        for n in &mut self.nodes {
            n.agent = None;
        }
        self.controller = None;
        self.nodes.clear();
        self.pods.clear();
        self.underlay.clear();
        self.ctl_ns.clear();
        if let Some(t) = self.tmp.take() {
            let _ = t.keep();
        }
        names
    }

    /// twill's routes in a node, as iproute2 prints them.
    pub fn routes(&self, i: usize) -> Vec<String> {
        ip_out(&["-n", &self.nodes[i].ns, "route", "show", "proto", "151"])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_agent(i);
        }
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", &p.ns]).status();
        }
        for n in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &n.ns]).status();
        }
        for ns in [&self.ctl_ns, &self.underlay] {
            if !ns.is_empty() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

//! `twill agent`: the node agent.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use twill_agent::agent::{self, Options};
use twill_agent::facts::{self, Choice};

use crate::network_flags::parse_duration;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Controller endpoint(s), any members (repeat or separate with commas)
    #[arg(
        long = "controller",
        value_name = "URL",
        env = "TWILL_CONTROLLER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7420"
    )]
    controllers: Vec<String>,
    /// This node's name in the lease table: a Kubernetes node name (lower-case DNS-1123
    /// subdomain, at most 253 bytes) [default: the hostname, lower-cased]
    #[arg(long, env = "TWILL_NODE_NAME")]
    node_name: Option<String>,
    /// Interface for node-to-node traffic, by name or by one of its IPv4 addresses (then that
    /// address is used); repeat to give fallbacks: the first one that exists with an IPv4
    /// address wins, in the order given. Tried before --iface-regex and --iface-can-reach;
    /// with none of the three, the interface holding --public-ip, else the one of the default
    /// route. Re-checked when addresses change: the node follows a changed address. The chosen
    /// interface's first global IPv6 address, if any, is the node's IPv6 address (dual stack)
    #[arg(long, value_name = "NAME|ADDR", value_parser = facts::parse_iface)]
    iface: Vec<String>,
    /// A regular expression (unanchored) for the interface: matched against every interface's
    /// IPv4 addresses first (that address is used), then against interface names (lo and
    /// twill's own devices never); repeat to give fallbacks, tried in order after --iface
    #[arg(long, value_name = "REGEX", value_parser = facts::parse_regex)]
    iface_regex: Vec<String>,
    /// The interface and source address the kernel would use to reach ADDR (as `ip route get
    /// ADDR` shows them), e.g. another node's or the controller's address; tried after --iface
    /// and --iface-regex
    #[arg(long, value_name = "ADDR", value_parser = facts::parse_host)]
    iface_can_reach: Option<Ipv4Addr>,
    /// The address other nodes reach this node at, published in its lease; on a NAT'd host it
    /// may be on no local interface (the chosen interface's own address stays the local one),
    /// but an address of another local interface than the chosen one is refused
    /// [default: the chosen interface's address]
    #[arg(long, value_name = "ADDR", value_parser = facts::parse_host)]
    public_ip: Option<Ipv4Addr>,
    /// Before starting, install the CNI plugin and its configuration as `twill install-cni`
    /// does (with this agent's --subnet-file and the --cni-… places)
    #[arg(long)]
    install_cni: bool,
    #[command(flatten)]
    cni: crate::install_cni_cmd::CniPlaces,
    /// Where the agent remembers its subnet, its instance id and its certificate across
    /// restarts. Copying it to another machine makes that machine this node to the controller
    #[arg(long, value_name = "DIR", default_value = "/var/lib/twill/agent")]
    state_dir: PathBuf,
    /// A join token from `twill token create`: used once, when the node has no certificate
    /// yet, to get one for its name (kept in the state directory as node.pem and renewed
    /// before it expires)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TWILL_JOIN_TOKEN",
        requires = "ca_hash"
    )]
    join_token: Option<String>,
    /// With --join-token: the cluster CA's hash that `twill token create` printed
    /// (sha256:…); the controller must prove it belongs to that CA before the token is sent
    #[arg(long, value_name = "HASH")]
    ca_hash: Option<String>,
    /// Talk plaintext gRPC to a controller run with --insecure (no certificate, no checks)
    #[arg(long, conflicts_with = "join_token")]
    insecure: bool,
    /// Remove what twill programmed on this node and exit: its VXLAN devices (with their
    /// neighbours and FDB entries), its routes (protocol 151) and rules in every table, the
    /// masquerade table and its rules in FORWARD chains. Nothing else is touched (forwarding
    /// and accept_ra stay as they are); the lease is left to expire (or `twill release NODE`),
    /// subnet.env stays
    #[arg(long)]
    cleanup: bool,
    /// flannel-compatible subnet file for CNI
    #[arg(long, value_name = "FILE", default_value = "/run/flannel/subnet.env")]
    subnet_file: PathBuf,
    /// Serve /healthz, /readyz and /metrics here (e.g. 127.0.0.1:9421); off when not given
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// How often the kernel state is re-read and repaired
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    resync: Duration,
    /// How often this node's health summary (readiness, last reconcile, BGP sessions) is sent
    /// to the controller for `twill status`; a change is sent within a second. The controller
    /// calls a node stale after three missed reports (0.1s to 1h)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    health_interval: Duration,
    /// Masquerade pods' traffic to destinations outside the cluster network with the node's
    /// address (nftables table `inet twill`, needs the nft tool); pod-to-pod traffic is never
    /// NAT'd. Also sets FLANNEL_IPMASQ in subnet.env. --ip-masq=false turns it off
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    ip_masq: bool,
    /// As IFACE=TABLE or ADDRESS=TABLE: keep a per-source routing table for that address of a
    /// multi-homed node: the rule `from ADDRESS lookup TABLE` (priority 32000), the address's
    /// connected route, a default route via the interface's gateway (from the main table's
    /// default route through it) and the pod routes; repeat for each. Tables that rules made by
    /// others point to (`ip rule add from ADDRESS lookup TABLE`) get the pod routes without it.
    /// Only twill's routes (proto 151) and rules are ever changed in any table
    #[arg(long = "source-table", value_name = "IFACE=TABLE")]
    source_tables: Vec<twill_agent::source_tables::TableSpec>,
    /// With bgp: the most prefixes an outside peer (--bgp-peer) may announce, taken or
    /// refused; over it the session is closed (Cease/1, RFC 4486) and tried again after a
    /// back-off of 30 s, doubling up to 15 min; 0 for no limit
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    bgp_max_prefixes: u32,
    /// With bgp: as ADDR=N, the prefix limit of the outside peer ADDR instead of
    /// --bgp-max-prefixes (0 for none); repeat for each
    #[arg(long = "bgp-peer-max-prefixes", value_name = "ADDR=N", value_parser = parse_peer_limit)]
    bgp_peer_max_prefixes: Vec<(std::net::IpAddr, u32)>,
    /// With bgp: a range to announce to the outside peers from this node, such as the
    /// service cluster IP range or load-balancer IPs (Calico's serviceClusterIPs); the routers
    /// see it from every node that announces it; repeat for each
    #[arg(long = "bgp-advertise", value_name = "CIDR")]
    bgp_advertise: Vec<ipnet::Ipv4Net>,
    /// With bgp: a directly connected peer whose session uses GTSM (RFC 5082, BIRD's "ttl
    /// security", FRR's "ttl-security hops 1"): sent with TTL 255, and packets from it with
    /// less than 254 dropped; repeat for each
    #[arg(long = "bgp-ttl-security", value_name = "ADDR")]
    bgp_ttl_security: Vec<std::net::IpAddr>,
    /// With bgp: as ADDR=CIDR, routes this node learned from other peers that fall inside CIDR
    /// are sent to the outside peer ADDR as well (e.g. the whole pod network, as Calico's
    /// IP-pool export does); without it an outside peer gets this node's own prefixes only;
    /// repeat for each
    #[arg(long = "bgp-export", value_name = "ADDR=CIDR", value_parser = parse_export)]
    bgp_export: Vec<(std::net::IpAddr, ipnet::Ipv4Net)>,
}

fn parse_peer_limit(s: &str) -> Result<(std::net::IpAddr, u32), String> {
    let (addr, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ADDR=N, e.g. 192.0.2.254=50000"))?;
    let addr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let n = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a number of prefixes"))?;
    Ok((addr, n))
}

fn parse_export(s: &str) -> Result<(std::net::IpAddr, ipnet::Ipv4Net), String> {
    let (addr, range) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ADDR=CIDR, e.g. 192.0.2.254=10.244.0.0/16"))?;
    let addr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let range: ipnet::Ipv4Net = range
        .trim()
        .parse()
        .map_err(|_| format!("{range:?} is not an IPv4 CIDR like 10.244.0.0/16"))?;
    Ok((addr, range.trunc()))
}

/// The host's name as kubelet makes a node name of it: lower-cased (Kubernetes node names are
/// DNS-1123 subdomains), so a host called `Worker-1` is node `worker-1` here as there.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

pub async fn run(a: AgentArgs) -> Result<()> {
    if a.cleanup {
        let removed = agent::cleanup().await?;
        println!("removed {removed} kernel objects of twill's and its masquerade table, if any");
        return Ok(());
    }
    if a.install_cni {
        crate::install_cni_cmd::install(&a.cni, a.subnet_file.clone(), None)?;
    }
    let tls = if a.insecure {
        agent::Tls::Off
    } else {
        agent::Tls::On {
            file: a.state_dir.join("node.pem"),
            join: a.join_token.zip(a.ca_hash),
        }
    };
    let opts = Options {
        tls,
        controllers: a.controllers,
        node_name: a.node_name.unwrap_or_else(hostname),
        choice: Choice {
            iface: a.iface,
            iface_regex: a.iface_regex,
            can_reach: a.iface_can_reach,
            public_ip: a.public_ip,
        },
        state_dir: a.state_dir,
        subnet_file: a.subnet_file,
        metrics_addr: a.metrics_addr,
        resync: a.resync.max(Duration::from_millis(100)),
        health_interval: a
            .health_interval
            .clamp(Duration::from_millis(100), Duration::from_secs(3600)),
        ip_masq: a.ip_masq,
        bgp: twill_agent::bgp::Local {
            max_prefixes: (a.bgp_max_prefixes > 0).then_some(a.bgp_max_prefixes),
            max_prefixes_for: a.bgp_peer_max_prefixes,
            advertise: a.bgp_advertise.iter().map(|n| n.trunc()).collect(),
            gtsm: a.bgp_ttl_security,
            export: a.bgp_export,
        },
        source_tables: a.source_tables,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = agent::run(opts) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping (the dataplane stays as it is)"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping (the dataplane stays as it is)"),
    }
    Ok(())
}

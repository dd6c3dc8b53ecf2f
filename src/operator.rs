//! The operator's commands against a running cluster: tables for people, `--json` for scripts.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use twill_client::{Client, ClientOptions};
use twill_controller::now_ms;
use twill_controller::picture::{MemberBox, Picture};
use twill_proto::v1 as pb;

use crate::network_flags::{format_duration, NetworkFlags};

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Controller endpoint(s); any member will do, the client finds the leader
    /// (repeat or separate with commas)
    #[arg(
        long = "controller",
        global = true,
        value_name = "URL",
        env = "TWILL_CONTROLLER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7420"
    )]
    pub endpoints: Vec<String>,
    /// Print JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
    /// Certificate, key and CA to call the controller with [default: the admin credential a
    /// controller on this machine wrote, DATA_DIR/admin.pem]
    #[arg(long, global = true, value_name = "FILE", env = "TWILL_CREDENTIALS")]
    pub credentials: Option<std::path::PathBuf>,
}

impl Target {
    /// TLS settings from the credentials, or none (a cluster run with --insecure).
    pub fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>> {
        Ok(crate::credentials::cli(self.credentials.as_deref())?.map(|c| c.client_tls()))
    }

    pub fn client(&self) -> Result<Client> {
        let opts = ClientOptions {
            retry_for: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(5),
            tls: self.tls()?,
            fail_when_none_listens: true,
            ..Default::default()
        };
        Ok(Client::with_options(&self.endpoints, opts)?)
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a join token and print it with the command a node joins with
    Create {
        /// How long it is good for, e.g. 1h, 30m, 7d
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::network_flags::parse_duration)]
        ttl: Duration,
        /// Only this node (or, with --member, this member id) may join with it
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// How many joins it allows [default: any number until it expires]
        #[arg(long, value_name = "N")]
        uses: Option<u32>,
        /// A token for a new controller member instead of a node
        #[arg(long)]
        member: bool,
    },
    /// List the tokens (never their secrets)
    List,
    /// Revoke a token by its id (the part before the dot)
    Revoke { id: String },
    /// Revoke every certificate a node holds now (its renewals stop too); the node can join
    /// again only with a new token
    RevokeNode { node: String },
}

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Create a CA (certificate and key, 0600) for a cluster formed with --peer; pass it to
    /// every founding member with --ca
    Create {
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Print the hash of a CA (or of the CA in a credentials file) for --ca-hash
    Hash { file: std::path::PathBuf },
}

pub fn ca(cmd: CaCmd) -> Result<()> {
    match cmd {
        CaCmd::Create { out } => {
            if out.exists() {
                bail!("{} exists; refusing to replace a CA", out.display());
            }
            let ca = twill_pki::Ca::generate("cluster")?;
            ca.save(&out)?;
            println!("CA written to {} (keep it secret)", out.display());
            println!("hash: {}", ca.hash()?);
        }
        CaCmd::Hash { file } => {
            let hash = match twill_pki::Ca::load(&file) {
                Ok(ca) => ca.hash()?,
                Err(_) => twill_pki::Credentials::load(&file)?.ca_hash()?,
            };
            println!("{hash}");
        }
    }
    Ok(())
}

pub async fn token(t: &Target, cmd: TokenCmd) -> Result<()> {
    let client = t.client()?;
    match cmd {
        TokenCmd::Create {
            ttl,
            node,
            uses,
            member,
        } => {
            let r = client
                .create_token(pb::CreateTokenRequest {
                    request_id: String::new(),
                    ttl_ms: ttl.as_millis() as u64,
                    bound_to: node.clone().unwrap_or_default(),
                    uses: uses.unwrap_or(0),
                    member,
                })
                .await
                .context("create token")?;
            if t.json {
                println!(
                    "{}",
                    json!({"token": r.token, "ca_hash": r.ca_hash, "expires_at_ms": r.expires_at_ms})
                );
                return Ok(());
            }
            // The URLs as a node dials them: TLS, so https.
            let endpoints = t
                .endpoints
                .iter()
                .map(|e| e.replacen("http://", "https://", 1))
                .collect::<Vec<_>>()
                .join(",");
            println!("token:   {}", r.token);
            println!("ca hash: {}", r.ca_hash);
            println!("expires: in {}", format_duration(ttl));
            if member {
                println!("\nstart the new member with:\n  twill controller --id ID --join --join-token {} --ca-hash {} --controller {endpoints} --advertise https://HOST:7420", r.token, r.ca_hash);
                println!("then add it:\n  twill members add ID https://HOST:7420");
            } else {
                println!(
                    "\njoin a node with:\n  twill agent --node-name {} --controller {endpoints} --join-token {} --ca-hash {}",
                    node.as_deref().unwrap_or("NODE"),
                    r.token,
                    r.ca_hash
                );
            }
        }
        TokenCmd::List => {
            let r = client.list_tokens().await.context("list tokens")?;
            let now = now_ms();
            if t.json {
                let v: Vec<Value> = r
                    .tokens
                    .iter()
                    .map(|x| {
                        json!({"id": x.id, "kind": x.kind, "bound_to": x.bound_to,
                        "uses_left": x.limited.then_some(x.uses_left), "used": x.used,
                        "created_at_ms": x.created_at_ms, "expires_at_ms": x.expires_at_ms,
                        "revoked": x.revoked})
                    })
                    .collect();
                println!("{}", Value::Array(v));
                return Ok(());
            }
            let rows = r
                .tokens
                .iter()
                .map(|x| {
                    let state = if x.revoked {
                        "revoked".to_string()
                    } else if x.expires_at_ms <= now {
                        "expired".to_string()
                    } else if x.limited && x.uses_left == 0 {
                        "used up".to_string()
                    } else {
                        format!(
                            "expires in {}",
                            format_duration(Duration::from_secs((x.expires_at_ms - now) / 1000))
                        )
                    };
                    vec![
                        x.id.clone(),
                        x.kind.clone(),
                        text(&x.bound_to),
                        if x.limited {
                            x.uses_left.to_string()
                        } else {
                            "any".into()
                        },
                        x.used.to_string(),
                        state,
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["ID", "KIND", "FOR", "USES LEFT", "USED", "STATE"], rows)
            );
        }
        TokenCmd::RevokeNode { node } => {
            client.revoke_node(&node).await.context("revoke node")?;
            println!("certificates of node {node} revoked");
        }
        TokenCmd::Revoke { id } => {
            client.revoke_token(&id).await.context("revoke token")?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Show the cluster's network configuration
    Get,
    /// Change the network configuration: flags not given keep their current value. Refused if a
    /// live lease would fall outside the new configuration
    Set(Box<NetworkFlags>),
}

#[derive(Subcommand, Debug)]
pub enum MembersCmd {
    /// List the members, their role and Raft progress
    List,
    /// Add a member started with --join: first as a learner that catches up, then as a voter
    Add {
        /// The new member's --id
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// The new member's --advertise URL
        #[arg(value_parser = parse_url)]
        url: String,
    },
    /// Remove a member from the cluster (stop its process afterwards)
    Remove {
        /// The member's id
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
}

/// A node name as the controller takes it, checked before any call is made.
pub fn parse_node(s: &str) -> Result<String, String> {
    twill_proto::names::validate_node_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// A subnet written as its network address, e.g. 10.244.7.0/24.
pub fn parse_subnet(s: &str) -> Result<String, String> {
    let n: ipnet::Ipv4Net = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 subnet such as 10.244.7.0/24"))?;
    if n.trunc() != n {
        return Err(format!(
            "{s:?} has host bits set; the subnet is {}",
            n.trunc()
        ));
    }
    Ok(n.to_string())
}

fn parse_url(s: &str) -> Result<String, String> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: a member URL starts with http:// or https://"
        ))
    }
}

fn text(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
    out
}

/// Time left until `at_ms`, as people read it ("23h59m", "expired").
fn until(at_ms: u64) -> String {
    let now = now_ms();
    if at_ms <= now {
        return "expired".into();
    }
    span((at_ms - now) / 1000)
}

/// How long ago `at_ms` was, as `span` writes it ("-" for no time or one ahead of this clock).
fn ago(at_ms: u64) -> String {
    let now = now_ms();
    if at_ms == 0 || at_ms > now {
        return "-".into();
    }
    format!("{} ago", span((now - at_ms) / 1000))
}

pub(crate) fn span(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

fn backend_json(b: &Option<pb::Backend>) -> Value {
    match b.as_ref().and_then(|b| b.kind.as_ref()) {
        Some(pb::backend::Kind::Vxlan(v)) => {
            json!({"type": "vxlan", "vni": v.vni, "port": v.port, "direct_routing": v.direct_routing})
        }
        Some(pb::backend::Kind::HostGw(_)) => json!({"type": "host-gw"}),
        Some(pb::backend::Kind::Bgp(b)) => json!({
            "type": "bgp",
            "asn": b.asn,
            "mesh": !b.no_mesh,
            "route_reflectors": b.route_reflectors,
            "cluster_id": b.cluster_id,
            "hold_time": b.hold_time,
            "peers": b.peers.iter().map(|p| json!({
                "address": p.address,
                "asn": p.asn,
                "password": !p.password.is_empty(),
                "node": p.node,
            })).collect::<Vec<_>>(),
            "node_asn": b.node_asn,
            "allowed_prefixes": b.allowed_prefixes,
        }),
        None => Value::Null,
    }
}

fn config_json(c: &pb::NetworkConfig) -> Value {
    json!({
        "network": c.network,
        "subnet_len": c.subnet_len,
        "subnet_min": c.subnet_min,
        "subnet_max": c.subnet_max,
        "ipv6_network": c.ipv6_network,
        "ipv6_subnet_len": c.ipv6_subnet_len,
        "backend": backend_json(&c.backend),
        "lease_ttl_ms": c.lease_ttl_ms,
    })
}

fn config_text(c: &pb::NetworkConfig, revision: u64) -> String {
    let backend = match c.backend.as_ref().and_then(|b| b.kind.as_ref()) {
        Some(pb::backend::Kind::Vxlan(v)) => format!(
            "vxlan (vni {}, port {}{})",
            v.vni,
            v.port,
            if v.direct_routing {
                ", direct routing"
            } else {
                ""
            }
        ),
        Some(pb::backend::Kind::HostGw(_)) => "host-gw".into(),
        Some(pb::backend::Kind::Bgp(b)) => {
            let mut parts = vec![format!("AS {}", b.asn)];
            if !b.route_reflectors.is_empty() {
                parts.push(format!("reflectors {}", b.route_reflectors.join(",")));
            } else if b.no_mesh {
                parts.push("no mesh".into());
            } else {
                parts.push("full mesh".into());
            }
            for p in &b.peers {
                parts.push(format!(
                    "peer {} AS {}{}{}",
                    p.address,
                    p.asn,
                    if p.node.is_empty() {
                        String::new()
                    } else {
                        format!(" from {}", p.node)
                    },
                    if p.password.is_empty() { "" } else { " (MD5)" }
                ));
            }
            format!("bgp ({})", parts.join(", "))
        }
        None => "-".into(),
    };
    let mut rows = vec![
        ("network", c.network.clone()),
        ("subnet length", format!("/{}", c.subnet_len)),
        ("subnet min", text(&c.subnet_min)),
        ("subnet max", text(&c.subnet_max)),
    ];
    if !c.ipv6_network.is_empty() {
        rows.push(("ipv6 network", c.ipv6_network.clone()));
        rows.push(("ipv6 subnet length", format!("/{}", c.ipv6_subnet_len)));
    }
    rows.push(("backend", backend));
    rows.push((
        "lease ttl",
        format_duration(Duration::from_millis(c.lease_ttl_ms)),
    ));
    rows.push(("revision", revision.to_string()));
    rows.iter().map(|(k, v)| format!("{k:<19} {v}\n")).collect()
}

fn lease_json(l: &pb::Lease) -> Value {
    json!({
        "node": l.node,
        "subnet": l.subnet,
        "ipv6_subnet": l.ipv6_subnet,
        "public_ip": l.public_ip,
        "public_ipv6": l.public_ipv6,
        "backend_data": l.backend_data,
        "expires_at_ms": l.expires_at_ms,
        "acquired_at_ms": l.acquired_at_ms,
        "create_revision": l.create_revision,
        "mod_revision": l.mod_revision,
        "reason": l.reason,
    })
}

pub async fn status(t: &Target, graph: bool) -> Result<()> {
    let client = t.client()?;
    let first = client.status().await.context("controller status")?;
    // Ask every member for its own view, so a lagging or unreachable one shows.
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut boxes = Vec::new();
    for m in &first.members {
        let answer = Client::status_of(&m.addr, t.tls()?).await;
        boxes.push(MemberBox {
            id: m.id,
            addr: m.addr.clone(),
            state: match &answer {
                Ok(s) if m.voter => s.state.clone(),
                Ok(s) => format!("{} (learner)", s.state),
                Err(_) => "unreachable".into(),
            },
            leader: m.id == first.leader,
        });
        match answer {
            Ok(s) => {
                out.push(json!({
                    "id": s.id, "addr": m.addr, "voter": m.voter, "state": s.state,
                    "leader": s.leader, "term": s.term, "last_log_index": s.last_log_index,
                    "applied_index": s.applied_index, "revision": s.revision, "leases": s.leases,
                    "retry_answers": s.retry_answers, "release": s.release, "api": s.api,
                }));
                rows.push(vec![
                    s.id.to_string(),
                    m.addr.clone(),
                    if m.voter {
                        s.state.clone()
                    } else {
                        format!("{} (learner)", s.state)
                    },
                    s.term.to_string(),
                    s.last_log_index.to_string(),
                    s.applied_index.to_string(),
                    s.revision.to_string(),
                    s.leases.to_string(),
                    // A member from before releases were reported says nothing.
                    if s.release.is_empty() {
                        "-".into()
                    } else {
                        format!("{} (API {})", s.release, s.api)
                    },
                ]);
            }
            Err(e) => {
                out.push(
                    json!({"id": m.id, "addr": m.addr, "voter": m.voter, "error": e.to_string()}),
                );
                let mut r = vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    format!("unreachable: {e}"),
                ];
                r.extend(std::iter::repeat_n("-".to_string(), 6));
                rows.push(r);
            }
        }
    }
    let leases = client.list_leases().await.context("list leases")?;
    let health = health_or_none(&client).await?;
    if graph {
        let mut pic = Picture::new(boxes, &leases.leases, &health);
        pic.caption = twill_controller::picture::caption(first.leader, leases.revision);
        print!("{}", twill_controller::picture::svg(&pic));
        return Ok(());
    }
    let nodes = node_rows(&leases.leases, &health);
    if t.json {
        let nodes: Vec<Value> = nodes.iter().map(NodeRow::json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "leader": first.leader, "leader_addr": first.leader_addr, "members": out,
                "nodes": nodes,
            }))?
        );
    } else {
        if first.leader == 0 {
            println!("leader: none elected (no quorum?)");
        } else {
            println!("leader: member {} at {}", first.leader, first.leader_addr);
        }
        print!(
            "{}",
            table(
                &[
                    "ID", "ADDRESS", "STATE", "TERM", "LAST LOG", "APPLIED", "REVISION", "LEASES",
                    "VERSION"
                ],
                rows
            )
        );
        println!();
        print_nodes(&nodes);
    }
    Ok(())
}

/// A node as `twill status` shows it: its lease (if any), its last health report (if any), and
/// why it needs attention (`None`: healthy).
struct NodeRow<'a> {
    name: String,
    lease: Option<&'a pb::Lease>,
    report: Option<&'a pb::NodeHealthEntry>,
    problem: Option<String>,
}

impl NodeRow<'_> {
    fn json(&self) -> Value {
        let h = self.report.and_then(|r| r.health.as_ref());
        json!({
            "node": self.name,
            "subnet": self.lease.map(|l| l.subnet.as_str()),
            "healthy": self.problem.clone().is_none(),
            "problem": self.problem.clone(),
            "report_age_ms": self.report.map(|r| r.age_ms),
            "stale": self.report.map(|r| r.stale),
            "ready": h.map(|h| h.ready),
            "problems": h.map(|h| h.problems.clone()),
            "reconcile_ok": h.map(|h| h.reconcile_ok),
            "reconcile_at_ms": h.map(|h| h.reconcile_at_ms),
            "backend": h.map(|h| h.backend.as_str()),
            "bgp_sessions": h.map(|h| h.bgp_sessions.iter()
                .map(|s| json!({"peer": s.peer, "state": s.state, "last_error": s.last_error}))
                .collect::<Vec<_>>()),
            "version": h.map(|h| h.version.as_str()),
        })
    }
}

/// Every node that holds a lease or has reported, by name.
fn node_rows<'a>(leases: &'a [pb::Lease], reports: &'a [pb::NodeHealthEntry]) -> Vec<NodeRow<'a>> {
    use twill_controller::picture::{by_node, node_problems};
    let (by_lease, by_report) = (by_node(leases), by_node(reports));
    node_problems(leases, reports)
        .into_iter()
        .map(|(name, problem)| NodeRow {
            lease: by_lease.get(name.as_str()).copied(),
            report: by_report.get(name.as_str()).copied(),
            name,
            problem,
        })
        .collect()
}

fn print_nodes(nodes: &[NodeRow<'_>]) {
    if nodes.is_empty() {
        println!("nodes: none has a lease or has reported yet");
        return;
    }
    let now = now_ms();
    let rows = nodes
        .iter()
        .map(|n| {
            let h = n.report.and_then(|r| r.health.as_ref());
            let dash = || "-".to_string();
            let bgp = h
                .filter(|h| !h.bgp_sessions.is_empty())
                .map(|h| {
                    let up = h
                        .bgp_sessions
                        .iter()
                        .filter(|s| s.state == "Established")
                        .count();
                    format!("{up}/{}", h.bgp_sessions.len())
                })
                .unwrap_or_else(dash);
            vec![
                n.name.clone(),
                n.lease.map(|l| l.subnet.clone()).unwrap_or_else(dash),
                h.map(|h| h.backend.clone()).unwrap_or_else(dash),
                h.filter(|h| h.reconcile_at_ms > 0)
                    .map(|h| {
                        let ago = span(now.saturating_sub(h.reconcile_at_ms) / 1000);
                        if h.reconcile_ok {
                            format!("ok {ago} ago")
                        } else {
                            format!("failed {ago} ago")
                        }
                    })
                    .unwrap_or_else(dash),
                bgp,
                h.map(|h| h.version.clone()).unwrap_or_else(dash),
                n.report
                    .map(|r| format!("{} ago", span(r.age_ms / 1000)))
                    .unwrap_or_else(dash),
                match &n.problem {
                    None => "healthy".into(),
                    Some(p) => format!("UNHEALTHY: {p}"),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NODE",
                "SUBNET",
                "BACKEND",
                "RECONCILE",
                "BGP",
                "VERSION",
                "REPORTED",
                "HEALTH"
            ],
            rows
        )
    );
    let bad = nodes.iter().filter(|n| n.problem.is_some()).count();
    if bad > 0 {
        println!("{bad} of {} nodes need attention", nodes.len());
    }
}

/// Every node's health report; none from a controller too old to keep them (said once on
/// stderr), so the rest of a command still works against it.
async fn health_or_none(client: &Client) -> Result<Vec<pb::NodeHealthEntry>> {
    match client.list_health().await {
        Ok(r) => Ok(r.nodes),
        Err(twill_client::ClientError::Status(s)) if s.code() == tonic::Code::Unimplemented => {
            eprintln!("twill: the controller keeps no node health reports (an older version)");
            Ok(Vec::new())
        }
        Err(e) => Err(e).context("node health"),
    }
}

pub async fn explain(t: &Target, node: &str) -> Result<()> {
    twill_proto::names::validate_node_name(node).with_context(|| format!("node {node:?}"))?;
    let client = t.client()?;
    let leases = client.list_leases().await.context("list leases")?;
    let config = client
        .get_config()
        .await
        .context("read the configuration")?;
    let health = health_or_none(&client).await?;
    let Some(e) = crate::explain::explain(node, &leases, &config, &health, now_ms()) else {
        bail!("node {node} holds no lease, has no reservation and has not reported (see `twill leases`)");
    };
    if t.json {
        println!("{}", serde_json::to_string_pretty(&e.json)?);
    } else {
        println!("node {node}");
        let w = e.lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &e.lines {
            println!("  {k:w$}  {v}");
        }
    }
    Ok(())
}

pub async fn leases(t: &Target) -> Result<()> {
    let r = t.client()?.list_leases().await.context("list leases")?;
    if t.json {
        let leases: Vec<Value> = r.leases.iter().map(lease_json).collect();
        let res: Vec<Value> = r
            .reservations
            .iter()
            .map(|x| json!({"node": x.node, "subnet": x.subnet}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"revision": r.revision, "leases": leases, "reservations": res})
            )?
        );
        return Ok(());
    }
    let rows = r
        .leases
        .iter()
        .map(|l| {
            vec![
                l.node.clone(),
                l.subnet.clone(),
                text(&l.ipv6_subnet),
                l.public_ip.clone(),
                until(l.expires_at_ms),
                text(&l.reason),
                ago(l.acquired_at_ms),
                l.create_revision.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NODE",
                "SUBNET",
                "IPV6 SUBNET",
                "PUBLIC IP",
                "EXPIRES IN",
                "REASON",
                "SINCE",
                "CREATED AT REV"
            ],
            rows
        )
    );
    if !r.reservations.is_empty() {
        println!();
        let rows = r
            .reservations
            .iter()
            .map(|x| vec![x.node.clone(), x.subnet.clone()])
            .collect();
        print!("{}", table(&["RESERVED FOR", "SUBNET"], rows));
    }
    println!("{} leases at revision {}", r.leases.len(), r.revision);
    Ok(())
}

pub async fn config(t: &Target, cmd: ConfigCmd) -> Result<()> {
    let client = t.client()?;
    let current = client.get_config().await.context("get configuration")?;
    let shown = match cmd {
        ConfigCmd::Get => {
            if !current.present {
                bail!("the cluster has no network configuration yet (set one with `twill config set --network CIDR`)");
            }
            current
        }
        ConfigCmd::Set(flags) => {
            if flags.is_empty() {
                bail!("nothing to change: give at least one setting, e.g. --network 10.244.0.0/16 (see --help)");
            }
            let base = if current.present {
                current.config.unwrap_or_default()
            } else {
                pb::NetworkConfig::default()
            };
            let wanted = flags.overlay(&base)?;
            client
                .set_config(wanted)
                .await
                .context("set configuration")?
        }
    };
    let cfg = shown.config.unwrap_or_default();
    if t.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"revision": shown.revision, "config": config_json(&cfg)})
            )?
        );
    } else {
        print!("{}", config_text(&cfg, shown.revision));
    }
    Ok(())
}

fn members_out(t: &Target, members: &[pb::Member], leader: u64) -> Result<()> {
    if t.json {
        let v: Vec<Value> = members
            .iter()
            .map(
                |m| json!({"id": m.id, "addr": m.addr, "voter": m.voter, "leader": m.id == leader}),
            )
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let rows = members
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    if m.voter { "voter" } else { "learner" }.to_string(),
                    if m.id == leader { "yes" } else { "" }.to_string(),
                ]
            })
            .collect();
        print!("{}", table(&["ID", "ADDRESS", "ROLE", "LEADER"], rows));
    }
    Ok(())
}

pub async fn members(t: &Target, cmd: MembersCmd) -> Result<()> {
    let client = t.client()?;
    match cmd {
        MembersCmd::List => {
            let s = client.status().await.context("controller status")?;
            members_out(t, &s.members, s.leader)
        }
        MembersCmd::Add { id, url } => {
            let r = client
                .add_member(id, url.trim_end_matches('/'))
                .await
                .with_context(|| format!("add member {id}"))?;
            let s = client.status().await.context("controller status")?;
            members_out(t, &r.members, s.leader)
        }
        MembersCmd::Remove { id } => {
            let r = client
                .remove_member(id)
                .await
                .with_context(|| format!("remove member {id}"))?;
            let s = client.status().await.context("controller status")?;
            members_out(t, &r.members, s.leader)
        }
    }
}

pub async fn reserve(t: &Target, node: &str, subnet: &str) -> Result<()> {
    let r = t.client()?.reserve(node, subnet).await.context("reserve")?;
    if t.json {
        println!(
            "{}",
            json!({"node": node, "subnet": subnet, "revision": r.revision})
        );
    } else {
        println!("reserved {subnet} for {node} (revision {})", r.revision);
    }
    Ok(())
}

pub async fn release(t: &Target, node: &str) -> Result<()> {
    let r = t.client()?.release(node).await.context("release")?;
    if t.json {
        println!("{}", json!({"node": node, "revision": r.revision}));
    } else {
        println!("released the lease of {node} (revision {})", r.revision);
    }
    Ok(())
}

pub async fn unreserve(t: &Target, node: &str) -> Result<()> {
    let r = t.client()?.unreserve(node).await.context("unreserve")?;
    if t.json {
        println!("{}", json!({"node": node, "revision": r.revision}));
    } else {
        println!(
            "removed the reservation of {node} (revision {})",
            r.revision
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_operators_expect() {
        assert_eq!(span(59), "59s");
        assert_eq!(span(61), "1m1s");
        assert_eq!(span(7_260), "2h1m");
        assert_eq!(span(90_000), "1d1h");
        assert_eq!(ago(0), "-", "a lease from before provenance was kept");
        assert_eq!(ago(now_ms() + 60_000), "-", "a leader clock ahead of ours");
        assert!(ago(now_ms() - 61_000).ends_with(" ago"));
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NODE", "SUBNET"],
            vec![
                vec!["a-long-name".into(), "10.244.1.0/24".into()],
                vec!["b".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "NODE         SUBNET\na-long-name  10.244.1.0/24\nb            -\n"
        );
    }
}

//! The `twill` command: the controller, and the operator's commands against it.

mod agent_cmd;
mod bgp_cmd;
mod credentials;
mod doctor_cmd;
mod explain;
mod install_cni_cmd;
mod network_flags;
mod operator;
mod progress;
mod sandbox_cmd;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::operator::{ConfigCmd, MembersCmd, Target};

/// Self-contained pod networking: every node gets its own pod subnet from a Raft-replicated
/// allocator (no etcd), and pods on different nodes reach each other without NAT.
#[derive(Parser, Debug)]
#[command(name = "twill", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a controller member. With no flags: a single-member cluster on 127.0.0.1:7420 handing
    /// out /24s of 10.244.0.0/16 for the vxlan backend
    Controller(Box<serve::ControllerArgs>),
    /// Run the node agent: hold this node's lease, program VXLAN, host-gw or BGP-learned routes to
    /// every other node, and write subnet.env for CNI
    Agent(Box<agent_cmd::AgentArgs>),
    /// Put twill-cni in the CNI plugin directory and a configuration list (twill-cni, then
    /// portmap) in the CNI configuration directory, atomically and idempotently, as flannel's
    /// init container does; --uninstall takes away only what it wrote
    InstallCni(install_cni_cmd::InstallCniArgs),
    /// Run a whole cluster in network namespaces on this machine (root): a controller, N nodes
    /// with agents, pods through twill-cni; prints leases and a pod reachability matrix
    Sandbox(sandbox_cmd::SandboxArgs),
    /// Show every member's role, Raft term and progress, and every node's health as its agent
    /// last reported it (unhealthy ones flagged)
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the cluster as an SVG picture instead (members with the leader marked, nodes
        /// with subnets and health, BGP sessions green when up, red when down), e.g.
        /// `twill status --graph > cluster.svg`
        #[arg(long)]
        graph: bool,
    },
    /// List the subnet leases (and reservations)
    Leases {
        #[command(flatten)]
        target: Target,
        /// Explain one node's lease instead: why this subnet (reserved, held before, held,
        /// lowest free), since when, under which configuration revision, its renewals, the
        /// reservation if any, and what its agent last reported
        #[arg(long, value_name = "NODE", value_parser = operator::parse_node)]
        explain: Option<String>,
    },
    /// Show or change the cluster's network configuration
    Config {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// List, add or remove controller members
    Members {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        cmd: MembersCmd,
    },
    /// Keep a subnet for one node: no other node is ever given it
    Reserve {
        #[command(flatten)]
        target: Target,
        /// The node's name
        #[arg(value_parser = operator::parse_node)]
        node: String,
        /// The subnet, e.g. 10.244.7.0/24
        #[arg(value_parser = operator::parse_subnet)]
        subnet: String,
    },
    /// Drop a node's reservation (a lease it holds stays)
    Unreserve {
        #[command(flatten)]
        target: Target,
        /// The node's name
        #[arg(value_parser = operator::parse_node)]
        node: String,
    },
    /// The node agent's BGP sessions (with the bgp backend)
    Bgp {
        #[command(subcommand)]
        cmd: bgp_cmd::BgpCmd,
    },
    /// Create, list and revoke join tokens (nodes and new members trade one for a certificate)
    Token {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        cmd: operator::TokenCmd,
    },
    /// The cluster CA: create one for a cluster formed with --peer, or print a CA's hash
    Ca {
        #[command(subcommand)]
        cmd: operator::CaCmd,
    },
    /// Check this node (as root): the kernel against the agent's desired state, MTUs from the
    /// underlay to the pods, subnet.env, the lease and the controller, each peer's agent and
    /// reachability on the underlay, masquerade and per-source tables; says what to do for each
    /// finding. Changes nothing. Exit 0 healthy, 1 problems found, 2 could not examine the node
    Doctor(doctor_cmd::DoctorArgs),
    /// Release a node's lease now, e.g. for a node that is gone for good
    Release {
        #[command(flatten)]
        target: Target,
        /// The node's name
        #[arg(value_parser = operator::parse_node)]
        node: String,
    },
}

fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_env("TWILL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_daemon = matches!(cli.cmd, Cmd::Controller(_) | Cmd::Agent(_));
    init_logging(if is_daemon {
        "info,openraft=warn"
    } else {
        "warn"
    });
    if matches!(cli.cmd, Cmd::Agent(_)) {
        twill_agent::agent::one_malloc_arena();
    }
    let threads = match &cli.cmd {
        Cmd::Controller(a) => a.threads(),
        _ => None,
    };
    // One thread: the current-thread scheduler, which runs woken tasks in the order they were
    // woken; the multi-thread one, even with one worker, runs a task woken by the running one
    // next (its LIFO slot). Measured with three members on two cores, alternating, 2026-12-05:
    // 1,000 watchers' p99 21.9 - 30.8 ms against 23.3 - 44.9, acquisitions under 3,000 agents
    // 248 and 205/s against 224 and 183.
    let mut builder = if threads == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let Some(n) = threads.filter(|&n| n > 1) {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twill: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Controller(a) => serve::run(*a).await,
            Cmd::Agent(a) => agent_cmd::run(*a).await,
            Cmd::InstallCni(a) => install_cni_cmd::run(a),
            Cmd::Sandbox(a) => sandbox_cmd::run(a).await,
            Cmd::Status { target, graph } => operator::status(&target, graph).await,
            Cmd::Leases { target, explain } => match explain {
                Some(node) => operator::explain(&target, &node).await,
                None => operator::leases(&target).await,
            },
            Cmd::Config { target, cmd } => operator::config(&target, cmd).await,
            Cmd::Members { target, cmd } => operator::members(&target, cmd).await,
            Cmd::Reserve {
                target,
                node,
                subnet,
            } => operator::reserve(&target, &node, &subnet).await,
            Cmd::Unreserve { target, node } => operator::unreserve(&target, &node).await,
            Cmd::Release { target, node } => operator::release(&target, &node).await,
            Cmd::Bgp { cmd } => bgp_cmd::run(cmd),
            Cmd::Token { target, cmd } => operator::token(&target, cmd).await,
            Cmd::Ca { cmd } => operator::ca(cmd),
            Cmd::Doctor(a) => doctor_cmd::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_daemon {
                tracing::error!("{e:#}");
            }
            eprintln!("twill: {e:#}");
            ExitCode::FAILURE
        }
    }
}

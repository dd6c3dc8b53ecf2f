//! `twill bgp status`: the node agent's BGP sessions, read from the status file the agent keeps
//! in its state directory (so it works without the agent serving anything).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum BgpCmd {
    /// Peers, session state and uptime, prefixes received / accepted / refused / advertised
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The agent's --state-dir
    #[arg(long, value_name = "DIR", default_value = "/var/lib/twill/agent")]
    state_dir: PathBuf,
    /// Print the agent's JSON as it is
    #[arg(long)]
    json: bool,
}

fn age(since: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(since);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn run(cmd: BgpCmd) -> Result<()> {
    let BgpCmd::Status(a) = cmd;
    let path = twill_agent::bgp::status_path(&a.state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist: no agent with the bgp backend has run with --state-dir {}",
            path.display(),
            a.state_dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let rows: Vec<Value> =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let stale = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| m.elapsed().ok())
        .filter(|d| d.as_secs() > 10);
    println!(
        "{:<40} {:>10}  {:<12} {:>8} {:>9} {:>9} {:>8} {:>11}",
        "PEER", "AS", "STATE", "FOR", "RECEIVED", "ACCEPTED", "REFUSED", "ADVERTISED"
    );
    for r in &rows {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
        let refused: Vec<(String, u64)> = r
            .get("refused")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(why, v)| (why.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<40} {:>10}  {:<12} {:>8} {:>9} {:>9} {:>8} {:>11}",
            s("peer"),
            n("asn"),
            s("state"),
            age(n("since")),
            n("received"),
            n("accepted"),
            refused.iter().map(|(_, n)| n).sum::<u64>(),
            n("advertised")
        );
        if !refused.is_empty() {
            let why: Vec<String> = refused.iter().map(|(w, n)| format!("{w} {n}")).collect();
            println!("    refused by the import rules: {}", why.join(", "));
        }
        if let Some(e) = r.get("last_error").and_then(Value::as_str) {
            if s("state") != "established" {
                println!("    last error: {e}");
            }
        }
    }
    if rows.is_empty() {
        println!("(no peers configured for this node)");
    }
    if let Some(d) = stale {
        println!(
            "note: {} was last written {}s ago; is the agent running?",
            path.display(),
            d.as_secs()
        );
    }
    Ok(())
}

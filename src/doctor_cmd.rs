//! `twill doctor`: checks this node against what its agent should have made of it, and says
//! what to do about each difference. Read-only.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use twill_agent::doctor::{self, gather};

/// Exit status when the doctor finds problems; 0 when healthy.
const EXIT_PROBLEMS: i32 = 1;
/// Exit status when the doctor cannot examine the node at all.
const EXIT_CANNOT_RUN: i32 = 2;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The agent's --state-dir: the doctor takes the agent's settings (node name, controller,
    /// interface flags, subnet file, masquerade, per-source tables) and its node certificate
    /// from there, as the agent saved them at its last start
    #[arg(long, value_name = "DIR", default_value = "/var/lib/twill/agent")]
    state_dir: PathBuf,
    /// Ask these controller endpoints instead of the agent's (repeat or separate with commas)
    #[arg(long = "controller", value_name = "URL", value_delimiter = ',')]
    controllers: Vec<String>,
    /// Print one JSON object: {"healthy": bool, "findings": [{check, severity, what, advice}]}
    #[arg(long)]
    json: bool,
}

/// Runs the checks and exits: 0 healthy, 1 problems found, 2 the doctor could not run (not
/// root, no agent state). Exits itself so that "unhealthy" and "cannot tell" stay apart.
pub async fn run(a: DoctorArgs) -> Result<()> {
    let opts = gather::Options {
        state_dir: a.state_dir,
        controllers: (!a.controllers.is_empty()).then_some(a.controllers),
    };
    let facts = match gather::gather(&opts).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("twill doctor: cannot examine this node: {e}");
            std::process::exit(EXIT_CANNOT_RUN);
        }
    };
    let findings = doctor::diagnose(&facts);
    let out = if a.json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&doctor::to_json(&findings))?
        )
    } else {
        doctor::render_text(&findings)
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    if doctor::healthy(&findings) {
        Ok(())
    } else {
        std::process::exit(EXIT_PROBLEMS);
    }
}

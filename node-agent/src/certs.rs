//! The node's certificate: loaded from the state directory, or got once with a join token;
//! then renewed by the client library before it expires.

use std::path::PathBuf;

use twill_client::certs::{self, JoinAs};
use twill_pki::{Credentials, Identity};

use crate::agent::{AgentError, Options, Tls};

/// The credentials to start with and where they are kept; none with TLS off.
pub async fn obtain(opts: &Options) -> Result<Option<(Credentials, PathBuf)>, AgentError> {
    let (file, join) = match &opts.tls {
        Tls::Off => {
            tracing::warn!(
                "TLS off (--insecure): the controller cannot tell this node from anyone else"
            );
            return Ok(None);
        }
        Tls::On { file, join } => (file, join),
    };
    let fail = |e: String| AgentError::Certificate(e);
    if let Some(c) = certs::load_valid(file) {
        let who = c.identity().map_err(|e| fail(e.to_string()))?;
        if who == Identity::node(&opts.node_name) {
            tracing::info!(file = %file.display(), "using the saved node certificate");
            return Ok(Some((c, file.clone())));
        }
        if join.is_none() {
            return Err(fail(format!(
                "{} is the certificate of {who}, not of node {}; join again with --join-token",
                file.display(),
                opts.node_name
            )));
        }
    }
    let Some((token, hash)) = join else {
        return Err(fail(format!(
            "no valid certificate at {}: join with --join-token and --ca-hash (from `twill token create`), or pass --insecure for a controller run with --insecure",
            file.display()
        )));
    };
    let who = JoinAs {
        name: opts.node_name.clone(),
        member: false,
        hosts: Vec::new(),
    };
    // Like the lease, the join waits for a controller to answer; only a refusal ends it.
    let mut backoff = std::time::Duration::from_secs(1);
    let c = loop {
        match certs::join(&opts.controllers, token, hash, &who).await {
            Ok(c) => break c,
            Err(e) if e.worth_retrying() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot join yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    c.save(file).map_err(|e| fail(e.to_string()))?;
    tracing::info!(file = %file.display(), "joined: node certificate issued and saved");
    Ok(Some((c, file.clone())))
}

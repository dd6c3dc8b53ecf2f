//! Where the binary's TLS material lives and how it is made: a controller member's own
//! certificate, the CA a new cluster starts with, the admin credential for the local CLI, and
//! the credentials the CLI and agents look for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use twill_client::certs::{self, JoinAs};
use twill_controller::certs::MEMBER_CERT_TTL;
use twill_pki::{Ca, Credentials, Identity};

/// A member's TLS files live here, under its data directory.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The admin credential a controller writes for the local CLI.
pub fn admin_file(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.pem")
}

const ADMIN_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The hosts a member's certificate names: its advertised host and its listen address.
fn hosts(advertise: &str, listen: &std::net::SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    let host = advertise
        .split("://")
        .nth(1)
        .unwrap_or(advertise)
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or_default();
    if !host.is_empty() {
        out.push(host.to_string());
    }
    if !listen.ip().is_unspecified() && !out.contains(&listen.ip().to_string()) {
        out.push(listen.ip().to_string());
    }
    out
}

/// How a member comes by its certificate.
pub struct MemberSetup<'a> {
    pub id: u64,
    pub data_dir: &'a Path,
    pub advertise: &'a str,
    pub listen: std::net::SocketAddr,
    /// `--ca`: the CA of a cluster formed with `--peer`.
    pub ca_file: Option<&'a Path>,
    /// Forming a cluster with other founding members.
    pub founding_with_peers: bool,
    /// `--join-token` and `--ca-hash`, with the members to join through.
    pub join: Option<(&'a str, &'a str, &'a [String])>,
}

/// This member's credentials and, when it has it, the CA: loaded when they exist, else
/// joined for with a token, else made here (a new cluster's CA and the member's certificate).
pub async fn member(s: MemberSetup<'_>) -> Result<(Credentials, Option<Ca>)> {
    let dir = tls_dir(s.data_dir);
    let member_file = dir.join("member.pem");
    let ca_store = dir.join("ca.pem");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    restrict(s.data_dir)?;
    restrict(&dir)?;

    let mut ca = if ca_store.exists() {
        Some(Ca::load(&ca_store).context("this member's copy of the cluster CA")?)
    } else if let Some(f) = s.ca_file {
        let ca = Ca::load(f).with_context(|| format!("--ca {}", f.display()))?;
        ca.save(&ca_store)?;
        Some(ca)
    } else {
        None
    };
    if let Some(c) = certs::load_valid(&member_file) {
        let who = c.identity()?;
        if who != Identity::member(s.id) {
            bail!(
                "{} is the certificate of {who}, not of member {}; remove it to issue a new one",
                member_file.display(),
                s.id
            );
        }
        return Ok((c, ca));
    }
    let hosts = hosts(s.advertise, &s.listen);
    let creds = if let Some((token, hash, via)) = s.join {
        if via.is_empty() {
            bail!("--join-token needs --controller URL: a running member to join through");
        }
        tracing::info!(via = ?via, "joining with a member token");
        certs::join(
            via,
            token,
            hash,
            &JoinAs {
                name: s.id.to_string(),
                member: true,
                hosts,
            },
        )
        .await
        .context("join as a controller member")?
    } else {
        let signer = match &ca {
            Some(ca) => ca.clone(),
            None if s.founding_with_peers => bail!(
                "a cluster formed with --peer needs one CA on every founding member: create it once with `twill ca create --out ca.pem`, copy it to each and pass --ca ca.pem (or start one member alone and add the others with member join tokens)"
            ),
            None => {
                let made = Ca::generate(&format!("member-{}", s.id))?;
                made.save(&ca_store)?;
                tracing::info!(hash = %made.hash()?, "created the cluster CA");
                ca = Some(made.clone());
                made
            }
        };
        signer.credentials(&Identity::member(s.id), MEMBER_CERT_TTL, &hosts)?
    };
    creds.save(&member_file)?;
    Ok((creds, ca))
}

/// Writes (or refreshes, when less than a month is left) the local admin credential.
pub fn write_admin(data_dir: &Path, ca: &Ca) -> Result<PathBuf> {
    let path = admin_file(data_dir);
    if let Some(c) = certs::load_valid(&path) {
        let left = c.not_after()? - time::OffsetDateTime::now_utc();
        if c.ca_pem == ca.cert_pem && left > time::Duration::days(30) {
            return Ok(path);
        }
    }
    let c = ca.credentials(&Identity::admin("admin"), ADMIN_CERT_TTL, &[])?;
    c.save(&path)?;
    Ok(path)
}

fn restrict(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// The credentials the CLI uses: `--credentials`, else an admin credential a local controller
/// wrote (root's, then the user's).
pub fn cli(explicit: Option<&Path>) -> Result<Option<Credentials>> {
    if let Some(p) = explicit {
        return Ok(Some(
            Credentials::load(p).with_context(|| format!("--credentials {}", p.display()))?,
        ));
    }
    for dir in crate::serve::data_dir_candidates() {
        let p = admin_file(&dir);
        if p.exists() {
            return Ok(Some(
                Credentials::load(&p).with_context(|| format!("{}", p.display()))?,
            ));
        }
    }
    Ok(None)
}

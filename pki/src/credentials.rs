//! A certificate, its key and the cluster CA: kept in one PEM file (0600), turned into tonic's
//! TLS settings for a server (a member) or a client (a member, a node, the CLI).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

use crate::ca::{self, CaError};
use crate::identity::{Identity, IdentityError};
use crate::MEMBER_SERVER_NAME;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Format { path: String, why: String },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The holder's certificate (PEM).
    pub cert_pem: String,
    pub key_pem: String,
    /// The cluster CA's certificate (PEM): what the other side is checked against.
    pub ca_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity().ok())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads a credentials file: the certificate, its key, then the CA certificate.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Io {
            path: shown.clone(),
            source: e,
        })?;
        Self::parse(&text).map_err(|why| CredentialsError::Format { path: shown, why })
    }

    pub fn parse(text: &str) -> Result<Credentials, String> {
        let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
        let mut certs = blocks.iter().filter(|b| b.tag() == "CERTIFICATE");
        let key = blocks
            .iter()
            .find(|b| b.tag().ends_with("PRIVATE KEY"))
            .ok_or("no private key")?;
        let (Some(cert), Some(ca)) = (certs.next(), certs.next()) else {
            return Err("expected the certificate, its key and the CA certificate".into());
        };
        Ok(Credentials {
            cert_pem: ca::encode(cert),
            key_pem: ca::encode(key),
            ca_pem: ca::encode(ca),
        })
    }

    pub fn to_pem(&self) -> String {
        format!("{}{}{}", self.cert_pem, self.key_pem, self.ca_pem)
    }

    /// Writes the file atomically with mode 0600: a crash leaves the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), CredentialsError> {
        write_private(path, &self.to_pem()).map_err(|e| CredentialsError::Io {
            path: path.display().to_string(),
            source: e,
        })
    }

    pub fn identity(&self) -> Result<Identity, CredentialsError> {
        Ok(Identity::from_der(&ca::pem_der(&self.cert_pem)?)?)
    }

    pub fn not_after(&self) -> Result<OffsetDateTime, CredentialsError> {
        Ok(ca::validity(&self.cert_pem)?.1)
    }

    pub fn not_before(&self) -> Result<OffsetDateTime, CredentialsError> {
        Ok(ca::validity(&self.cert_pem)?.0)
    }

    /// The hash of the CA these credentials trust.
    pub fn ca_hash(&self) -> Result<String, CredentialsError> {
        Ok(ca::spki_hash(&ca::pem_der(&self.ca_pem)?)?)
    }

    /// A member serving: its certificate (with the CA behind it, so a joining node can see
    /// the CA and check its hash), and client certificates checked against the CA. A client
    /// without one is let through the handshake; the service then allows it only a join.
    pub fn server_tls(&self) -> ServerTlsConfig {
        let chain = format!("{}{}", self.cert_pem, self.ca_pem);
        ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(chain, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// A client presenting these credentials to a member.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ca_only_tls(&self.ca_pem).identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// Writes a file only its owner may read, atomically: a temporary file, synced, renamed.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// A client with no certificate of its own (a node joining with a token): it still checks
/// that it speaks to a member of the cluster whose CA it holds.
pub fn ca_only_tls(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(MEMBER_SERVER_NAME)
        .timeout(HANDSHAKE_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;

    #[test]
    fn credentials_survive_a_file_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let ca = Ca::generate("t").expect("ca");
        let issued = ca
            .issue(&Identity::admin("admin"), Duration::from_secs(60), &[])
            .expect("issue");
        let c = Credentials {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem.expect("key"),
            ca_pem: ca.cert_pem.clone(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/admin.pem");
        c.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Credentials::load(&path).expect("load");
        assert_eq!(back, c);
        assert_eq!(back.identity().expect("identity"), Identity::admin("admin"));
        assert_eq!(back.ca_hash().expect("hash"), ca.hash().expect("hash"));
        std::fs::write(&path, "garbage").expect("write");
        assert!(Credentials::load(&path).is_err());
    }
}

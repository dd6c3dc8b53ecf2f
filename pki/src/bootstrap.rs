//! A node with a join token knows the cluster CA only by its hash (`--ca-hash sha256:…`, as
//! kubeadm's discovery). It learns the CA from a member's TLS handshake: the member sends its
//! certificate with the CA behind it; the handshake completes only if one certificate in that
//! chain has the expected hash and the member's certificate is a member's, signed by it. The
//! token is sent later, over a connection that checks the member against that CA.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::ca::spki_hash;
use crate::MEMBER_SERVER_NAME;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("--ca-hash {0:?}: expected sha256: and 64 hex digits")]
    BadHash(String),
    #[error("controller URL {0:?}: expected https://host:port")]
    BadUrl(String),
    #[error("cannot reach {url}: {why}")]
    Connect { url: String, why: String },
    #[error("{url} is not a member of the cluster whose CA hash is {hash}: {why}")]
    Untrusted {
        url: String,
        hash: String,
        why: String,
    },
}

/// Checks a `sha256:<64 hex>` hash and returns it in lowercase.
pub fn parse_ca_hash(s: &str) -> Result<String, BootstrapError> {
    let hex = s
        .trim()
        .strip_prefix("sha256:")
        .ok_or_else(|| BootstrapError::BadHash(s.chars().take(80).collect()))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BootstrapError::BadHash(s.chars().take(80).collect()));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Checks a member's chain against a pinned CA hash; with none (only for [`speaks_tls`],
/// which sends nothing over the connection) it accepts any certificate.
#[derive(Debug)]
struct PinnedCa {
    hash: Option<String>,
    provider: Arc<CryptoProvider>,
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(hash) = &self.hash else {
            return Ok(ServerCertVerified::assertion());
        };
        let ca = intermediates
            .iter()
            .find(|c| spki_hash(c).is_ok_and(|h| h == *hash))
            .ok_or_else(|| {
                rustls::Error::General("no certificate the member sent has that hash".into())
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(MEMBER_SERVER_NAME)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let ok = verifier.verify_server_cert(end_entity, &[], &name, ocsp, now)?;
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.clone().into_owned());
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `host:port` completes a TLS handshake: how a client that dialled it in plaintext
/// learns why its calls fail. Nothing is sent after the handshake.
pub async fn speaks_tls(authority: &str) -> bool {
    let provider = Arc::new(ring::default_provider());
    let Ok(builder) =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            hash: None,
            provider,
            found: Mutex::new(None),
        }))
        .with_no_client_auth();
    let Ok(name) = ServerName::try_from(MEMBER_SERVER_NAME) else {
        return false;
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

/// The CA certificate (PEM) of the cluster `url` belongs to, if its hash is `ca_hash`.
pub async fn fetch_ca(url: &str, ca_hash: &str) -> Result<String, BootstrapError> {
    let hash = parse_ca_hash(ca_hash)?;
    let authority = url
        .strip_prefix("https://")
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .ok_or_else(|| BootstrapError::BadUrl(url.chars().take(200).collect()))?;
    let connect_err = |why: String| BootstrapError::Connect {
        url: url.to_string(),
        why,
    };
    let provider = Arc::new(ring::default_provider());
    let pinned = Arc::new(PinnedCa {
        hash: Some(hash.clone()),
        provider: provider.clone(),
        found: Mutex::new(None),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| connect_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .map_err(|_| connect_err("no answer within 5s".into()))?
    .map_err(|e| connect_err(e.to_string()))?;
    let name = ServerName::try_from(MEMBER_SERVER_NAME).map_err(|e| connect_err(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await {
        Err(_) => return Err(connect_err("no TLS handshake within 10s".into())),
        Ok(Err(e)) => {
            return Err(BootstrapError::Untrusted {
                url: url.to_string(),
                hash,
                why: e.to_string(),
            })
        }
        Ok(Ok(_stream)) => {}
    }
    let der = pinned
        .found
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| connect_err("the handshake completed without a certificate".into()))?;
    Ok(crate::ca::encode(&pem::Pem::new(
        "CERTIFICATE",
        der.to_vec(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_checked_for_shape() {
        let good = format!("sha256:{}", "AB".repeat(32));
        assert_eq!(
            parse_ca_hash(&good).expect("valid"),
            format!("sha256:{}", "ab".repeat(32))
        );
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(parse_ca_hash(bad).is_err(), "{bad}");
        }
    }
}

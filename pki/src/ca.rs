//! The cluster's certificate authority. The first member creates it; it then lives in the
//! replicated state, so whichever member leads can sign.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::identity::{Identity, Role};
use crate::MEMBER_SERVER_NAME;

/// The CA's own lifetime: ten years, as kubeadm's.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this far in the past, so a node whose clock is a little behind the
/// member's accepts them at once.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create a key or certificate: {0}")]
    Generate(String),
    #[error("the CA's certificate or key cannot be read: {0}")]
    Load(String),
    #[error("the certificate signing request is not valid: {0}")]
    Csr(String),
    #[error("the CA's certificate cannot be parsed: {0}")]
    Parse(String),
}

/// The CA certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, not even in a debug log.
        f.debug_struct("Ca")
            .field("hash", &self.hash().unwrap_or_default())
            .finish_non_exhaustive()
    }
}

/// A signed certificate and, when this side made the key pair, its key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Option<String>,
    pub not_after: OffsetDateTime,
}

fn gen_err(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // Positive, as RFC 5280 asks.
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo, as kubeadm's --discovery-token-ca-cert-hash.
pub fn spki_hash(der: &[u8]) -> Result<String, CaError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CaError::Parse(e.to_string()))?;
    let digest = Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex(&digest)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PEM with Unix line endings, as rcgen writes it, so files compare equal after a round trip.
pub(crate) fn encode(p: &pem::Pem) -> String {
    pem::encode_config(
        p,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

pub(crate) fn pem_der(pem_text: &str) -> Result<Vec<u8>, CaError> {
    pem::parse(pem_text)
        .map(|p| p.into_contents())
        .map_err(|e| CaError::Parse(e.to_string()))
}

impl Ca {
    /// A new CA with a fresh ECDSA P-256 key.
    pub fn generate(cluster: &str) -> Result<Ca, CaError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("twill cluster CA {cluster}"));
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - BACKDATE;
        p.not_after = now + CA_LIFETIME;
        p.serial_number = Some(serial());
        let cert = p.self_signed(&key).map_err(gen_err)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads a CA file: its certificate and its key, PEM, as [`Ca::save`] writes them.
    pub fn load(path: &std::path::Path) -> Result<Ca, CaError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CaError::Load(format!("{}: {e}", path.display())))?;
        let blocks = pem::parse_many(&text)
            .map_err(|e| CaError::Load(format!("{}: not PEM: {e}", path.display())))?;
        let cert = blocks.iter().find(|b| b.tag() == "CERTIFICATE");
        let key = blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY"));
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(CaError::Load(format!(
                "{}: expected the CA certificate and its private key",
                path.display()
            )));
        };
        let ca = Ca {
            cert_pem: encode(cert),
            key_pem: encode(key),
        };
        // A CA that cannot sign is refused now, not at the first join.
        ca.with_issuer(|_| Ok(()))?;
        Ok(ca)
    }

    /// Writes the certificate and key to `path`, 0600, atomically.
    pub fn save(&self, path: &std::path::Path) -> Result<(), CaError> {
        crate::credentials::write_private(path, &format!("{}{}", self.cert_pem, self.key_pem))
            .map_err(|e| CaError::Load(format!("{}: {e}", path.display())))
    }

    /// Credentials for `who`, made and signed here.
    pub fn credentials(
        &self,
        who: &Identity,
        lifetime: Duration,
        hosts: &[String],
    ) -> Result<crate::Credentials, CaError> {
        let issued = self.issue(who, lifetime, hosts)?;
        Ok(crate::Credentials {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem.unwrap_or_default(),
            ca_pem: self.cert_pem.clone(),
        })
    }

    /// The hash a joining node checks the CA against (`--ca-hash`).
    pub fn hash(&self) -> Result<String, CaError> {
        spki_hash(&pem_der(&self.cert_pem)?)
    }

    fn with_issuer<T>(
        &self,
        f: impl FnOnce(&Issuer<'_, KeyPair>) -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| CaError::Load(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(|e| CaError::Load(e.to_string()))?;
        f(&issuer)
    }

    /// What a certificate for `who` says, whoever made the key: the identity URI, and for a
    /// member the server name clients check plus the host it is reached at.
    fn params(
        who: &Identity,
        lifetime: Duration,
        hosts: &[String],
    ) -> Result<CertificateParams, CaError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        // The common name is for people reading the certificate; twill reads the URI.
        let cn: String = format!("{} {}", who.role, who.name)
            .chars()
            .take(64)
            .collect();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, format!("twill:{}", who.role));
        let uri = who
            .uri()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Generate(e.to_string()))?;
        p.subject_alt_names.push(SanType::URI(uri));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if who.role == Role::Member {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            let name = MEMBER_SERVER_NAME
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Generate(e.to_string()))?;
            p.subject_alt_names.push(SanType::DnsName(name));
            for h in hosts {
                match h.parse::<std::net::IpAddr>() {
                    Ok(ip) => p.subject_alt_names.push(SanType::IpAddress(ip)),
                    Err(_) => {
                        if let Ok(n) = h.as_str().try_into() {
                            p.subject_alt_names.push(SanType::DnsName(n));
                        }
                    }
                }
            }
        }
        let now = OffsetDateTime::now_utc();
        // Short-lived certificates (tests) are backdated a tenth of their life at most, so
        // that two thirds of the life, when they are renewed, is still ahead.
        p.not_before = now - BACKDATE.min(lifetime / 10);
        p.not_after = now + lifetime;
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }

    /// A certificate and a fresh key for `who`, both made here (a member's own, an admin's).
    pub fn issue(
        &self,
        who: &Identity,
        lifetime: Duration,
        hosts: &[String],
    ) -> Result<Issued, CaError> {
        let p = Self::params(who, lifetime, hosts)?;
        let key = KeyPair::generate().map_err(gen_err)?;
        self.with_issuer(|issuer| {
            let cert = p.signed_by(&key, issuer).map_err(gen_err)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: Some(key.serialize_pem()),
                not_after: p.not_after,
            })
        })
    }

    /// Signs the public key of a CSR for `who`. Only the key is taken from the request (its
    /// signature proves the caller holds it); names and lifetime are the CA's decision.
    ///
    /// `valid_after`: the certificate starts no earlier than this (a node's certificates
    /// from before a revocation are told apart from later ones by their start).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        who: &Identity,
        lifetime: Duration,
        hosts: &[String],
        valid_after: Option<OffsetDateTime>,
    ) -> Result<Issued, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        csr.params = Self::params(who, lifetime, hosts)?;
        if let Some(t) = valid_after {
            let floor = t + Duration::from_secs(1);
            if csr.params.not_before < floor {
                csr.params.not_before = floor;
            }
        }
        let not_after = csr.params.not_after;
        self.with_issuer(|issuer| {
            let cert = csr.signed_by(issuer).map_err(gen_err)?;
            Ok(Issued {
                cert_pem: cert.pem(),
                key_pem: None,
                not_after,
            })
        })
    }
}

/// Checks that a CSR parses and its signature holds, before anything is spent on it.
pub fn check_csr(csr_pem: &str) -> Result<(), CaError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(|e| CaError::Csr(e.to_string()))
}

/// A new key pair and a CSR for it, PEM; the key never leaves the caller.
pub fn key_and_csr(who: &Identity) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    let cn: String = who.name.chars().take(64).collect();
    p.distinguished_name.push(DnType::CommonName, cn);
    let csr = p.serialize_request(&key).map_err(gen_err)?;
    let pem = csr.pem().map_err(gen_err)?;
    Ok((key.serialize_pem(), pem))
}

/// When a PEM certificate starts and stops being valid.
pub fn validity(cert_pem: &str) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
    let der = pem_der(cert_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::Parse(e.to_string()))?;
    let v = cert.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_identity_and_the_ca_hash_is_stable() {
        let ca = Ca::generate("test").expect("ca");
        let h = ca.hash().expect("hash");
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
        assert_eq!(ca.hash().expect("hash"), h);
        let node = Identity::node("worker-1");
        let issued = ca
            .issue(&node, Duration::from_secs(60), &[])
            .expect("issue");
        let der = pem_der(&issued.cert_pem).expect("pem");
        assert_eq!(Identity::from_der(&der), Ok(node));
        let left = validity(&issued.cert_pem).expect("validity").1 - OffsetDateTime::now_utc();
        assert!(
            left.whole_seconds() > 50 && left.whole_seconds() <= 60,
            "{left}"
        );
    }

    #[test]
    fn a_csr_gets_the_cas_names_not_its_own() {
        let ca = Ca::generate("test").expect("ca");
        // The requester asks for a member's identity; the CA decides it is node n1.
        let (_key, csr) = key_and_csr(&Identity::member(1)).expect("csr");
        let issued = ca
            .sign_csr(
                &csr,
                &Identity::node("n1"),
                Duration::from_secs(60),
                &[],
                None,
            )
            .expect("sign");
        let der = pem_der(&issued.cert_pem).expect("pem");
        assert_eq!(Identity::from_der(&der), Ok(Identity::node("n1")));
        assert!(ca
            .sign_csr(
                "not a csr",
                &Identity::node("n1"),
                Duration::from_secs(60),
                &[],
                None
            )
            .is_err());
    }
}

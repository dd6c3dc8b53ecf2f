//! The identity a certificate carries: one `twill:<role>:<name>` URI in its subject
//! alternative names. A URI has no length limit that a 253-byte node name could break (a
//! common name stops at 64), and a role in the name cannot be confused with a host name.

use std::fmt;

use twill_proto::names::validate_node_name;

/// What a certificate's holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A controller member: speaks Raft, forwards clients' requests.
    Member,
    /// An operator: configuration, reservations, membership, tokens.
    Admin,
    /// A node agent: its own lease, and reads.
    Node,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    /// A member's id, a node's name, an admin's name.
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the certificate names no twill identity (a twill:<role>:<name> URI)")]
    Missing,
    #[error("the certificate names {0} twill identities; one is expected")]
    Several(usize),
    #[error("{0:?} is not a twill identity")]
    Malformed(String),
}

const SCHEME: &str = "twill:";

impl Identity {
    pub fn member(id: u64) -> Self {
        Identity {
            role: Role::Member,
            name: id.to_string(),
        }
    }

    pub fn node(name: &str) -> Self {
        Identity {
            role: Role::Node,
            name: name.to_string(),
        }
    }

    pub fn admin(name: &str) -> Self {
        Identity {
            role: Role::Admin,
            name: name.to_string(),
        }
    }

    pub fn uri(&self) -> String {
        format!("{SCHEME}{}:{}", self.role, self.name)
    }

    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::Malformed(uri.chars().take(80).collect());
        let rest = uri.strip_prefix(SCHEME).ok_or_else(bad)?;
        let (role, name) = rest.split_once(':').ok_or_else(bad)?;
        let role = match role {
            "member" => Role::Member,
            "admin" => Role::Admin,
            "node" => Role::Node,
            _ => return Err(bad()),
        };
        // Member ids are digits, admin names follow the node-name rule like node names.
        if validate_node_name(name).is_err() {
            return Err(bad());
        }
        Ok(Identity {
            role,
            name: name.to_string(),
        })
    }

    /// The identity in a DER certificate (one the TLS layer has already verified).
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let uris: Vec<&str> = san
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        x509_parser::extensions::GeneralName::URI(u) if u.starts_with(SCHEME) => {
                            Some(*u)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        match uris.as_slice() {
            [] => Err(IdentityError::Missing),
            [one] => Self::parse_uri(one),
            many => Err(IdentityError::Several(many.len())),
        }
    }
}

/// When a DER certificate starts being valid, in milliseconds since the Unix epoch.
pub fn not_before_ms(der: &[u8]) -> Result<u64, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let t = cert.validity().not_before.timestamp();
    Ok(u64::try_from(t).unwrap_or(0).saturating_mul(1000))
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_strangers_are_refused() {
        for id in [
            Identity::member(3),
            Identity::node("ip-10-0-3-17.eu-west-1.compute.internal"),
            Identity::admin("admin"),
        ] {
            assert_eq!(Identity::parse_uri(&id.uri()), Ok(id));
        }
        for bad in [
            "twill:root:x",
            "twill:node:",
            "twill:node:Bad_Name",
            "spiffe://twill/node/a",
            "twill:node",
        ] {
            assert!(Identity::parse_uri(bad).is_err(), "{bad}");
        }
    }
}

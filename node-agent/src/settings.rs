//! The agent's settings as it runs, saved in its state directory at every start. `twill doctor`
//! reads them so that it computes the desired state from the same interface choice, masquerade
//! setting, per-source tables and subnet file as the running agent, and reaches the controller
//! the same way, without the operator repeating the agent's flags (which would drift).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::{Options, Tls};
use crate::facts::Choice;
use crate::source_tables::TableSpec;

/// The file's name in the state directory.
pub const FILE: &str = "settings.json";

/// What decides the node's desired state and how the agent talks to the controller. Secrets
/// (the join token) are never kept here; the certificate is `node.pem` beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub node_name: String,
    pub controllers: Vec<String>,
    /// Whether the agent talks TLS with its node certificate (false: `--insecure`).
    pub tls: bool,
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub iface_can_reach: Option<Ipv4Addr>,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    /// `--source-table` values as given (IFACE=TABLE or ADDRESS=TABLE).
    pub source_tables: Vec<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub health_interval_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not parse: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: --source-table {value:?}: {reason}")]
    SourceTable {
        path: PathBuf,
        value: String,
        reason: String,
    },
}

impl Settings {
    pub fn of(o: &Options) -> Settings {
        Settings {
            node_name: o.node_name.clone(),
            controllers: o.controllers.clone(),
            tls: matches!(o.tls, Tls::On { .. }),
            iface: o.choice.iface.clone(),
            iface_regex: o.choice.iface_regex.clone(),
            iface_can_reach: o.choice.can_reach,
            public_ip: o.choice.public_ip,
            subnet_file: o.subnet_file.clone(),
            ip_masq: o.ip_masq,
            source_tables: o.source_tables.iter().map(|t| t.to_string()).collect(),
            metrics_addr: o.metrics_addr,
            health_interval_ms: o.health_interval.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }

    pub fn choice(&self) -> Choice {
        Choice {
            iface: self.iface.clone(),
            iface_regex: self.iface_regex.clone(),
            can_reach: self.iface_can_reach,
            public_ip: self.public_ip,
        }
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }

    /// The `--source-table` values parsed again (they were valid when the agent saved them).
    pub fn table_specs(&self, path: &Path) -> Result<Vec<TableSpec>, SettingsError> {
        self.source_tables
            .iter()
            .map(|v| {
                v.parse().map_err(
                    |e: crate::source_tables::SpecError| SettingsError::SourceTable {
                        path: path.to_path_buf(),
                        value: v.clone(),
                        reason: e.to_string(),
                    },
                )
            })
            .collect()
    }

    /// Writes `settings.json` (0600) atomically: a reader sees the old or the new one.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        twill_pki::credentials::write_private(&state_dir.join(FILE), &text)
    }

    pub fn load(state_dir: &Path) -> Result<Settings, SettingsError> {
        let path = state_dir.join(FILE);
        let text = std::fs::read(&path).map_err(|source| SettingsError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| SettingsError::Parse { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            tls: Tls::On {
                file: "/var/lib/twill/agent/node.pem".into(),
                join: Some(("abcdef.0123456789abcdef".into(), "sha256:00".into())),
            },
            controllers: vec!["https://10.0.0.1:7420".into()],
            node_name: "worker-1".into(),
            choice: Choice {
                iface: vec!["eth0".into()],
                iface_regex: vec!["^10\\.".into()],
                can_reach: Some("10.0.0.1".parse().unwrap()),
                public_ip: None,
            },
            state_dir: "/var/lib/twill/agent".into(),
            subnet_file: "/run/flannel/subnet.env".into(),
            metrics_addr: Some("127.0.0.1:9421".parse().unwrap()),
            resync: Duration::from_secs(5),
            health_interval: Duration::from_secs(10),
            ip_masq: false,
            bgp: Default::default(),
            source_tables: vec![
                "eth1=100".parse().unwrap(),
                "198.51.100.1=200".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn settings_round_trip_through_the_file_without_the_join_token() {
        let dir = std::env::temp_dir().join(format!("twill-settings-{}", std::process::id()));
        let s = Settings::of(&options());
        s.save(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(
            !text.contains("0123456789abcdef"),
            "no secret on disk: {text}"
        );
        let back = Settings::load(&dir).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.choice().iface, vec!["eth0".to_string()]);
        assert_eq!(
            back.table_specs(&dir).unwrap(),
            options().source_tables,
            "the tables parse back as given"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_or_damaged_file_names_itself() {
        let dir = std::env::temp_dir().join(format!("twill-settings-bad-{}", std::process::id()));
        let e = Settings::load(&dir).unwrap_err().to_string();
        assert!(e.contains("settings.json"), "{e}");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), "{\"node_name\": 3}").unwrap();
        let e = Settings::load(&dir).unwrap_err().to_string();
        assert!(e.contains("does not parse"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

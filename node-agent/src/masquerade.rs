//! Pod egress masquerade: traffic from pods to anything outside the cluster network leaves with
//! the node's address, as flannel's `--ip-masq` does; pod-to-pod traffic keeps its addresses.
//!
//! The rules live in one nftables table of twill's own (`inet twill`), written through the `nft`
//! tool as a single transaction that deletes and recreates the table, so a reader never sees half
//! a ruleset and nothing outside the table is touched (kube-proxy's, Docker's and the host
//! firewall's tables stay as they are). Drift is found by listing the table and comparing it with
//! the listing taken right after the last write.

use ipnet::{Ipv4Net, Ipv6Net};
use tokio::process::Command;

/// The table's family and name, as `nft list table inet twill` takes them.
pub const TABLE: &str = "twill";

/// The cluster networks whose pods are masqueraded when they talk to the outside.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

/// The postrouting chain's base-chain line, as nft writes and lists it.
const CHAIN_HOOK: &str = "type nat hook postrouting priority srcnat; policy accept;";

/// The rules of twill's postrouting chain for `n`, in order, as nft lists them back.
pub fn rules(n: &Networks) -> Vec<String> {
    let mut rules = Vec::new();
    // Per family: (nft's match keyword, the cluster network, its multicast range).
    let families = [
        n.v4.map(|net| ("ip", net.trunc().to_string(), "224.0.0.0/4")),
        n.v6.map(|net| ("ip6", net.trunc().to_string(), "ff00::/8")),
    ];
    for (ip, net, multicast) in families.into_iter().flatten() {
        rules.push(format!(
            "{ip} saddr {net} {ip} daddr {net} return comment \"pod to pod: never NAT\""
        ));
        rules.push(format!(
            "{ip} saddr {net} {ip} daddr {multicast} return comment \"multicast stays as it is\""
        ));
        rules.push(format!(
            "{ip} saddr {net} masquerade fully-random comment \"pods to the outside\""
        ));
    }
    rules
}

/// The `nft -f` script that replaces twill's table with the rules for `n`, in one transaction.
/// Declaring the table first makes the delete valid when it does not exist yet.
pub fn ruleset(n: &Networks) -> String {
    let mut s = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
    s.push_str(&format!("table inet {TABLE} {{\n"));
    s.push_str("  chain postrouting {\n");
    s.push_str(&format!("    {CHAIN_HOOK}\n"));
    for r in rules(n) {
        s.push_str(&format!("    {r}\n"));
    }
    s.push_str("  }\n}\n");
    s
}

/// How a listing of twill's table (`nft list table inet twill`) differs from the rules for a
/// set of networks: rules missing, lines that should not be there. Read-only, for `twill doctor`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    pub missing: Vec<String>,
    pub extra: Vec<String>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

/// Compares `listing` with what [`ruleset`] writes for `n`; counters and handles are not
/// written by twill, so a listing with them (`nft -a`) is not what this reads.
pub fn drift(listing: &str, n: &Networks) -> Drift {
    let want = rules(n);
    let lines: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let frame = [
        format!("table inet {TABLE} {{"),
        "chain postrouting {".to_string(),
        CHAIN_HOOK.to_string(),
        "}".to_string(),
    ];
    let mut d = Drift {
        missing: want
            .iter()
            .filter(|w| !lines.contains(&w.as_str()))
            .cloned()
            .collect(),
        extra: lines
            .iter()
            .filter(|l| !want.iter().any(|w| w == *l) && !frame.iter().any(|f| f == *l))
            .map(|l| l.to_string())
            .collect(),
    };
    if !lines.contains(&CHAIN_HOOK) {
        d.missing.insert(0, CHAIN_HOOK.to_string());
    }
    d
}

/// Whether `listing` is exactly the table [`ruleset`] writes for `n`, rules in order: a table
/// an earlier agent left is then taken over as it is, not rewritten, so a restart changes
/// nothing in the kernel.
pub fn is_exactly(listing: &str, n: &Networks) -> bool {
    let lines: Vec<&str> = listing
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut want = vec![
        format!("table inet {TABLE} {{"),
        "chain postrouting {".to_string(),
        CHAIN_HOOK.to_string(),
    ];
    want.extend(rules(n));
    want.extend(["}".to_string(), "}".to_string()]);
    lines == want
}

/// The script that removes twill's table, whether or not it exists.
pub fn removal() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "the nft tool is needed for pod masquerade (Debian package nftables); install it or \
         pass --ip-masq=false: {0}"
    )]
    Missing(std::io::Error),
    #[error("nft {what} failed: {stderr}")]
    Failed { what: &'static str, stderr: String },
}

/// Runs `nft` with `args`, feeding `script` on stdin when given.
pub(crate) async fn nft(
    args: &[&str],
    script: Option<&str>,
    what: &'static str,
) -> Result<String, NftError> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Missing)?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Some(s) = script {
            stdin
                .write_all(s.as_bytes())
                .await
                .map_err(|e| NftError::Failed {
                    what,
                    stderr: e.to_string(),
                })?;
        }
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NftError::Failed {
            what,
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NftError::Failed {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that `nft` can be run, so a missing tool is reported at start.
pub async fn check_tool() -> Result<(), NftError> {
    nft(&["--version"], None, "--version").await.map(|_| ())
}

/// What happened in a [`Masquerade::sync`] pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    Unchanged,
    /// Written for the first time or for new networks.
    Written,
    /// Someone changed or removed the table; it was written again.
    Repaired,
    Removed,
}

/// Keeps twill's table equal to the rules for the wanted networks (or absent).
#[derive(Default)]
pub struct Masquerade {
    /// The networks last written and the table's listing right after.
    written: Option<(Networks, String)>,
}

impl Masquerade {
    /// twill's table as nft lists it; `None` when it does not exist.
    pub async fn listing() -> Result<Option<String>, NftError> {
        match nft(&["list", "table", "inet", TABLE], None, "list").await {
            Ok(s) => Ok(Some(s)),
            // Absent (removed by `nft flush ruleset`, say): the caller writes it again.
            Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Brings the table to the rules for `want`; `None` removes it.
    pub async fn sync(&mut self, want: Option<&Networks>) -> Result<Sync, NftError> {
        let Some(want) = want else {
            let present = Self::listing().await?.is_some();
            if present {
                nft(&["-f", "-"], Some(&removal()), "delete table").await?;
            }
            self.written = None;
            return Ok(if present {
                Sync::Removed
            } else {
                Sync::Unchanged
            });
        };
        let now = Self::listing().await?;
        if let (None, Some(cur)) = (&self.written, &now) {
            if is_exactly(cur, want) {
                self.written = Some((want.clone(), cur.clone()));
                return Ok(Sync::Unchanged);
            }
        }
        let outcome = match (&self.written, &now) {
            (Some((n, listed)), Some(cur)) if n == want && listed == cur => {
                return Ok(Sync::Unchanged)
            }
            (Some((n, _)), _) if n == want => Sync::Repaired,
            _ => Sync::Written,
        };
        nft(&["-f", "-"], Some(&ruleset(want)), "write table").await?;
        let listed = Self::listing().await?.unwrap_or_default();
        self.written = Some((want.clone(), listed));
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_taken_over_only_when_it_is_exactly_ours() {
        let n = Networks {
            v4: Some("10.244.0.0/16".parse().unwrap()),
            v6: None,
        };
        // As `nft list table inet twill` prints what ruleset() wrote (tabs, blank lines).
        let listed = format!(
            "table inet twill {{\n\tchain postrouting {{\n\t\t{CHAIN_HOOK}\n{}\t}}\n}}\n",
            rules(&n)
                .iter()
                .map(|r| format!("\t\t{r}\n"))
                .collect::<String>()
        );
        assert!(is_exactly(&listed, &n));
        let mut swapped = rules(&n);
        swapped.swap(0, 2);
        let reordered = listed
            .replace(&rules(&n)[0], "X")
            .replace(&rules(&n)[2], &swapped[2])
            .replace("X", &swapped[0]);
        assert!(
            !is_exactly(&reordered, &n),
            "order matters: a masquerade before its exemption"
        );
        let other = Networks {
            v4: Some("10.245.0.0/16".parse().unwrap()),
            v6: None,
        };
        assert!(!is_exactly(&listed, &other));
        let extra = listed.replace("\t}\n}", "\t\tip saddr 1.2.3.4 accept\n\t}\n}");
        assert!(!is_exactly(&extra, &n));
    }

    #[test]
    fn pods_masquerade_to_the_outside_and_never_between_themselves() {
        let s = ruleset(&Networks {
            v4: Some("10.244.0.0/16".parse().unwrap()),
            v6: Some("fd00:10:244::/56".parse().unwrap()),
        });
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle:?} not in\n{s}"))
        };
        // Exemptions come before the masquerade they exempt from, per family.
        assert!(
            at("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return")
                < at("ip saddr 10.244.0.0/16 masquerade fully-random")
        );
        assert!(
            at("ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244::/56 return")
                < at("ip6 saddr fd00:10:244::/56 masquerade fully-random")
        );
        // One transaction: the old table goes and the new one comes together.
        assert_eq!(lines[0], "table inet twill {}");
        assert_eq!(lines[1], "delete table inet twill");
        assert!(s.contains("type nat hook postrouting priority srcnat; policy accept;"));
    }

    #[test]
    fn drift_is_nothing_for_what_nft_lists_back_and_names_each_difference() {
        let n = Networks {
            v4: Some("10.244.0.0/16".parse().unwrap()),
            v6: None,
        };
        // What `nft list table inet twill` printed for this ruleset (tabs, no script lines).
        let listed = "table inet twill {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return comment \"pod to pod: never NAT\"\n\t\tip saddr 10.244.0.0/16 ip daddr 224.0.0.0/4 return comment \"multicast stays as it is\"\n\t\tip saddr 10.244.0.0/16 masquerade fully-random comment \"pods to the outside\"\n\t}\n}\n";
        assert!(drift(listed, &n).is_empty(), "{:?}", drift(listed, &n));

        let tampered = listed
            .replace("\t\tip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return comment \"pod to pod: never NAT\"\n", "")
            .replace("}\n}", "\tip saddr 10.0.0.0/8 accept\n\t}\n}");
        let d = drift(&tampered, &n);
        assert_eq!(
            d.missing,
            vec!["ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return comment \"pod to pod: never NAT\"".to_string()]
        );
        assert_eq!(d.extra, vec!["ip saddr 10.0.0.0/8 accept".to_string()]);

        // Rules for another network: every wanted rule missing, the old ones extra.
        let other = Networks {
            v4: Some("10.245.0.0/16".parse().unwrap()),
            v6: None,
        };
        let d = drift(listed, &other);
        assert_eq!((d.missing.len(), d.extra.len()), (3, 3));
    }

    #[test]
    fn one_family_only_has_no_rules_for_the_other() {
        let s = ruleset(&Networks {
            v4: Some("10.244.0.0/16".parse().unwrap()),
            v6: None,
        });
        assert!(!s.contains("ip6"), "{s}");
        assert_eq!(s.matches("masquerade").count(), 1);
    }
}

//! Pod traffic through a FORWARD chain that drops: Docker (and many host firewalls written for
//! iptables) set the `filter` table's FORWARD policy to drop, which would stop every forwarded
//! pod packet. As flannel does with its FLANNEL-FWD rules, twill accepts traffic from and to the
//! pod network at the head of that chain — only when the chain exists, only rules carrying
//! twill's comment are ever changed or removed, and nothing else in the table is touched. The
//! rules are plain enough for `iptables -L` (iptables-nft) to show them.

use crate::masquerade::{nft, Networks, NftError};

/// Marks twill's rules in chains it does not own.
pub const COMMENT: &str = "twill: pod network";

/// The chains whose drop would stop pod traffic: (nft family, table, chain).
const CHAINS: [(&str, &str, &str); 2] = [("ip", "filter", "FORWARD"), ("ip6", "filter", "FORWARD")];

/// The rules twill wants in a chain of `family` for `n` (none when the cluster has no network of
/// that family).
pub fn wanted(family: &str, n: &Networks) -> Vec<String> {
    let net = match family {
        "ip" => n.v4.map(|v| v.trunc().to_string()),
        _ => n.v6.map(|v| v.trunc().to_string()),
    };
    net.map(|net| {
        ["saddr", "daddr"]
            .iter()
            .map(|dir| format!("{family} {dir} {net} counter accept comment \"{COMMENT}\""))
            .collect()
    })
    .unwrap_or_default()
}

/// Twill's rules in a `nft -a list chain` listing: (rule as written, handle), counters taken
/// out so a rule that counted packets still compares equal.
pub fn ours(listing: &str) -> Vec<(String, u64)> {
    let marker = format!("comment \"{COMMENT}\"");
    listing
        .lines()
        .filter(|l| l.contains(&marker))
        .filter_map(|l| {
            let (rule, handle) = l.trim().rsplit_once(" # handle ")?;
            let handle = handle.trim().parse().ok()?;
            let words: Vec<&str> = rule.split_whitespace().collect();
            let mut out = Vec::new();
            let mut i = 0;
            while i < words.len() {
                // "counter packets N bytes M" reads back as written: "counter".
                if words[i] == "counter" && words.get(i + 1) == Some(&"packets") {
                    out.push("counter");
                    i += 5;
                    continue;
                }
                out.push(words[i]);
                i += 1;
            }
            Some((out.join(" "), handle))
        })
        .collect()
}

/// The transaction that turns `present` into `want` in one chain: twill's old rules out, the
/// wanted ones inserted at the head; `None` when nothing is to do.
pub fn script(
    chain: (&str, &str, &str),
    present: &[(String, u64)],
    want: &[String],
) -> Option<String> {
    let have: Vec<&String> = present.iter().map(|(r, _)| r).collect();
    if have.len() == want.len() && want.iter().all(|w| have.contains(&w)) {
        return None;
    }
    let (family, table, name) = chain;
    let mut s = String::new();
    for (_, handle) in present {
        s.push_str(&format!(
            "delete rule {family} {table} {name} handle {handle}\n"
        ));
    }
    for r in want.iter().rev() {
        s.push_str(&format!("insert rule {family} {table} {name} {r}\n"));
    }
    Some(s)
}

/// Brings every existing FORWARD chain to the wanted rules (none with `want` = `None`); returns
/// the chains it changed.
pub async fn sync(want: Option<&Networks>) -> Result<Vec<String>, NftError> {
    let mut changed = Vec::new();
    for chain in CHAINS {
        let (family, table, name) = chain;
        let listing = match nft(&["-a", "list", "chain", family, table, name], None, "list").await {
            Ok(l) => l,
            Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file") => continue,
            Err(e) => return Err(e),
        };
        let rules = want.map(|n| wanted(family, n)).unwrap_or_default();
        if let Some(s) = script(chain, &ours(&listing), &rules) {
            nft(&["-f", "-"], Some(&s), "forward rules").await?;
            changed.push(format!("{family} {table} {name}"));
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rules_with_our_comment_are_read_and_counters_do_not_count() {
        let listing = "table ip filter {\n\tchain FORWARD { # handle 1\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tip saddr 10.244.0.0/16 counter packets 7 bytes 588 accept comment \"twill: pod network\" # handle 9\n\t\tip daddr 10.244.0.0/16 counter packets 0 bytes 0 accept comment \"twill: pod network\" # handle 10\n\t\tcounter packets 3 bytes 9 jump DOCKER-USER # handle 4\n\t}\n}\n";
        let n = Networks {
            v4: Some("10.244.0.0/16".parse().unwrap()),
            v6: None,
        };
        let present = ours(listing);
        assert_eq!(present.len(), 2);
        assert_eq!(present[0].1, 9);
        let chain = ("ip", "filter", "FORWARD");
        assert_eq!(script(chain, &present, &wanted("ip", &n)), None, "in place");
        assert!(wanted("ip6", &n).is_empty());

        // Another network: ours out by handle, the new ones in; DOCKER-USER's jump untouched.
        let other = Networks {
            v4: Some("10.42.0.0/16".parse().unwrap()),
            v6: None,
        };
        let s = script(chain, &present, &wanted("ip", &other)).unwrap();
        assert_eq!(
            s.lines().collect::<Vec<_>>(),
            [
                "delete rule ip filter FORWARD handle 9",
                "delete rule ip filter FORWARD handle 10",
                "insert rule ip filter FORWARD ip daddr 10.42.0.0/16 counter accept comment \"twill: pod network\"",
                "insert rule ip filter FORWARD ip saddr 10.42.0.0/16 counter accept comment \"twill: pod network\"",
            ]
        );
        assert!(!s.contains("handle 4"));
        // Nothing wanted: ours go.
        assert_eq!(script(chain, &present, &[]).unwrap().lines().count(), 2);
    }
}

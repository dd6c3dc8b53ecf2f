//! Finding a multi-homed node's per-source routing tables, and resolving the ones twill is asked
//! to manage (`--source-table`). Pure: the kernel's rules, interfaces and routes come in as
//! plain values, so the choices are tested without root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::desired::{ManagedTable, RESERVED_TABLES};

/// A policy rule as the kernel reports it, reduced to what decides whether it selects a table
/// by source address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleView {
    /// The `from` selector; `None` for `from all`.
    pub src: Option<Ipv4Net>,
    /// The table it looks up; `None` for actions other than a lookup (goto, blackhole, …).
    pub table: Option<u32>,
}

/// Tables that some rule sends traffic from one of `local` addresses to: those routes answer
/// for that address, so they need the pod routes. `from all` rules are the main routing, not
/// a per-source choice; the kernel's own tables are never counted.
pub fn found_tables(rules: &[RuleView], local: &[Ipv4Addr]) -> BTreeSet<u32> {
    rules
        .iter()
        .filter(|r| {
            r.src
                .is_some_and(|src| src.prefix_len() > 0 && local.iter().any(|a| src.contains(a)))
        })
        .filter_map(|r| r.table)
        .filter(|t| !RESERVED_TABLES.contains(t))
        .collect()
}

/// Which address a `--source-table` is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The interface's first IPv4 address.
    Iface(String),
    Addr(Ipv4Addr),
}

/// One `--source-table SELECTOR=TABLE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub selector: Selector,
    pub table: u32,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0:?}: expected IFACE=TABLE or ADDRESS=TABLE, e.g. eth1=100")]
    Shape(String),
    #[error("{0:?} is not a routing table number (1 to 4294967295)")]
    Table(String),
    #[error(
        "table {0} is one of the kernel's own (0 unspec, 253 default, 254 main, 255 local); \
         pick another"
    )]
    Reserved(u32),
    #[error("{0:?} is not a valid interface name")]
    Name(String),
    #[error("interface {0:?} does not exist or has no IPv4 address")]
    NoIface(String),
    #[error("address {0} is on no interface of this node")]
    NoAddr(Ipv4Addr),
    #[error("table {table} is given for both {a} and {b}")]
    Twice { table: u32, a: String, b: String },
}

impl std::str::FromStr for TableSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (sel, table) = s
            .split_once('=')
            .ok_or_else(|| SpecError::Shape(s.to_string()))?;
        let (sel, table) = (sel.trim(), table.trim());
        let table: u32 = table
            .parse()
            .map_err(|_| SpecError::Table(table.to_string()))?;
        if RESERVED_TABLES.contains(&table) {
            return Err(SpecError::Reserved(table));
        }
        let selector = match sel.parse::<Ipv4Addr>() {
            Ok(a) => Selector::Addr(a),
            Err(_) if crate::facts::is_ifname(sel) && !sel.contains('\0') => {
                Selector::Iface(sel.to_string())
            }
            Err(_) => return Err(SpecError::Name(sel.to_string())),
        };
        Ok(TableSpec { selector, table })
    }
}

impl std::fmt::Display for TableSpec {
    /// The flag's own form, so a spec written out parses back the same.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.selector {
            Selector::Iface(name) => write!(f, "{name}={}", self.table),
            Selector::Addr(a) => write!(f, "{a}={}", self.table),
        }
    }
}

/// An interface as the resolver needs it: name, index and IPv4 prefixes.
#[derive(Clone, Debug)]
pub struct IfaceView {
    pub name: String,
    pub addrs: Vec<Ipv4Net>,
}

/// Turns the specs into tables to keep, from the interfaces now present; `gateway` gives the
/// main table's default gateway through an interface. A spec whose interface or address is
/// missing is an error naming it (the caller logs it and keeps retrying: addresses come late).
pub fn resolve(
    specs: &[TableSpec],
    ifaces: &[IfaceView],
    gateway: impl Fn(&str) -> Option<Ipv4Addr>,
) -> (Vec<ManagedTable>, Vec<SpecError>) {
    let mut out: Vec<ManagedTable> = Vec::new();
    let mut errors = Vec::new();
    for spec in specs {
        let found = match &spec.selector {
            Selector::Iface(name) => ifaces
                .iter()
                .find(|i| &i.name == name)
                .and_then(|i| i.addrs.first().map(|a| (i.name.clone(), *a)))
                .ok_or_else(|| SpecError::NoIface(name.clone())),
            Selector::Addr(addr) => ifaces
                .iter()
                .find_map(|i| {
                    i.addrs
                        .iter()
                        .find(|a| a.addr() == *addr)
                        .map(|a| (i.name.clone(), *a))
                })
                .ok_or(SpecError::NoAddr(*addr)),
        };
        match found {
            Ok((iface, addr)) => {
                if let Some(prev) = out.iter().find(|m| m.table == spec.table) {
                    errors.push(SpecError::Twice {
                        table: spec.table,
                        a: prev.addr.addr().to_string(),
                        b: addr.addr().to_string(),
                    });
                    continue;
                }
                let gw = gateway(&iface).filter(|g| addr.contains(g));
                out.push(ManagedTable {
                    table: spec.table,
                    gateway: gw,
                    iface,
                    addr,
                });
            }
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(src: Option<&str>, table: Option<u32>) -> RuleView {
        RuleView {
            src: src.map(|s| s.parse().unwrap()),
            table,
        }
    }

    #[test]
    fn tables_of_rules_from_local_addresses_are_found() {
        let local: Vec<Ipv4Addr> = vec![
            "192.0.2.1".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        ];
        let rules = [
            rule(None, Some(255)),
            rule(Some("198.51.100.1/32"), Some(100)),
            rule(Some("198.51.100.0/24"), Some(101)),
            rule(Some("203.0.113.0/24"), Some(102)),
            rule(None, Some(103)),
            rule(Some("192.0.2.1/32"), None),
            rule(Some("192.0.2.1/32"), Some(254)),
            rule(None, Some(254)),
        ];
        assert_eq!(found_tables(&rules, &local), [100, 101].into());
    }

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        assert_eq!(
            "eth1=100".parse::<TableSpec>(),
            Ok(TableSpec {
                selector: Selector::Iface("eth1".into()),
                table: 100
            })
        );
        assert_eq!(
            " 198.51.100.1 = 7 "
                .parse::<TableSpec>()
                .map(|s| s.selector),
            Ok(Selector::Addr("198.51.100.1".parse().unwrap()))
        );
        assert!(matches!(
            "eth1".parse::<TableSpec>(),
            Err(SpecError::Shape(_))
        ));
        assert!(matches!(
            "eth1=x".parse::<TableSpec>(),
            Err(SpecError::Table(_))
        ));
        assert!(matches!(
            "eth1=-1".parse::<TableSpec>(),
            Err(SpecError::Table(_))
        ));
        assert_eq!(
            "eth1=254".parse::<TableSpec>(),
            Err(SpecError::Reserved(254))
        );
        assert!(matches!(
            "averyveryverylongname=5".parse::<TableSpec>(),
            Err(SpecError::Name(_))
        ));
        assert!(matches!(
            "a/b=5".parse::<TableSpec>(),
            Err(SpecError::Name(_))
        ));
    }

    #[test]
    fn specs_resolve_to_the_interface_address_and_its_gateway() {
        let ifaces = vec![
            IfaceView {
                name: "eth0".into(),
                addrs: vec!["192.0.2.1/24".parse().unwrap()],
            },
            IfaceView {
                name: "eth1".into(),
                addrs: vec!["198.51.100.1/24".parse().unwrap()],
            },
        ];
        let gw = |i: &str| match i {
            "eth1" => Some("198.51.100.254".parse().unwrap()),
            // A gateway off the address's prefix is not this address's gateway.
            "eth0" => Some("203.0.113.1".parse().unwrap()),
            _ => None,
        };
        let specs: Vec<TableSpec> = [
            "eth1=100",
            "192.0.2.1=101",
            "eth9=102",
            "203.0.113.5=103",
            "eth0=100",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let (tables, errors) = resolve(&specs, &ifaces, gw);
        assert_eq!(
            tables,
            vec![
                ManagedTable {
                    table: 100,
                    iface: "eth1".into(),
                    addr: "198.51.100.1/24".parse().unwrap(),
                    gateway: Some("198.51.100.254".parse().unwrap()),
                },
                ManagedTable {
                    table: 101,
                    iface: "eth0".into(),
                    addr: "192.0.2.1/24".parse().unwrap(),
                    gateway: None,
                },
            ]
        );
        assert_eq!(
            errors,
            vec![
                SpecError::NoIface("eth9".into()),
                SpecError::NoAddr("203.0.113.5".parse().unwrap()),
                SpecError::Twice {
                    table: 100,
                    a: "198.51.100.1".into(),
                    b: "192.0.2.1".into()
                },
            ]
        );
    }
}

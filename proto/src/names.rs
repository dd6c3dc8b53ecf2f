//! Node names: one rule for the allocator that hands out leases, the agent that asks for one,
//! and the BGP settings that name nodes.
//!
//! twill's node names are Kubernetes node names, and Kubernetes holds those to a DNS-1123
//! subdomain (apimachinery's `IsDNS1123Subdomain`, RFC 1123 §2.1 host names in lowercase). With
//! the same rule every Kubernetes node is accepted as it is, and whatever twill accepts is also
//! usable where a host name goes. Unlike a DNS label, Kubernetes does not cap each part at 63
//! bytes, so neither does this.

/// Kubernetes' limit, which is DNS's: 253 bytes of text make a 255-byte wire-format name.
pub const MAX_NODE_NAME_LEN: usize = 253;

/// How much of a refused name an error quotes: enough to recognise it in a log, and bounded
/// because a broken client may send megabytes, and the allocator keeps its answers in a
/// replicated table.
const QUOTED_CHARS: usize = 64;

const RULE: &str = "a node name is a DNS-1123 subdomain, as in Kubernetes: at most 253 bytes of \
                    lowercase letters, digits, '-' and '.', each dot-separated label starting \
                    and ending with a letter or digit";

/// What is wrong with a name; byte offsets count from the start of the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameFault {
    #[error("it is empty")]
    Empty,
    #[error("it is {len} bytes long")]
    TooLong { len: usize },
    #[error("{ch:?} at byte {at} is uppercase")]
    Uppercase { at: usize, ch: char },
    #[error("{ch:?} at byte {at} is not a lowercase letter, digit, '-' or '.'")]
    Char { at: usize, ch: char },
    #[error("the label at byte {at} is empty (a leading, trailing or doubled '.')")]
    EmptyLabel { at: usize },
    #[error("'-' at byte {at} starts or ends a label")]
    Hyphen { at: usize },
}

/// A refused node name, quoted by its first characters only.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid node name {quoted}: {fault}; {rule}", rule = RULE)]
pub struct NodeNameError {
    quoted: String,
    fault: NodeNameFault,
}

impl NodeNameError {
    fn new(name: &str, fault: NodeNameFault) -> Self {
        NodeNameError {
            quoted: quote(name),
            fault,
        }
    }

    pub fn fault(&self) -> NodeNameFault {
        self.fault
    }
}

/// Quotes untrusted text for an error message or a log line: its first 64 characters, and its
/// length when it is longer, so a megabyte of input never becomes a megabyte of error.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}

/// Checks `name` against Kubernetes' node-name rule.
pub fn validate_node_name(name: &str) -> Result<(), NodeNameError> {
    let fail = |fault| Err(NodeNameError::new(name, fault));
    if name.is_empty() {
        return fail(NodeNameFault::Empty);
    }
    // Before looking at a single character, so a huge name costs nothing to refuse.
    if name.len() > MAX_NODE_NAME_LEN {
        return fail(NodeNameFault::TooLong { len: name.len() });
    }
    let mut start = 0;
    for label in name.split('.') {
        if label.is_empty() {
            return fail(NodeNameFault::EmptyLabel { at: start });
        }
        for (i, ch) in label.char_indices() {
            let at = start + i;
            match ch {
                'a'..='z' | '0'..='9' | '-' => {}
                'A'..='Z' => return fail(NodeNameFault::Uppercase { at, ch }),
                _ => return fail(NodeNameFault::Char { at, ch }),
            }
        }
        if label.starts_with('-') {
            return fail(NodeNameFault::Hyphen { at: start });
        }
        if label.ends_with('-') {
            return fail(NodeNameFault::Hyphen {
                at: start + label.len() - 1,
            });
        }
        start += label.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(name: &str) -> Option<NodeNameFault> {
        validate_node_name(name).err().map(|e| e.fault())
    }

    #[test]
    fn kubernetes_style_names_are_accepted() {
        for n in [
            "n1",
            "a",
            "7",
            "worker-0",
            "ip-10-0-3-17.eu-west-1.compute.internal",
            "node.example.com",
            "0-0.a--b",
        ] {
            assert_eq!(validate_node_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn empty_name_is_refused() {
        assert_eq!(fault(""), Some(NodeNameFault::Empty));
    }

    #[test]
    fn uppercase_is_refused_with_its_position() {
        assert_eq!(
            fault("node-A"),
            Some(NodeNameFault::Uppercase { at: 5, ch: 'A' })
        );
    }

    #[test]
    fn underscore_space_and_non_ascii_are_refused() {
        assert_eq!(
            fault("node_1"),
            Some(NodeNameFault::Char { at: 4, ch: '_' })
        );
        assert_eq!(
            fault("bad name"),
            Some(NodeNameFault::Char { at: 3, ch: ' ' })
        );
        assert_eq!(fault("nöde"), Some(NodeNameFault::Char { at: 1, ch: 'ö' }));
        assert_eq!(fault("n1\n"), Some(NodeNameFault::Char { at: 2, ch: '\n' }));
    }

    #[test]
    fn hyphen_at_either_end_of_a_label_is_refused() {
        assert_eq!(fault("-node"), Some(NodeNameFault::Hyphen { at: 0 }));
        assert_eq!(fault("node-"), Some(NodeNameFault::Hyphen { at: 4 }));
        assert_eq!(fault("a.-b"), Some(NodeNameFault::Hyphen { at: 2 }));
        assert_eq!(fault("a-.b"), Some(NodeNameFault::Hyphen { at: 1 }));
    }

    #[test]
    fn leading_trailing_and_doubled_dots_are_refused() {
        assert_eq!(fault(".node"), Some(NodeNameFault::EmptyLabel { at: 0 }));
        assert_eq!(fault("node."), Some(NodeNameFault::EmptyLabel { at: 5 }));
        assert_eq!(fault("a..b"), Some(NodeNameFault::EmptyLabel { at: 2 }));
        assert_eq!(fault("."), Some(NodeNameFault::EmptyLabel { at: 0 }));
    }

    #[test]
    fn exactly_253_bytes_is_accepted_and_254_refused() {
        // Labels longer than 63 bytes are fine: Kubernetes checks the whole name only.
        let ok = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        assert_eq!(ok.len(), 253);
        assert_eq!(validate_node_name(&ok), Ok(()));
        let long = format!("{ok}c");
        assert_eq!(fault(&long), Some(NodeNameFault::TooLong { len: 254 }));
    }

    #[test]
    fn five_megabyte_name_is_refused_and_quoted_short() {
        let huge = "x".repeat(5 * 1024 * 1024);
        let e = validate_node_name(&huge).expect_err("too long");
        assert_eq!(
            e.fault(),
            NodeNameFault::TooLong {
                len: 5 * 1024 * 1024
            }
        );
        let msg = e.to_string();
        assert!(msg.len() < 600, "{} bytes: {msg}", msg.len());
        assert!(msg.contains(&format!("\"{}\"…", "x".repeat(64))), "{msg}");
        assert!(!msg.contains(&"x".repeat(65)), "{msg}");
        assert!(msg.contains("5242880 bytes"), "{msg}");
    }

    #[test]
    fn quoting_cuts_on_a_character_boundary() {
        let e = validate_node_name(&"é".repeat(100)).expect_err("not ASCII");
        assert!(e.to_string().contains(&"é".repeat(64)), "{e}");
    }

    #[test]
    fn message_quotes_the_name_and_states_the_rule() {
        let msg = validate_node_name("Node_1").expect_err("bad").to_string();
        assert!(msg.contains("\"Node_1\""), "{msg}");
        assert!(msg.contains("DNS-1123"), "{msg}");
        assert!(msg.contains("lowercase"), "{msg}");
    }
}

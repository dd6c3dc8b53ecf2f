//! Which clients and controllers can talk. Every call carries the client's API level and
//! release in request metadata; a controller accepts levels from [`MIN_API`] to [`API`] and
//! refuses the rest with a message that says which side to upgrade. A call without the
//! metadata comes from a client older than this check, which spoke level 1.
//!
//! Bump [`API`] when a message or a meaning changes so that an older controller would serve
//! a newer client wrongly; raise [`MIN_API`] when support for an old level is dropped.

/// The API level this build speaks.
pub const API: u32 = 1;
/// The oldest client level this build still serves.
pub const MIN_API: u32 = 1;
/// Request metadata carrying the caller's API level.
pub const API_HEADER: &str = "x-twill-api";
/// Request metadata carrying the caller's release, for messages and logs.
pub const RELEASE_HEADER: &str = "x-twill-release";
/// This build's release.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// Why a client at `level` (release `release`, when it said) may not talk to this controller;
/// `None` when it may. A level that does not parse counts as too new to understand.
pub fn refusal(level: Option<&str>, release: Option<&str>) -> Option<String> {
    let client = match release {
        Some(r) if !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_graphic()) => {
            format!("twill {r}")
        }
        _ => "the client".to_string(),
    };
    let level = match level {
        None => 1,
        Some(l) => l.trim().parse::<u32>().unwrap_or(u32::MAX),
    };
    if level > API {
        Some(format!(
            "{client} speaks API level {level}, newer than this controller (twill {RELEASE}, levels {MIN_API} to {API}): upgrade the controller members first, then the agents"
        ))
    } else if level < MIN_API {
        Some(format!(
            "{client} speaks API level {level}, older than this controller (twill {RELEASE}) still serves (levels {MIN_API} to {API}): upgrade it"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_in_range_pass_and_others_say_which_side_to_upgrade() {
        assert_eq!(refusal(None, None), None, "clients from before the check");
        assert_eq!(refusal(Some("1"), Some("0.1.0")), None);
        let newer = refusal(Some("7"), Some("0.9.0")).expect("refused");
        assert!(
            newer.starts_with("twill 0.9.0 speaks API level 7"),
            "{newer}"
        );
        assert!(
            newer.contains("upgrade the controller members first"),
            "{newer}"
        );
        let older = refusal(Some("0"), None).expect("refused");
        assert!(
            older.starts_with("the client speaks API level 0"),
            "{older}"
        );
        assert!(older.ends_with("upgrade it"), "{older}");
        assert!(refusal(Some("banana"), Some("\u{1b}[31m"))
            .is_some_and(|m| m.starts_with("the client")));
    }
}

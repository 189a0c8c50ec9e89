//! Naming rules for topics and groups (they become file and directory names).

use crate::error::{Error, Result};

/// Longest topic or group name.
pub const MAX_NAME_LEN: usize = 249;

/// Checks a topic or group name: 1 to 249 characters from `[A-Za-z0-9._-]`, not starting
/// with `.` (hidden entries in the data directory are the node's own).
pub fn validate(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 249 characters");
    }
    if name.starts_with('.') {
        return invalid("it starts with `.`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        for ok in ["sensors", "a", "iot.site-1_raw", &"x".repeat(249)] {
            assert!(super::validate(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "with space",
            "slash/name",
            "é",
            &"x".repeat(250),
        ] {
            assert!(super::validate(bad).is_err(), "{bad}");
        }
    }
}

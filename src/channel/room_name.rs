//! What a room name may be: exactly what the README and the web app's lobby promise, ASCII
//! letters, digits, `.`, `_` and `-`, at least one and at most the configured length.
//!
//! Anything else (spaces, control characters, bidi overrides, zero-width characters, letters
//! from other scripts) is refused with a reason a person can act on, so two rooms can never
//! look alike on screen while being different names on the server (for the same reason the
//! channel folds a name to lower case: case never makes two rooms). Keep it in step with
//! `validateRoomName` in `web/src/app.js`.

/// Why a room name is refused; the `Display` text is the join error's `reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    #[error("room name is empty")]
    Empty,
    #[error("room name is longer than {max} characters")]
    TooLong { max: usize },
    #[error("room name may only contain letters, digits, '.', '_' and '-'")]
    BadCharacter,
}

/// Whether `b` may appear in a room name.
pub fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Checks `name` (the topic without its `room:` prefix) against the rules and `max` bytes.
/// Allowed names are ASCII, so bytes and characters count the same.
pub fn check(name: &str, max: usize) -> Result<(), RoomNameError> {
    if name.is_empty() {
        return Err(RoomNameError::Empty);
    }
    if !name.bytes().all(allowed) {
        return Err(RoomNameError::BadCharacter);
    }
    if name.len() > max {
        return Err(RoomNameError::TooLong { max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_alphabet_up_to_the_limit_is_accepted() {
        for ok in ["a", "Team-1", "x.y_z", "...", "0", &"a".repeat(64)] {
            assert_eq!(check(ok, 64), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn look_alikes_and_invisible_characters_are_refused() {
        for bad in [
            "room\u{202e}cba", // right-to-left override
            "ro\u{200b}om",    // zero-width space
            "room\u{2066}",    // left-to-right isolate
            "\u{feff}room",    // byte-order mark
            "r\u{043e}om",     // Cyrillic o
            "caf\u{e9}",       // é: a letter, but not ASCII
            "two words",
            "tab\there",
            "nul\0",
            "esc\u{1b}[31m",
            "a/b",
            "a:b",
        ] {
            assert_eq!(check(bad, 64), Err(RoomNameError::BadCharacter), "{bad:?}");
        }
    }

    #[test]
    fn empty_and_long_names_say_why() {
        assert_eq!(check("", 64), Err(RoomNameError::Empty));
        let long = "b".repeat(65);
        let e = check(&long, 64).unwrap_err();
        assert_eq!(e, RoomNameError::TooLong { max: 64 });
        assert_eq!(e.to_string(), "room name is longer than 64 characters");
        // A bad character is the more useful reason when both apply.
        assert_eq!(
            check(&"\u{e9}".repeat(40), 64),
            Err(RoomNameError::BadCharacter)
        );
    }
}

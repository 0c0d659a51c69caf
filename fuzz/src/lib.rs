//! What the fuzz targets share: the line-based input format of the stateful targets.
//!
//! The stateful targets (`phoenix_socket`, `media_session`) read their input as a script, one
//! operation per line, so that a crash input reads like a transcript, a wire transcript turns
//! into a seed with a text editor, and libFuzzer's byte mutations still mostly produce valid
//! scripts. Each target documents its operations. This crate never touches product state
//! itself: it only decodes scripts.

/// The input as lines (`\n`-separated, a trailing `\r` dropped). Bytes that are not UTF-8
/// become U+FFFD, so a mutated byte costs one line, not the whole input.
pub fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
        .collect()
}

/// Splits an operation line into its code (first char) and the rest.
pub fn op(line: &str) -> Option<(char, &str)> {
    let mut chars = line.chars();
    let code = chars.next()?;
    Some((code, chars.as_str()))
}

/// A leading decimal number of at most 6 digits (0 when there is none), and what follows it
/// without one separating space.
pub fn number(rest: &str) -> (u64, &str) {
    let digits = rest.bytes().take(6).take_while(u8::is_ascii_digit).count();
    let n = rest[..digits].parse().unwrap_or(0);
    let tail = &rest[digits..];
    (n, tail.strip_prefix(' ').unwrap_or(tail))
}

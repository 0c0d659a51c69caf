//! The escaping, truncating `Display` wrappers.

use std::fmt::{self, Write as _};

/// Longest escaped rendering of one client-supplied field, in bytes (the marker comes on top).
pub const MAX_FIELD_BYTES: usize = 200;

/// Shows client-supplied text in a log line: control characters, backslashes and invisible or
/// direction-changing characters are escaped (`\x1b`, `\r`, `\u{202e}`, `\\`), and the result
/// is cut at [`MAX_FIELD_BYTES`] with a marker saying how many input bytes were left out.
/// Formats lazily, so a disabled log level costs nothing.
pub struct Untrusted<T>(pub T);

/// [`Untrusted`] for a value's `Debug` rendering (e.g. a parsed client event).
pub struct UntrustedDebug<T>(pub T);

impl<T: fmt::Display> fmt::Display for Untrusted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render(f, format_args!("{}", self.0))
    }
}

impl<T: fmt::Debug> fmt::Display for UntrustedDebug<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render(f, format_args!("{:?}", self.0))
    }
}

// `%field` and `?field` both show the escaped text.
impl<T: fmt::Display> fmt::Debug for Untrusted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<T: fmt::Debug> fmt::Debug for UntrustedDebug<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn render(f: &mut fmt::Formatter<'_>, args: fmt::Arguments<'_>) -> fmt::Result {
    let mut w = Escaper {
        out: f,
        room: MAX_FIELD_BYTES,
        left_out: 0,
    };
    w.write_fmt(args)?;
    let left_out = w.left_out;
    if left_out > 0 {
        write!(f, "…[{left_out} more bytes]")?;
    }
    Ok(())
}

struct Escaper<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    /// Bytes of output still allowed.
    room: usize,
    /// Input bytes not shown once the room ran out.
    left_out: usize,
}

impl fmt::Write for Escaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut buf = [0u8; 16];
        for (i, c) in s.char_indices() {
            if self.left_out > 0 {
                // Past the cut only the count matters.
                self.left_out += s.len() - i;
                return Ok(());
            }
            let piece = escape(c, &mut buf);
            if piece.len() > self.room {
                self.left_out = s.len() - i;
                return Ok(());
            }
            self.room -= piece.len();
            self.out.write_str(piece)?;
        }
        Ok(())
    }
}

/// `c` as it may appear in a log line.
fn escape(c: char, buf: &mut [u8; 16]) -> &str {
    let mut w = SliceWriter { buf, len: 0 };
    let _ = match c {
        '\\' => w.write_str("\\\\"),
        '\n' => w.write_str("\\n"),
        '\r' => w.write_str("\\r"),
        '\t' => w.write_str("\\t"),
        c if c.is_ascii_control() => write!(w, "\\x{:02x}", c as u32),
        c if c.is_control() || invisible(c) => write!(w, "\\u{{{:x}}}", c as u32),
        c => w.write_char(c),
    };
    let len = w.len;
    std::str::from_utf8(&buf[..len]).expect("escapes are ASCII or one whole char")
}

/// Characters that render as nothing or reorder what follows: bidi controls, zero-width and
/// other format characters, line and paragraph separators, fillers, variation selectors, tags.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

struct SliceWriter<'a> {
    buf: &'a mut [u8; 16],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(s: &str) -> String {
        Untrusted(s).to_string()
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            show("v=0 o=- 42 IN IP4 127.0.0.1 é ✓"),
            "v=0 o=- 42 IN IP4 127.0.0.1 é ✓"
        );
    }

    #[test]
    fn terminal_controls_line_breaks_and_nul_are_escaped() {
        assert_eq!(
            show("a\u{1b}[2J\r\nb\0c\td\u{7f}\u{85}"),
            "a\\x1b[2J\\r\\nb\\x00c\\td\\x7f\\u{85}"
        );
        // A backslash is escaped, so an escape in the output always means an escaped byte.
        assert_eq!(show("\\x1b"), "\\\\x1b");
    }

    #[test]
    fn bidi_and_invisible_characters_are_escaped() {
        assert_eq!(
            show("user\u{202e}gnp.exe\u{200b}\u{2066}\u{feff}\u{2028}"),
            "user\\u{202e}gnp.exe\\u{200b}\\u{2066}\\u{feff}\\u{2028}"
        );
    }

    #[test]
    fn long_text_is_cut_with_the_count_of_what_was_left_out() {
        let long = "x".repeat(10_000);
        let shown = show(&long);
        assert_eq!(
            shown,
            format!(
                "{}…[{} more bytes]",
                "x".repeat(MAX_FIELD_BYTES),
                10_000 - MAX_FIELD_BYTES
            )
        );
        // Escapes count towards the limit and are never split.
        let shown = show(&"\u{1b}".repeat(100));
        assert_eq!(shown, format!("{}…[50 more bytes]", "\\x1b".repeat(50)));
        // Nor are multi-byte characters.
        let shown = show(&"é".repeat(150));
        assert_eq!(shown, format!("{}…[100 more bytes]", "é".repeat(100)));
    }

    #[test]
    fn text_written_in_pieces_is_cut_once() {
        // Display impls write in several calls; the cut and the count span them.
        struct Pieces;
        impl fmt::Display for Pieces {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for _ in 0..3 {
                    f.write_str(&"z".repeat(150))?;
                }
                Ok(())
            }
        }
        assert_eq!(
            Untrusted(Pieces).to_string(),
            format!("{}…[250 more bytes]", "z".repeat(MAX_FIELD_BYTES))
        );
        let debug = UntrustedDebug(vec!["\u{1b}"; 2]).to_string();
        assert_eq!(debug, "[\"\\\\u{1b}\", \"\\\\u{1b}\"]");
    }
}

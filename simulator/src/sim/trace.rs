//! The event trace and its hash.
//!
//! Every processed event, and every notable outcome it causes (a request ending, a connection
//! closing), becomes one canonical text line: `<event index> <time> <what> <fields...>`. The lines are
//! hashed with 64-bit FNV-1a as they are produced (each line followed by `\n`), so the hash identifies
//! the whole trace byte for byte; the lines themselves are only kept when asked for (a file for
//! `--trace`, memory for tests).

use std::fmt::Write as _;
use std::io::Write as _;

use super::clock::SimTime;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(FNV_OFFSET)
    }
}

impl Fnv64 {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        self.0 = h;
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Where trace lines go besides the hash.
pub enum TraceSink {
    /// Hash only.
    None,
    /// Keep every line in memory (tests).
    Memory(Vec<String>),
    /// Write every line to a file (or any writer).
    Writer(Box<dyn std::io::Write>),
}

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceSink::None => f.write_str("None"),
            TraceSink::Memory(v) => write!(f, "Memory({} lines)", v.len()),
            TraceSink::Writer(_) => f.write_str("Writer"),
        }
    }
}

/// The running trace.
#[derive(Debug)]
pub struct Trace {
    hash: Fnv64,
    lines: u64,
    buf: String,
    sink: TraceSink,
    io_error: Option<String>,
}

impl Trace {
    pub fn new(sink: TraceSink) -> Trace {
        Trace {
            hash: Fnv64::default(),
            lines: 0,
            buf: String::with_capacity(128),
            sink,
            io_error: None,
        }
    }

    /// Appends one line (without its newline).
    pub fn line(&mut self, args: std::fmt::Arguments<'_>) {
        self.buf.clear();
        // Writing into a String cannot fail.
        let _ = self.buf.write_fmt(args);
        self.buf.push('\n');
        self.emit();
    }

    /// Appends one event line, `<index> <time> <name> [<word>] <key>=<value>...`, without going
    /// through `core::fmt` (this is the hot path: one call per event).
    pub fn event(
        &mut self,
        index: u64,
        t: SimTime,
        name: &str,
        word: &str,
        fields: &[(&str, u64)],
    ) {
        self.buf.clear();
        push_decimal(&mut self.buf, index);
        self.buf.push(' ');
        push_time(&mut self.buf, t);
        self.buf.push(' ');
        self.buf.push_str(name);
        if !word.is_empty() {
            self.buf.push(' ');
            self.buf.push_str(word);
        }
        for (k, v) in fields {
            self.buf.push(' ');
            self.buf.push_str(k);
            self.buf.push('=');
            push_decimal(&mut self.buf, *v);
        }
        self.buf.push('\n');
        self.emit();
    }

    fn emit(&mut self) {
        self.hash.update(self.buf.as_bytes());
        self.lines += 1;
        match &mut self.sink {
            TraceSink::None => {}
            TraceSink::Memory(v) => v.push(self.buf.trim_end().to_owned()),
            TraceSink::Writer(w) => {
                if self.io_error.is_none()
                    && let Err(e) = w.write_all(self.buf.as_bytes())
                {
                    self.io_error = Some(e.to_string());
                }
            }
        }
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Flushes a file sink; returns the first write error, if any.
    pub fn finish(&mut self) -> Result<(), String> {
        if let TraceSink::Writer(w) = &mut self.sink
            && let Err(e) = w.flush()
            && self.io_error.is_none()
        {
            self.io_error = Some(e.to_string());
        }
        match &self.io_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Takes the lines kept in memory.
    pub fn take_lines(&mut self) -> Vec<String> {
        match &mut self.sink {
            TraceSink::Memory(v) => std::mem::take(v),
            _ => Vec::new(),
        }
    }
}

/// Decimal digits of `v` (through itoa: one `push_str`, not a `push` per digit); the clusters'
/// object names use it too.
pub(super) fn push_decimal(buf: &mut String, v: u64) {
    buf.push_str(itoa::Buffer::new().format(v));
}

/// `seconds.microseconds`, as `SimTime`'s `Display` (six zero-padded digits).
fn push_time(buf: &mut String, t: SimTime) {
    push_decimal(buf, t.0 / 1_000_000_000);
    let micros = (t.0 / 1000) % 1_000_000;
    let mut frac = *b".000000";
    let mut rest = micros;
    for d in frac[1..].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    buf.push_str(std::str::from_utf8(&frac).unwrap_or(".??????"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        let mut h = Fnv64::default();
        h.update(b"");
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        h.update(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn hash_covers_every_line() {
        let mut a = Trace::new(TraceSink::Memory(Vec::new()));
        let mut b = Trace::new(TraceSink::None);
        a.line(format_args!("0 1 x"));
        b.line(format_args!("0 1 x"));
        assert_eq!(a.hash(), b.hash());
        b.line(format_args!("1 2 y"));
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.take_lines(), vec!["0 1 x".to_owned()]);
    }

    #[test]
    fn fast_event_lines_match_the_formatted_form() {
        let mut a = Trace::new(TraceSink::Memory(Vec::new()));
        let t = SimTime(12_000_250_999);
        a.event(
            0,
            t,
            "deliver",
            "up",
            &[("f", 7), ("n", 0), ("x", u64::MAX)],
        );
        a.event(10, SimTime(0), "end", "", &[]);
        let want = format!("0 {t} deliver up f=7 n=0 x={}", u64::MAX);
        assert_eq!(a.take_lines(), vec![want, "10 0.000000 end".to_owned()]);
        for ns in [
            1_000,
            9_999_999,
            1_000_000_000,
            86_400_123_456_789,
            u64::MAX,
        ] {
            let t = SimTime(ns);
            a.event(ns, t, "x", "", &[]);
            assert_eq!(a.take_lines(), vec![format!("{ns} {t} x")]);
        }
    }
}

//! The terminal of `kubectl exec -t` / `attach -t`: what a pseudo-terminal's line discipline
//! does between the session and the program in canonical mode. Input is echoed, edited
//! (backspace erases, `^U` kills the line), handed over a line at a time (`\r` ends a line, as
//! a raw-mode client sends Enter), `^D` on an empty line is end of file and `^C` discards the
//! line; output newlines become `\r\n`.

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// Most bytes of one line being typed.
const MAX_LINE: usize = 4096;

/// What the line discipline makes of one input byte.
#[derive(Debug, Default)]
struct Line {
    buf: Vec<u8>,
}

/// The effect of an input byte.
#[derive(Debug, PartialEq, Eq)]
enum Effect {
    /// Echo these bytes.
    Echo(&'static [u8]),
    /// Echo the byte itself.
    EchoByte(u8),
    /// A line is complete (echo `\r\n`, hand it over).
    Line(Vec<u8>),
    /// End of file.
    Eof,
    /// Nothing.
    None,
}

impl Line {
    fn input(&mut self, b: u8) -> Effect {
        match b {
            b'\r' | b'\n' => {
                let mut l = std::mem::take(&mut self.buf);
                l.push(b'\n');
                Effect::Line(l)
            }
            0x04 if self.buf.is_empty() => Effect::Eof,
            0x04 => Effect::None,
            0x03 => {
                self.buf.clear();
                Effect::Echo(b"^C\r\n")
            }
            0x15 => {
                self.buf.clear();
                Effect::Echo(b"\r\x1b[K")
            }
            0x7f | 0x08 => {
                if self.buf.pop().is_some() {
                    Effect::Echo(b"\x08 \x08")
                } else {
                    Effect::None
                }
            }
            b if self.buf.len() < MAX_LINE => {
                self.buf.push(b);
                Effect::EchoByte(b)
            }
            _ => Effect::None,
        }
    }
}

/// `\n` → `\r\n` (the terminal's `onlcr`).
fn crlf(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    for &b in data {
        if b == b'\n' {
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&[b]);
        }
    }
    out.freeze()
}

/// Runs the terminal until the program's output ends.
pub async fn run(
    mut from_session: mpsc::Receiver<Bytes>,
    to_program: mpsc::Sender<Bytes>,
    mut from_program: mpsc::Receiver<Bytes>,
    to_session: mpsc::Sender<Bytes>,
) {
    let mut line = Line::default();
    let mut to_program = Some(to_program);
    let mut input_open = true;
    loop {
        tokio::select! {
            chunk = from_session.recv(), if input_open => {
                let Some(chunk) = chunk else {
                    input_open = false;
                    to_program = None;
                    continue;
                };
                let mut echo = BytesMut::new();
                for &b in chunk.iter() {
                    match line.input(b) {
                        Effect::Echo(e) => echo.extend_from_slice(e),
                        Effect::EchoByte(b) => echo.extend_from_slice(&[b]),
                        Effect::Line(l) => {
                            echo.extend_from_slice(b"\r\n");
                            if to_session.send(echo.split().freeze()).await.is_err() {
                                return;
                            }
                            if let Some(tx) = &to_program
                                && tx.send(Bytes::from(l)).await.is_err()
                            {
                                to_program = None;
                            }
                        }
                        Effect::Eof => to_program = None,
                        Effect::None => {}
                    }
                }
                if !echo.is_empty() && to_session.send(echo.freeze()).await.is_err() {
                    return;
                }
            }
            out = from_program.recv() => match out {
                Some(data) => {
                    if to_session.send(crlf(&data)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_discipline() {
        let mut l = Line::default();
        assert_eq!(l.input(b'a'), Effect::EchoByte(b'a'));
        assert_eq!(l.input(b'x'), Effect::EchoByte(b'x'));
        assert_eq!(l.input(0x7f), Effect::Echo(b"\x08 \x08"));
        assert_eq!(l.input(b'\r'), Effect::Line(b"a\n".to_vec()));
        assert_eq!(l.input(0x04), Effect::Eof);
        assert_eq!(l.input(b'q'), Effect::EchoByte(b'q'));
        assert_eq!(l.input(0x03), Effect::Echo(b"^C\r\n"));
        assert_eq!(l.input(b'\r'), Effect::Line(b"\n".to_vec()));
        assert_eq!(&crlf(b"a\nb\n")[..], b"a\r\nb\r\n");
    }
}

//! What the vectors take from `PROTOCOL.md`: the preface, the frame-type, error-code, reject-code,
//! settings and error-handling tables, and the worked example's raw octets.
//!
//! The parser reads the Markdown as written (numbered `##`/`###` headings, pipe tables, fenced blocks),
//! and fails with a [`SpecError`] naming what it could not find, so a restructured specification is
//! noticed instead of silently producing different vectors.

use std::fmt;

/// Why `PROTOCOL.md` could not be read as expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("PROTOCOL.md has no section {0}")]
    MissingSection(String),
    #[error("section {section} of PROTOCOL.md has no table whose first column is {column:?}")]
    MissingTable { section: String, column: String },
    #[error("section {section}: cannot parse {what} from {text:?}")]
    Unparsable {
        section: String,
        what: &'static str,
        text: String,
    },
    #[error("PROTOCOL.md lists no {what} named {name:?}")]
    UnknownName { what: &'static str, name: String },
    #[error("the error-handling table (§13) has no row containing {0:?}")]
    MissingCondition(String),
}

/// One row of a Markdown table, with the line it came from (quoted in the vectors' `spec` field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub cells: Vec<String>,
    pub line: String,
}

/// §5: a frame type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTypeRow {
    pub code: u8,
    pub name: String,
    /// `0`, `non-zero` or `0 or non-zero`.
    pub streams: String,
    /// Defined flags: name and bit.
    pub flags: Vec<(String, u8)>,
    pub quote: String,
}

/// §14: an error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorCodeRow {
    pub value: u32,
    pub name: String,
    pub quote: String,
}

/// §7.4: a `RejectCode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectCodeRow {
    pub name: String,
    pub value: i32,
    pub quote: String,
}

/// §8: a setting and its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingRow {
    pub field: String,
    pub default: u64,
    pub quote: String,
}

/// §13: one condition of the error-handling table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionRow {
    pub condition: String,
    /// `connection`, `stream`, `handshake` or `—`.
    pub level: String,
    /// The third column, backticks removed.
    pub code: String,
    pub quote: String,
}

/// What a condition of §13 makes the receiver do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consequence {
    /// GOAWAY with this error code, then close.
    ConnectionError(ErrorCodeRow),
    /// RESET of the stream with this error code.
    StreamError(ErrorCodeRow),
    /// REJECT with this code, then close.
    Reject(RejectCodeRow),
    /// Nothing happens.
    Ignored,
    /// The connection closes without sending anything.
    ClosedSilently,
}

/// The parts of `PROTOCOL.md` the vectors are generated from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub preface: Vec<u8>,
    pub preface_quote: String,
    pub frame_types: Vec<FrameTypeRow>,
    pub error_codes: Vec<ErrorCodeRow>,
    pub reject_codes: Vec<RejectCodeRow>,
    pub settings: Vec<SettingRow>,
    pub conditions: Vec<ConditionRow>,
    /// §18's "Raw octets of each message", in order.
    pub worked_example: Vec<Vec<u8>>,
    /// The whole text, for quoting sentences.
    pub text: String,
}

impl Spec {
    /// Parses the text of `PROTOCOL.md`.
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        let (preface, preface_quote) = parse_preface(section(text, "3")?)?;
        Ok(Spec {
            preface,
            preface_quote,
            frame_types: parse_frame_types(section(text, "5")?)?,
            error_codes: parse_error_codes(section(text, "14")?)?,
            reject_codes: parse_reject_codes(section(text, "7.4")?)?,
            settings: parse_settings(section(text, "8")?)?,
            conditions: parse_conditions(section(text, "13")?)?,
            worked_example: parse_worked_example(section(text, "18")?)?,
            text: text.to_owned(),
        })
    }

    /// The sentence of section `number` containing `needle` (whitespace collapsed, backticks removed),
    /// prefixed with the section number, for a vector's `spec` field.
    pub fn sentence(&self, number: &str, needle: &str) -> Result<String, SpecError> {
        let body = section(&self.text, number)?;
        body.split("\n\n")
            .flat_map(|paragraph| {
                let flat = plain(&paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
                    .replace("**", "")
                    .replace("e.g. ", "e.g.\u{a0}");
                flat.split_inclusive(". ")
                    .map(|s| s.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .find(|s| s.contains(needle))
            .map(|s| format!("§{number}: {s}"))
            .ok_or_else(|| SpecError::Unparsable {
                section: number.to_owned(),
                what: "a sentence",
                text: needle.to_owned(),
            })
    }

    pub fn frame_type(&self, name: &str) -> Result<&FrameTypeRow, SpecError> {
        self.frame_types
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| unknown("frame type", name))
    }

    /// The name of a frame type code, `None` for codes §5 does not define.
    pub fn frame_type_name(&self, code: u8) -> Option<&str> {
        self.frame_types
            .iter()
            .find(|t| t.code == code)
            .map(|t| t.name.as_str())
    }

    pub fn error_code(&self, name: &str) -> Result<&ErrorCodeRow, SpecError> {
        self.error_codes
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| unknown("error code", name))
    }

    /// The name of an error code value; values §14 does not list are named `UNKNOWN`.
    pub fn error_code_name(&self, value: u32) -> &str {
        self.error_codes
            .iter()
            .find(|e| e.value == value)
            .map_or("UNKNOWN", |e| e.name.as_str())
    }

    pub fn reject_code(&self, name: &str) -> Result<&RejectCodeRow, SpecError> {
        self.reject_codes
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| unknown("reject code", name))
    }

    /// The name of a `RejectCode` value; unknown values are treated as `REJECT_CODE_UNSPECIFIED`.
    pub fn reject_code_name(&self, value: i32) -> &str {
        self.reject_codes
            .iter()
            .find(|r| r.value == value)
            .map_or("REJECT_CODE_UNSPECIFIED", |r| r.name.as_str())
    }

    pub fn setting(&self, field: &str) -> Result<&SettingRow, SpecError> {
        self.settings
            .iter()
            .find(|s| s.field == field)
            .ok_or_else(|| unknown("setting", field))
    }

    /// The §13 row whose condition contains `needle` (exactly one must).
    pub fn condition(&self, needle: &str) -> Result<&ConditionRow, SpecError> {
        let mut rows = self
            .conditions
            .iter()
            .filter(|c| c.condition.contains(needle));
        match (rows.next(), rows.next()) {
            (Some(row), None) => Ok(row),
            _ => Err(SpecError::MissingCondition(needle.to_owned())),
        }
    }

    /// What the §13 row containing `needle` makes the receiver do.
    pub fn consequence(&self, needle: &str) -> Result<(Consequence, String), SpecError> {
        let row = self.condition(needle)?;
        let quote = format!("§13 Error handling: {}", row.quote);
        let unparsable = || SpecError::Unparsable {
            section: "13".into(),
            what: "a consequence",
            text: row.line_for_errors(),
        };
        let consequence = match row.level.as_str() {
            "connection" => Consequence::ConnectionError(self.error_code(&row.code)?.clone()),
            "stream" => Consequence::StreamError(self.error_code(&row.code)?.clone()),
            "handshake" => {
                let name = row
                    .code
                    .split_whitespace()
                    .find(|w| w.starts_with("REJECT_CODE_"))
                    .ok_or_else(unparsable)?;
                Consequence::Reject(self.reject_code(name)?.clone())
            }
            _ if row.code.starts_with("ignored") => Consequence::Ignored,
            _ if row.code.contains("closed at once") && row.code.contains("nothing sent") => {
                Consequence::ClosedSilently
            }
            _ => return Err(unparsable()),
        };
        Ok((consequence, quote))
    }
}

impl ConditionRow {
    fn line_for_errors(&self) -> String {
        self.quote.chars().take(200).collect()
    }
}

impl fmt::Display for Consequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consequence::ConnectionError(e) => write!(f, "connection error {}", e.name),
            Consequence::StreamError(e) => write!(f, "stream error {}", e.name),
            Consequence::Reject(r) => write!(f, "REJECT {}", r.name),
            Consequence::Ignored => f.write_str("ignored"),
            Consequence::ClosedSilently => f.write_str("closed, nothing sent"),
        }
    }
}

fn unknown(what: &'static str, name: &str) -> SpecError {
    SpecError::UnknownName {
        what,
        name: name.to_owned(),
    }
}

/// The text of section `number` (e.g. `"5"` or `"7.4"`), up to the next heading of the same or a
/// higher level.
pub fn section<'a>(text: &'a str, number: &str) -> Result<&'a str, SpecError> {
    let level = if number.contains('.') { "### " } else { "## " };
    let prefix = if number.contains('.') {
        format!("{level}{number} ")
    } else {
        format!("{level}{number}. ")
    };
    let start = line_offsets(text)
        .find(|(_, line)| line.starts_with(&prefix))
        .map(|(offset, _)| offset)
        .ok_or_else(|| SpecError::MissingSection(number.to_owned()))?;
    let body = &text[start..];
    let first_len = body.find('\n').map_or(body.len(), |i| i + 1);
    let end = line_offsets(&body[first_len..])
        .find(|(_, line)| line.starts_with("## ") || (level == "### " && line.starts_with("### ")))
        .map_or(body.len(), |(offset, _)| first_len + offset);
    Ok(&body[..end])
}

fn line_offsets(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut offset = 0;
    text.split_inclusive('\n').map(move |line| {
        let here = offset;
        offset += line.len();
        (here, line.trim_end_matches(['\n', '\r']))
    })
}

/// Every pipe table of a section: header cells and rows.
fn tables(text: &str) -> Vec<(Vec<String>, Vec<Row>)> {
    let mut out = Vec::new();
    let mut current: Option<(Vec<String>, Vec<Row>)> = None;
    let mut seen_separator = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if !trimmed.starts_with('|') {
            if let Some(t) = current.take() {
                out.push(t);
            }
            seen_separator = false;
            continue;
        }
        let cells = split_row(trimmed);
        match &mut current {
            None => current = Some((cells, Vec::new())),
            Some((_, rows)) => {
                if !seen_separator && cells.iter().all(|c| c.chars().all(|ch| "-: ".contains(ch))) {
                    seen_separator = true;
                } else {
                    rows.push(Row {
                        cells,
                        line: trimmed.to_owned(),
                    });
                }
            }
        }
    }
    if let Some(t) = current {
        out.push(t);
    }
    out
}

fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

/// Backticks removed, whitespace trimmed.
fn plain(cell: &str) -> String {
    cell.replace('`', "").trim().to_owned()
}

fn table_starting_with(text: &str, section: &str, column: &str) -> Result<Vec<Row>, SpecError> {
    tables(text)
        .into_iter()
        .find(|(header, _)| header.first().is_some_and(|h| plain(h) == column))
        .map(|(_, rows)| rows)
        .ok_or_else(|| SpecError::MissingTable {
            section: section.to_owned(),
            column: column.to_owned(),
        })
}

fn parse_int(section: &str, what: &'static str, cell: &str) -> Result<u64, SpecError> {
    let text = plain(cell);
    let bad = || SpecError::Unparsable {
        section: section.to_owned(),
        what,
        text: text.clone(),
    };
    let token = text.split_whitespace().next().ok_or_else(bad)?;
    if let Some(hex) = token
        .strip_prefix("0x")
        .or_else(|| token.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).map_err(|_| bad())
    } else {
        token.replace(',', "").parse().map_err(|_| bad())
    }
}

fn parse_preface(text: &str) -> Result<(Vec<u8>, String), SpecError> {
    let block = fenced_blocks(text)
        .into_iter()
        .next()
        .ok_or_else(|| SpecError::Unparsable {
            section: "3".into(),
            what: "the preface block",
            text: String::new(),
        })?;
    let line = block.lines().next().unwrap_or_default().to_owned();
    let octets: Result<Vec<u8>, _> = line
        .split_whitespace()
        .take_while(|w| w.len() == 2 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .map(|w| u8::from_str_radix(w, 16))
        .collect();
    match octets {
        Ok(o) if !o.is_empty() => Ok((o, format!("§3 Connection preface: {}", line.trim()))),
        _ => Err(SpecError::Unparsable {
            section: "3".into(),
            what: "the preface octets",
            text: line,
        }),
    }
}

fn fenced_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => out.push(block),
                None => current = Some(String::new()),
            }
        } else if let Some(block) = &mut current {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

fn parse_frame_types(text: &str) -> Result<Vec<FrameTypeRow>, SpecError> {
    let rows = table_starting_with(text, "5", "code")?;
    rows.iter()
        .map(|row| {
            let cell = |i: usize| row.cells.get(i).map(String::as_str).unwrap_or_default();
            let code = parse_int("5", "a frame type code", cell(0))?;
            let code = u8::try_from(code).map_err(|_| SpecError::Unparsable {
                section: "5".into(),
                what: "a frame type code",
                text: cell(0).to_owned(),
            })?;
            Ok(FrameTypeRow {
                code,
                name: plain(cell(1)),
                streams: plain(cell(2)),
                flags: parse_flags(cell(3))?,
                quote: format!("§5 Frame types: {}", row.line),
            })
        })
        .collect()
}

/// "`END_STREAM` (`0x1`)" → [("END_STREAM", 1)]; "none" → [].
fn parse_flags(cell: &str) -> Result<Vec<(String, u8)>, SpecError> {
    let text = plain(cell);
    if text == "none" {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        let (name, rest) = part
            .trim()
            .split_once('(')
            .ok_or_else(|| SpecError::Unparsable {
                section: "5".into(),
                what: "flags",
                text: text.clone(),
            })?;
        let bit = parse_int("5", "a flag bit", rest.trim_end_matches(')'))?;
        let bit = u8::try_from(bit).map_err(|_| SpecError::Unparsable {
            section: "5".into(),
            what: "a flag bit",
            text: text.clone(),
        })?;
        out.push((name.trim().to_owned(), bit));
    }
    Ok(out)
}

fn parse_error_codes(text: &str) -> Result<Vec<ErrorCodeRow>, SpecError> {
    let rows = table_starting_with(text, "14", "value")?;
    rows.iter()
        .map(|row| {
            let cell = |i: usize| row.cells.get(i).map(String::as_str).unwrap_or_default();
            let value = parse_int("14", "an error code value", cell(0))?;
            Ok(ErrorCodeRow {
                value: u32::try_from(value).map_err(|_| SpecError::Unparsable {
                    section: "14".into(),
                    what: "an error code value",
                    text: cell(0).to_owned(),
                })?,
                name: plain(cell(1)),
                quote: format!("§14 Error codes: {}", row.line),
            })
        })
        .collect()
}

fn parse_reject_codes(text: &str) -> Result<Vec<RejectCodeRow>, SpecError> {
    let rows = table_starting_with(text, "7.4", "RejectCode")?;
    rows.iter()
        .map(|row| {
            let cell = |i: usize| row.cells.get(i).map(String::as_str).unwrap_or_default();
            let value = parse_int("7.4", "a reject code value", cell(1))?;
            Ok(RejectCodeRow {
                name: plain(cell(0)),
                value: i32::try_from(value).map_err(|_| SpecError::Unparsable {
                    section: "7.4".into(),
                    what: "a reject code value",
                    text: cell(1).to_owned(),
                })?,
                quote: format!("§7.4 ACCEPT and REJECT: {}", row.line),
            })
        })
        .collect()
}

fn parse_settings(text: &str) -> Result<Vec<SettingRow>, SpecError> {
    let rows = table_starting_with(text, "8", "field (Settings)")?;
    rows.iter()
        .map(|row| {
            let cell = |i: usize| row.cells.get(i).map(String::as_str).unwrap_or_default();
            Ok(SettingRow {
                field: plain(cell(0)),
                default: parse_int("8", "a setting default", cell(1))?,
                quote: format!("§8 Settings: {}", row.line),
            })
        })
        .collect()
}

fn parse_conditions(text: &str) -> Result<Vec<ConditionRow>, SpecError> {
    let rows = table_starting_with(text, "13", "condition")?;
    Ok(rows
        .iter()
        .map(|row| {
            let cell = |i: usize| row.cells.get(i).map(String::as_str).unwrap_or_default();
            ConditionRow {
                condition: plain(cell(0)),
                level: plain(cell(1)),
                code: plain(cell(2)),
                quote: row.line.clone(),
            }
        })
        .collect())
}

fn parse_worked_example(text: &str) -> Result<Vec<Vec<u8>>, SpecError> {
    let marker = "Raw octets of each message";
    let start = text.find(marker).ok_or_else(|| SpecError::Unparsable {
        section: "18".into(),
        what: "the raw octets",
        text: marker.into(),
    })?;
    let mut messages: Vec<Vec<u8>> = Vec::new();
    for line in text[start..].lines().skip(1) {
        let t = line.trim();
        if t.starts_with("```") {
            break;
        }
        if t.ends_with(':') && t[..t.len() - 1].chars().all(|c| c.is_ascii_digit()) {
            messages.push(Vec::new());
        } else if !t.is_empty() {
            let octets = hex::decode(t).map_err(|_| SpecError::Unparsable {
                section: "18".into(),
                what: "raw octets",
                text: t.to_owned(),
            })?;
            match messages.last_mut() {
                Some(m) => m.extend(octets),
                None => {
                    return Err(SpecError::Unparsable {
                        section: "18".into(),
                        what: "raw octets before a message number",
                        text: t.to_owned(),
                    });
                }
            }
        }
    }
    if messages.is_empty() {
        return Err(SpecError::Unparsable {
            section: "18".into(),
            what: "the raw octets",
            text: "no messages".into(),
        });
    }
    Ok(messages)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MINI: &str = "# T\n\n## 3. Connection preface\n\n```text\n89 41 47 54 55 4E 0D 0A        \"x\"\n```\n\n## 5. Frame types\n\n| code | name | streams | flags | payload |\n|---|---|---|---|---|\n| `0x0` | DATA | non-zero | `END_STREAM` (`0x1`) | body |\n| `0x6` | PING | 0 | `ACK` (`0x1`) | 8 |\n| `0x4` | RESET | non-zero | none | x |\n\n## 7. Handshake\n\n### 7.4 ACCEPT and REJECT\n\n| field | meaning |\n|---|---|\n| a | b |\n\n| `RejectCode` | value | meaning |\n|---|---|---|\n| `REJECT_CODE_UNSPECIFIED` | 0 | none |\n\n### 7.5 Next\n\n## 8. Settings\n\n| field (`Settings`) | default | allowed | meaning |\n|---|---|---|---|\n| `max_frame_size` | 16,384 (16 KiB) | x | y |\n\n## 13. Error handling\n\n| condition | level | code |\n|---|---|---|\n| reserved bit R set | connection | `PROTOCOL_ERROR` |\n| PING ACK that answers nothing | — | ignored |\n\n## 14. Error codes\n\n| value | name | meaning | used |\n|---|---|---|---|\n| 0 | `NO_ERROR` | ok | GOAWAY |\n| 1 | `PROTOCOL_ERROR` | bad | GOAWAY |\n\n## 18. Worked example\n\n```text\nRaw octets of each message, for test vectors:\n1:\n  0001\n  02\n2:\n  ff\n```\n";

    #[test]
    fn parses_every_table() {
        let s = Spec::parse(MINI).unwrap();
        assert_eq!(s.preface, b"\x89AGTUN\r\n");
        assert_eq!(s.frame_types.len(), 3);
        assert_eq!(
            s.frame_type("DATA").unwrap().flags,
            vec![("END_STREAM".into(), 1)]
        );
        assert!(s.frame_type("RESET").unwrap().flags.is_empty());
        assert_eq!(s.error_code("PROTOCOL_ERROR").unwrap().value, 1);
        assert_eq!(s.reject_code("REJECT_CODE_UNSPECIFIED").unwrap().value, 0);
        assert_eq!(s.setting("max_frame_size").unwrap().default, 16384);
        assert_eq!(s.worked_example, vec![vec![0, 1, 2], vec![0xff]]);
        let (c, quote) = s.consequence("reserved bit").unwrap();
        assert_eq!(
            c,
            Consequence::ConnectionError(s.error_code("PROTOCOL_ERROR").unwrap().clone())
        );
        assert!(quote.contains("reserved bit R set"));
        assert_eq!(s.consequence("PING ACK").unwrap().0, Consequence::Ignored);
        assert!(matches!(
            s.consequence("nope"),
            Err(SpecError::MissingCondition(_))
        ));
    }

    #[test]
    fn missing_sections_are_named() {
        assert_eq!(
            Spec::parse("# nothing\n").unwrap_err(),
            SpecError::MissingSection("3".into())
        );
    }

    #[test]
    fn the_real_specification_parses() {
        let text = include_str!("../../protocol/PROTOCOL.md");
        let s = Spec::parse(text).unwrap();
        assert_eq!(s.frame_types.len(), 11);
        assert_eq!(s.error_codes.len(), 12);
        assert_eq!(s.reject_codes.len(), 7);
        assert_eq!(s.worked_example.len(), 4);
    }
}

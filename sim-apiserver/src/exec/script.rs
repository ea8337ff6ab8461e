//! Parsing the shell scripts the simulated containers run (`sh -c '…'`, lines typed into an
//! interactive `sh`): words with quoting and `$VAR` expansion, pipelines (`|`), lists (`;`,
//! `&&`, `||`, newlines), output redirections (`>`, `>>`, `2>`). Pure: no I/O.

/// A piece of a word: literal text or a variable to expand at run time (`$?` included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Lit(String),
    /// `$NAME` / `${NAME}`.
    Var(String),
}

/// A word before expansion.
pub type Word = Vec<Part>;

/// Where a redirection sends output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// File descriptor (1 stdout, 2 stderr).
    pub fd: u8,
    /// Append (`>>`) instead of truncate.
    pub append: bool,
    /// Target path.
    pub target: Word,
}

/// One command with its arguments and redirections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Simple {
    /// The command and its arguments.
    pub argv: Vec<Word>,
    /// Output redirections, in order.
    pub redirects: Vec<Redirect>,
}

/// How a pipeline joins the previous one in an and-or list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Always run (`;`, newline, or first).
    Always,
    /// `&&`.
    And,
    /// `||`.
    Or,
}

/// A parsed script: pipelines, each run depending on the previous status.
pub type Script = Vec<(Join, Vec<Simple>)>;

/// A script that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syntax error: {0}")]
pub struct SyntaxError(pub String);

#[derive(Debug, PartialEq)]
enum Tok {
    Word(Word),
    Semi,
    And,
    Or,
    Pipe,
    Redir { fd: u8, append: bool },
}

fn push_lit(w: &mut Word, c: char) {
    if let Some(Part::Lit(s)) = w.last_mut() {
        s.push(c);
    } else {
        w.push(Part::Lit(c.to_string()));
    }
}

fn read_var(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    match chars.peek() {
        Some('?') => {
            chars.next();
            Some("?".to_string())
        }
        Some('{') => {
            chars.next();
            let mut name = String::new();
            for c in chars.by_ref() {
                if c == '}' {
                    return Some(name);
                }
                name.push(c);
            }
            None
        }
        Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
            let mut name = String::new();
            while let Some(c) = chars.peek() {
                if c.is_ascii_alphanumeric() || *c == '_' {
                    name.push(*c);
                    chars.next();
                } else {
                    break;
                }
            }
            Some(name)
        }
        _ => None,
    }
}

fn tokenize(src: &str) -> Result<Vec<Tok>, SyntaxError> {
    let mut toks = Vec::new();
    let mut chars = src.chars().peekable();
    let mut word: Option<Word> = None;
    let end_word = |word: &mut Option<Word>, toks: &mut Vec<Tok>| {
        if let Some(w) = word.take() {
            toks.push(Tok::Word(w));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => end_word(&mut word, &mut toks),
            '\n' | ';' => {
                end_word(&mut word, &mut toks);
                toks.push(Tok::Semi);
            }
            '#' if word.is_none() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        toks.push(Tok::Semi);
                        break;
                    }
                }
            }
            '&' => {
                end_word(&mut word, &mut toks);
                if chars.next_if_eq(&'&').is_none() {
                    return Err(SyntaxError(
                        "background jobs (`&`) are not supported".into(),
                    ));
                }
                toks.push(Tok::And);
            }
            '|' => {
                end_word(&mut word, &mut toks);
                toks.push(if chars.next_if_eq(&'|').is_some() {
                    Tok::Or
                } else {
                    Tok::Pipe
                });
            }
            '>' => {
                // `2>`: a word that is exactly "2" right before `>` is the descriptor.
                let fd = match &word {
                    Some(w) if *w == vec![Part::Lit("2".into())] => {
                        word = None;
                        2
                    }
                    _ => {
                        end_word(&mut word, &mut toks);
                        1
                    }
                };
                let append = chars.next_if_eq(&'>').is_some();
                toks.push(Tok::Redir { fd, append });
            }
            '\'' => {
                let w = word.get_or_insert_with(Vec::new);
                // The word exists even when the quotes are empty (`''`).
                if w.is_empty() {
                    w.push(Part::Lit(String::new()));
                }
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => push_lit(w, c),
                        None => return Err(SyntaxError("unterminated quoted string".into())),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(Vec::new);
                if w.is_empty() {
                    w.push(Part::Lit(String::new()));
                }
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => push_lit(w, c),
                            Some(c) => {
                                push_lit(w, '\\');
                                push_lit(w, c);
                            }
                            None => {
                                return Err(SyntaxError("unterminated quoted string".into()));
                            }
                        },
                        Some('$') => match read_var(&mut chars) {
                            Some(v) => w.push(Part::Var(v)),
                            None => push_lit(w, '$'),
                        },
                        Some(c) => push_lit(w, c),
                        None => return Err(SyntaxError("unterminated quoted string".into())),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(Vec::new);
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => push_lit(w, c),
                }
            }
            '$' => {
                let w = word.get_or_insert_with(Vec::new);
                match read_var(&mut chars) {
                    Some(v) => w.push(Part::Var(v)),
                    None => push_lit(w, '$'),
                }
            }
            '(' | ')' | '`' | '<' => {
                return Err(SyntaxError(format!("`{c}` is not supported")));
            }
            c => push_lit(word.get_or_insert_with(Vec::new), c),
        }
    }
    end_word(&mut word, &mut toks);
    Ok(toks)
}

/// Parses a script.
pub fn parse(src: &str) -> Result<Script, SyntaxError> {
    let mut script: Script = Vec::new();
    let mut join = Join::Always;
    let mut pipeline: Vec<Simple> = Vec::new();
    let mut cmd = Simple::default();
    let mut toks = tokenize(src)?.into_iter().peekable();
    let unexpected = |what: &str| SyntaxError(format!("unexpected `{what}`"));
    while let Some(t) = toks.next() {
        match t {
            Tok::Word(w) => cmd.argv.push(w),
            Tok::Redir { fd, append } => match toks.next() {
                Some(Tok::Word(target)) => cmd.redirects.push(Redirect { fd, append, target }),
                _ => return Err(SyntaxError("a redirection needs a file name".into())),
            },
            Tok::Pipe => {
                if cmd.argv.is_empty() {
                    return Err(unexpected("|"));
                }
                pipeline.push(std::mem::take(&mut cmd));
            }
            Tok::Semi | Tok::And | Tok::Or => {
                if cmd.argv.is_empty() {
                    if t == Tok::Semi && pipeline.is_empty() {
                        continue;
                    }
                    return Err(unexpected(match t {
                        Tok::And => "&&",
                        Tok::Or => "||",
                        _ => ";",
                    }));
                }
                pipeline.push(std::mem::take(&mut cmd));
                script.push((join, std::mem::take(&mut pipeline)));
                join = match t {
                    Tok::And => Join::And,
                    Tok::Or => Join::Or,
                    _ => Join::Always,
                };
            }
        }
    }
    if !cmd.argv.is_empty() {
        pipeline.push(cmd);
    } else if !pipeline.is_empty() || join != Join::Always {
        return Err(SyntaxError("unexpected end of script".into()));
    }
    if !pipeline.is_empty() {
        script.push((join, pipeline));
    }
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text parses or is a syntax error, never a panic.
        #[test]
        fn never_panics(src in "[ -~\n]{0,80}") {
            let _ = parse(&src);
        }
    }

    fn lit(s: &str) -> Word {
        vec![Part::Lit(s.into())]
    }

    #[test]
    fn parses_lists_pipelines_and_quotes() {
        let s = parse("echo 'a b' \"x$HOME\" && cat | cat > /tmp/o; exit 3 || true")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].0, Join::Always);
        assert_eq!(
            s[0].1[0].argv,
            vec![
                lit("echo"),
                lit("a b"),
                vec![Part::Lit("x".into()), Part::Var("HOME".into())]
            ]
        );
        assert_eq!(s[1].0, Join::And);
        assert_eq!(s[1].1.len(), 2);
        assert_eq!(s[1].1[1].redirects[0].target, lit("/tmp/o"));
        assert_eq!(s[2].0, Join::Always);
        assert_eq!(s[2].1[0].argv, vec![lit("exit"), lit("3")]);
        assert_eq!(s[3].0, Join::Or);
        let s = parse("echo $? 2>/dev/null ''").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s[0].1[0].argv.len(), 3);
        assert_eq!(s[0].1[0].redirects[0].fd, 2);
        assert!(parse("echo 'open").is_err());
        assert!(parse("| x").is_err());
        assert!(parse("a &&").is_err());
        assert!(parse("sleep 1 &").is_err());
        assert_eq!(parse("").unwrap_or_default().len(), 0);
    }
}

//! Bounded, positioned YAML loading: the one YAML reader of the Git half (configuration files and
//! manifests alike; JSON is read as the YAML 1.2 it is).
//!
//! The loader streams [`saphyr_parser`] events into a small tree whose every node and mapping key
//! carries its line and column, so that any later error (an unknown key, a bad value, a duplicate
//! object) can say where it is. It enforces its [`Limits`] *while* it streams, so hostile input fails
//! early with a clear [`YamlError`] and bounded memory:
//!
//! - input size ([`Limits::max_bytes`]), checked before parsing;
//! - nesting depth ([`Limits::max_depth`]);
//! - materialised nodes, counting every node an alias expands to ([`Limits::max_nodes`]) — this is
//!   what stops "billion laughs";
//! - materialised scalar bytes, counting alias copies ([`Limits::max_expanded_bytes`]) — this stops a
//!   huge string repeated through aliases;
//! - alias uses ([`Limits::max_aliases`]), nodes copied by aliases ([`Limits::max_alias_nodes`]) and
//!   documents ([`Limits::max_documents`]).
//!
//! Invariant: a successful [`load`] returns a tree of at most `max_nodes` nodes (mapping keys count
//! as nodes) holding at most `max_expanded_bytes` bytes of scalar text, and never more than
//! `max_depth` levels deep; [`Loaded::stats`] reports the exact figures.
//!
//! Scalars resolve with the YAML 1.2 core schema (`true`/`false` only, so `yes`/`no`/`on`/`off` stay
//! strings — unlike YAML 1.1), every plain scalar keeps its source text (so `tag: 1.10` can still be
//! read as the string `1.10` where a string is expected), merge keys (`<<`) are honoured, duplicate
//! keys are an error, and only the core tags (`!!str`, `!!int`, …) are accepted.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde::{Deserialize, Serialize};

/// Bounds for one [`load`]. Every field is a hard limit; exceeding it is a [`YamlError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most nodes the loaded tree may hold, including mapping keys and every node an alias expands to.
    pub max_nodes: usize,
    /// Most scalar bytes the loaded tree may hold, including copies made by aliases.
    pub max_expanded_bytes: usize,
    /// Most alias uses (`*name`).
    pub max_aliases: usize,
    /// Most nodes materialised through aliases, all uses together (aliases in real files copy a few
    /// small blocks; a bomb copies a lot).
    pub max_alias_nodes: usize,
    /// Most documents in one stream.
    pub max_documents: usize,
}

impl Default for Limits {
    /// Limits sized for an agent configuration file: 1 MiB, 64 levels, 100,000 nodes.
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 20,
            max_depth: 64,
            max_nodes: 100_000,
            max_expanded_bytes: 4 << 20,
            max_aliases: 1_000,
            max_alias_nodes: 10_000,
            max_documents: 16,
        }
    }
}

/// A position in the source: 1-based line and column (column counted in characters).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1, in characters.
    pub column: u32,
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Pos {
            line: clamp(span.start.line()),
            column: clamp(span.start.col().saturating_add(1)),
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// What a scalar resolved to under the YAML 1.2 core schema (or its explicit core tag).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalarKind {
    /// `~`, `null`, `Null`, `NULL` or an empty plain scalar.
    Null,
    /// `true`/`false` (and their capitalised forms).
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// A non-negative integer above `i64::MAX` that fits `u64`.
    UInt(u64),
    /// A float (also integers too large for `u64`).
    Float(f64),
    /// A string: quoted, block, `!!str`, or a plain scalar that is nothing else.
    Str,
}

/// A node's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar: its source text (after YAML unescaping/folding) and what it resolved to.
    Scalar {
        /// The text of the scalar.
        text: String,
        /// What the text resolved to.
        kind: ScalarKind,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order (merge-key entries appended after the explicit ones).
    Map(Vec<Entry>),
}

/// A node of the loaded tree and where it starts in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// Its content.
    pub value: Value,
}

/// One `key: value` pair of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key's text (scalar keys only; a plain `1` is the key `"1"`).
    pub key: String,
    /// Where the key is.
    pub key_pos: Pos,
    /// The value.
    pub value: Node,
}

impl Node {
    /// True for a null scalar (`~`, `null`, empty).
    pub fn is_null(&self) -> bool {
        matches!(
            self.value,
            Value::Scalar {
                kind: ScalarKind::Null,
                ..
            }
        )
    }

    /// The entries if this is a mapping.
    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The items if this is a sequence.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The value of `key` if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    /// A short name of the node's type for error messages: "a mapping", "a string", ….
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Map(_) => "a mapping",
            Value::Seq(_) => "a sequence",
            Value::Scalar { kind, .. } => match kind {
                ScalarKind::Null => "null",
                ScalarKind::Bool(_) => "a boolean",
                ScalarKind::Int(_) | ScalarKind::UInt(_) => "an integer",
                ScalarKind::Float(_) => "a number",
                ScalarKind::Str => "a string",
            },
        }
    }

    /// The node as JSON. Fails (with the node's position) only for `.inf`/`.nan`, which JSON cannot
    /// hold.
    pub fn to_json(&self) -> Result<serde_json::Value, YamlError> {
        use serde_json::Value as J;
        Ok(match &self.value {
            Value::Scalar { text, kind } => match *kind {
                ScalarKind::Null => J::Null,
                ScalarKind::Bool(b) => J::Bool(b),
                ScalarKind::Int(i) => J::from(i),
                ScalarKind::UInt(u) => J::from(u),
                ScalarKind::Float(f) => match serde_json::Number::from_f64(f) {
                    Some(n) => J::Number(n),
                    None => {
                        return Err(YamlError {
                            pos: self.pos,
                            kind: YamlErrorKind::NotJson(text.clone()),
                        });
                    }
                },
                ScalarKind::Str => J::String(text.clone()),
            },
            Value::Seq(items) => {
                J::Array(items.iter().map(Node::to_json).collect::<Result<_, _>>()?)
            }
            Value::Map(entries) => {
                let mut map = serde_json::Map::new();
                for e in entries {
                    map.insert(e.key.clone(), e.value.to_json()?);
                }
                J::Object(map)
            }
        })
    }
}

/// A YAML error and where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{pos}: {kind}")]
pub struct YamlError {
    /// Where the error is (for limits: where the offending node starts).
    pub pos: Pos,
    /// What is wrong.
    pub kind: YamlErrorKind,
}

/// What is wrong with a YAML input. All of these are the author's fault (bad or hostile input).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum YamlErrorKind {
    /// The text is not valid YAML.
    #[error("invalid YAML: {0}")]
    Syntax(String),
    /// The input is larger than [`Limits::max_bytes`].
    #[error("input is {size} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Nesting deeper than [`Limits::max_depth`].
    #[error("nesting deeper than the limit of {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// More nodes than [`Limits::max_nodes`] (counting alias expansion).
    #[error("more than {max} nodes (counting what aliases expand to); is this a YAML bomb?")]
    TooManyNodes {
        /// The limit.
        max: usize,
    },
    /// More scalar bytes than [`Limits::max_expanded_bytes`] (counting alias copies).
    #[error(
        "more than {max} bytes of scalars (counting what aliases expand to); is this a YAML bomb?"
    )]
    ExpansionTooLarge {
        /// The limit.
        max: usize,
    },
    /// More alias uses than [`Limits::max_aliases`].
    #[error("more than {max} aliases")]
    TooManyAliases {
        /// The limit.
        max: usize,
    },
    /// Aliases copy more nodes than [`Limits::max_alias_nodes`].
    #[error("aliases expand to more than {max} nodes; is this a YAML bomb?")]
    AliasExpansion {
        /// The limit.
        max: usize,
    },
    /// More documents than [`Limits::max_documents`].
    #[error("more than {max} documents")]
    TooManyDocuments {
        /// The limit.
        max: usize,
    },
    /// A key appears twice in one mapping.
    #[error("duplicate key `{key}` (first at {first})")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Where it first appeared.
        first: Pos,
    },
    /// A mapping key that is a sequence or mapping.
    #[error("mapping keys must be scalars")]
    ComplexKey,
    /// An alias to an anchor that is not defined (or not yet complete: recursive).
    #[error("alias to an undefined anchor")]
    UnknownAnchor,
    /// A tag other than the YAML core tags.
    #[error("unsupported tag `{0}` (only the core tags such as !!str and !!int are accepted)")]
    UnsupportedTag(String),
    /// A core tag whose value does not fit it (`!!int abc`).
    #[error("`{text}` is not a valid {tag}")]
    BadTaggedValue {
        /// The tag.
        tag: String,
        /// The text.
        text: String,
    },
    /// A merge key (`<<`) whose value is not a mapping or a sequence of mappings.
    #[error("a merge key (<<) takes a mapping or a sequence of mappings")]
    BadMerge,
    /// A value JSON cannot represent (`.inf`, `.nan`).
    #[error("`{0}` cannot be represented in JSON")]
    NotJson(String),
}

/// What one [`load`] materialised: the figures its [`Limits`] bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Nodes, including mapping keys and alias expansions.
    pub nodes: usize,
    /// Scalar bytes, including alias copies.
    pub expanded_bytes: usize,
    /// Alias uses.
    pub aliases: usize,
    /// Nodes copied by aliases.
    pub alias_nodes: usize,
    /// Deepest nesting seen.
    pub max_depth: usize,
}

/// One document of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where the document starts.
    pub pos: Pos,
    /// Its root (a null scalar for an empty document).
    pub root: Node,
}

/// The result of a successful [`load`].
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The documents, in order.
    pub documents: Vec<Document>,
    /// What was materialised.
    pub stats: Stats,
}

/// Loads a YAML stream (one or more documents) within `limits`.
pub fn load(source: &str, limits: &Limits) -> Result<Loaded, YamlError> {
    if source.len() > limits.max_bytes {
        return Err(YamlError {
            pos: Pos { line: 1, column: 1 },
            kind: YamlErrorKind::TooLarge {
                size: source.len(),
                max: limits.max_bytes,
            },
        });
    }
    let mut builder = Builder {
        limits,
        stack: Vec::new(),
        anchors: HashMap::new(),
        stats: Stats::default(),
        documents: Vec::new(),
        doc_pos: Pos::default(),
    };
    for item in Parser::new_from_str(source) {
        let (event, span) = item.map_err(|e| YamlError {
            pos: Pos {
                line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                column: u32::try_from(e.marker().col().saturating_add(1)).unwrap_or(u32::MAX),
            },
            // The scanner looks ahead up to 255 flow levels before the first event; past that it
            // stops with "recursion limit exceeded", deeper than our own limit anyway.
            kind: if e.info() == "recursion limit exceeded" {
                YamlErrorKind::TooDeep {
                    max: limits.max_depth,
                }
            } else {
                YamlErrorKind::Syntax(e.info().to_string())
            },
        })?;
        builder.event(event, &span)?;
    }
    debug_assert!(builder.stack.is_empty());
    debug_assert!(builder.stats.nodes <= limits.max_nodes);
    debug_assert!(builder.stats.expanded_bytes <= limits.max_expanded_bytes);
    Ok(Loaded {
        documents: builder.documents,
        stats: builder.stats,
    })
}

/// An open collection.
enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        /// Merge sources (`<<: …`), applied when the mapping closes.
        merges: Vec<Node>,
        /// The key read, waiting for its value (`None` when the next node is a key).
        key: Option<PendingKey>,
    },
}

struct PendingKey {
    text: String,
    pos: Pos,
    merge: bool,
}

/// An anchored node kept for alias expansion, with its size for the budget.
struct Anchored {
    node: Node,
    nodes: usize,
    bytes: usize,
}

struct Builder<'a> {
    limits: &'a Limits,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    stats: Stats,
    documents: Vec<Document>,
    doc_pos: Pos,
}

impl Builder<'_> {
    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), YamlError> {
        let pos = Pos::from_span(span);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
            Event::DocumentStart(_) => {
                if self.documents.len() >= self.limits.max_documents {
                    return Err(err(
                        pos,
                        YamlErrorKind::TooManyDocuments {
                            max: self.limits.max_documents,
                        },
                    ));
                }
                self.doc_pos = pos;
                Ok(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                let kind = resolve(&text, style, tag.as_deref(), pos)?;
                self.charge(1, text.len(), pos)?;
                let node = Node {
                    pos,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        kind,
                    },
                };
                if anchor != 0 {
                    self.remember(anchor, &node, 1, node_bytes(&node), pos)?;
                }
                let merge_key = style == ScalarStyle::Plain
                    && matches!(&node.value, Value::Scalar { text, .. } if text == "<<");
                self.complete(node, merge_key)
            }
            Event::Alias(anchor) => {
                self.stats.aliases += 1;
                if self.stats.aliases > self.limits.max_aliases {
                    return Err(err(
                        pos,
                        YamlErrorKind::TooManyAliases {
                            max: self.limits.max_aliases,
                        },
                    ));
                }
                let Some(anchored) = self.anchors.get(&anchor) else {
                    return Err(err(pos, YamlErrorKind::UnknownAnchor));
                };
                let (nodes, bytes) = (anchored.nodes, anchored.bytes);
                // Charge before cloning: this is the bomb check.
                self.stats.alias_nodes = self.stats.alias_nodes.saturating_add(nodes);
                if self.stats.alias_nodes > self.limits.max_alias_nodes {
                    return Err(err(
                        pos,
                        YamlErrorKind::AliasExpansion {
                            max: self.limits.max_alias_nodes,
                        },
                    ));
                }
                self.charge(nodes, bytes, pos)?;
                let mut node = self
                    .anchors
                    .get(&anchor)
                    .map(|a| a.node.clone())
                    .ok_or_else(|| err(pos, YamlErrorKind::UnknownAnchor))?;
                node.pos = pos;
                self.complete(node, false)
            }
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", pos)?;
                self.open(pos)?;
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
                Ok(())
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", pos)?;
                self.open(pos)?;
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    merges: Vec::new(),
                    key: None,
                });
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => {
                    let node = Node {
                        pos,
                        value: Value::Seq(items),
                    };
                    self.close(node, anchor)
                }
                _ => Err(err(
                    pos,
                    YamlErrorKind::Syntax("unbalanced sequence".into()),
                )),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    pos,
                    anchor,
                    mut entries,
                    merges,
                    key,
                }) => {
                    debug_assert!(key.is_none(), "the parser always gives a key its value");
                    for source in merges {
                        merge_into(&mut entries, source)?;
                    }
                    let node = Node {
                        pos,
                        value: Value::Map(entries),
                    };
                    self.close(node, anchor)
                }
                _ => Err(err(pos, YamlErrorKind::Syntax("unbalanced mapping".into()))),
            },
        }
    }

    /// Counts `nodes` nodes and `bytes` scalar bytes against the limits.
    fn charge(&mut self, nodes: usize, bytes: usize, pos: Pos) -> Result<(), YamlError> {
        self.stats.nodes = self.stats.nodes.saturating_add(nodes);
        self.stats.expanded_bytes = self.stats.expanded_bytes.saturating_add(bytes);
        if self.stats.nodes > self.limits.max_nodes {
            return Err(err(
                pos,
                YamlErrorKind::TooManyNodes {
                    max: self.limits.max_nodes,
                },
            ));
        }
        if self.stats.expanded_bytes > self.limits.max_expanded_bytes {
            return Err(err(
                pos,
                YamlErrorKind::ExpansionTooLarge {
                    max: self.limits.max_expanded_bytes,
                },
            ));
        }
        Ok(())
    }

    fn open(&mut self, pos: Pos) -> Result<(), YamlError> {
        self.charge(1, 0, pos)?;
        let depth = self.stack.len() + 1;
        self.stats.max_depth = self.stats.max_depth.max(depth);
        if depth > self.limits.max_depth {
            return Err(err(
                pos,
                YamlErrorKind::TooDeep {
                    max: self.limits.max_depth,
                },
            ));
        }
        Ok(())
    }

    fn close(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        if anchor != 0 {
            let (nodes, bytes) = measure(&node);
            let pos = node.pos;
            self.remember(anchor, &node, nodes, bytes, pos)?;
        }
        self.complete(node, false)
    }

    /// Keeps an anchored node for later aliases. The copy is charged against the budget too, so the
    /// anchor table cannot double memory unnoticed.
    fn remember(
        &mut self,
        anchor: usize,
        node: &Node,
        nodes: usize,
        bytes: usize,
        pos: Pos,
    ) -> Result<(), YamlError> {
        self.charge(nodes, bytes, pos)?;
        self.anchors.insert(
            anchor,
            Anchored {
                node: node.clone(),
                nodes,
                bytes,
            },
        );
        Ok(())
    }

    /// A node is complete: it becomes a key, a value, an item, or a document root.
    fn complete(&mut self, node: Node, merge_key: bool) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => {
                self.documents.push(Document {
                    pos: self.doc_pos,
                    root: node,
                });
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map {
                entries,
                merges,
                key,
                ..
            }) => match key.take() {
                None => {
                    let Value::Scalar { text, .. } = node.value else {
                        return Err(err(node.pos, YamlErrorKind::ComplexKey));
                    };
                    *key = Some(PendingKey {
                        text,
                        pos: node.pos,
                        merge: merge_key,
                    });
                    Ok(())
                }
                Some(k) if k.merge => {
                    merges.push(node);
                    Ok(())
                }
                Some(k) => {
                    if let Some(first) = entries.iter().find(|e| e.key == k.text) {
                        return Err(err(
                            k.pos,
                            YamlErrorKind::DuplicateKey {
                                key: k.text,
                                first: first.key_pos,
                            },
                        ));
                    }
                    entries.push(Entry {
                        key: k.text,
                        key_pos: k.pos,
                        value: node,
                    });
                    Ok(())
                }
            },
        }
    }
}

/// Appends the entries of a merge source that the mapping does not have yet (explicit keys win; of
/// several sources, the earlier wins).
fn merge_into(entries: &mut Vec<Entry>, source: Node) -> Result<(), YamlError> {
    let pos = source.pos;
    match source.value {
        Value::Map(more) => {
            for e in more {
                if !entries.iter().any(|x| x.key == e.key) {
                    entries.push(e);
                }
            }
            Ok(())
        }
        Value::Seq(items) => {
            for item in items {
                if !matches!(item.value, Value::Map(_)) {
                    return Err(err(item.pos, YamlErrorKind::BadMerge));
                }
                merge_into(entries, item)?;
            }
            Ok(())
        }
        Value::Scalar { .. } => Err(err(pos, YamlErrorKind::BadMerge)),
    }
}

fn node_bytes(node: &Node) -> usize {
    match &node.value {
        Value::Scalar { text, .. } => text.len(),
        _ => 0,
    }
}

/// Nodes (keys included) and scalar bytes of a subtree. Iterative: a deep tree cannot overflow the
/// stack here.
fn measure(node: &Node) -> (usize, usize) {
    let (mut nodes, mut bytes) = (0usize, 0usize);
    let mut todo = vec![node];
    while let Some(n) = todo.pop() {
        nodes += 1;
        match &n.value {
            Value::Scalar { text, .. } => bytes += text.len(),
            Value::Seq(items) => todo.extend(items.iter()),
            Value::Map(entries) => {
                for e in entries {
                    nodes += 1;
                    bytes += e.key.len();
                    todo.push(&e.value);
                }
            }
        }
    }
    (nodes, bytes)
}

fn err(pos: Pos, kind: YamlErrorKind) -> YamlError {
    YamlError { pos, kind }
}

const CORE: &str = "tag:yaml.org,2002:";

fn check_collection_tag(tag: Option<&Tag>, want: &str, pos: Pos) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if t.handle == "!" && t.suffix.is_empty() => Ok(()),
        Some(t) if t.handle == CORE && t.suffix == want => Ok(()),
        Some(t) => Err(err(pos, YamlErrorKind::UnsupportedTag(t.to_string()))),
    }
}

/// Resolves a scalar under the core schema, or as its explicit core tag says.
fn resolve(
    text: &str,
    style: ScalarStyle,
    tag: Option<&Tag>,
    pos: Pos,
) -> Result<ScalarKind, YamlError> {
    let Some(tag) = tag else {
        return Ok(if style == ScalarStyle::Plain {
            resolve_plain(text)
        } else {
            ScalarKind::Str
        });
    };
    if tag.handle == "!" && tag.suffix.is_empty() {
        // The non-specific tag `!`: a string.
        return Ok(ScalarKind::Str);
    }
    if tag.handle != CORE {
        return Err(err(pos, YamlErrorKind::UnsupportedTag(tag.to_string())));
    }
    let plain = resolve_plain(text);
    let bad = || {
        err(
            pos,
            YamlErrorKind::BadTaggedValue {
                tag: format!("!!{}", tag.suffix),
                text: text.to_string(),
            },
        )
    };
    match tag.suffix.as_str() {
        "str" | "binary" | "timestamp" => Ok(ScalarKind::Str),
        "null" => match plain {
            ScalarKind::Null => Ok(ScalarKind::Null),
            _ => Err(bad()),
        },
        "bool" => match plain {
            ScalarKind::Bool(b) => Ok(ScalarKind::Bool(b)),
            _ => Err(bad()),
        },
        "int" => match plain {
            k @ (ScalarKind::Int(_) | ScalarKind::UInt(_)) => Ok(k),
            _ => Err(bad()),
        },
        "float" => match plain {
            ScalarKind::Int(i) => Ok(ScalarKind::Float(i as f64)),
            ScalarKind::UInt(u) => Ok(ScalarKind::Float(u as f64)),
            k @ ScalarKind::Float(_) => Ok(k),
            _ => Err(bad()),
        },
        _ => Err(err(pos, YamlErrorKind::UnsupportedTag(tag.to_string()))),
    }
}

/// The YAML 1.2 core schema for a plain scalar.
pub(crate) fn resolve_plain(text: &str) -> ScalarKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
        "true" | "True" | "TRUE" => return ScalarKind::Bool(true),
        "false" | "False" | "FALSE" => return ScalarKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return ScalarKind::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return ScalarKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return ScalarKind::Float(f64::NAN),
        _ => {}
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return radix_int(oct, 8).unwrap_or(ScalarKind::Str);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return radix_int(hex, 16).unwrap_or(ScalarKind::Str);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return ScalarKind::Int(i);
        }
        if let Ok(u) = text.trim_start_matches('+').parse::<u64>() {
            return ScalarKind::UInt(u);
        }
        return text
            .parse::<f64>()
            .map(ScalarKind::Float)
            .unwrap_or(ScalarKind::Str);
    }
    if is_core_float(digits) {
        return text
            .parse::<f64>()
            .map(ScalarKind::Float)
            .unwrap_or(ScalarKind::Str);
    }
    ScalarKind::Str
}

fn radix_int(digits: &str, radix: u32) -> Option<ScalarKind> {
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    match u64::from_str_radix(digits, radix) {
        Ok(u) => Some(i64::try_from(u).map_or(ScalarKind::UInt(u), ScalarKind::Int)),
        Err(_) => Some(ScalarKind::Str),
    }
}

/// `( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?` (sign already stripped).
fn is_core_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_digits = count_digits(&b[i..]);
    i += int_digits;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = count_digits(&b[i..]);
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let exp = count_digits(&b[i..]);
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == b.len()
}

fn count_digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Node {
        let mut loaded = load(src, &Limits::default()).expect("loads");
        assert_eq!(loaded.documents.len(), 1);
        loaded.documents.remove(0).root
    }

    #[test]
    fn core_schema() {
        for (text, kind) in [
            ("yes", ScalarKind::Str),
            ("on", ScalarKind::Str),
            ("true", ScalarKind::Bool(true)),
            ("~", ScalarKind::Null),
            ("12", ScalarKind::Int(12)),
            ("-12", ScalarKind::Int(-12)),
            ("0x1f", ScalarKind::Int(31)),
            ("0o17", ScalarKind::Int(15)),
            ("1.5", ScalarKind::Float(1.5)),
            ("1e3", ScalarKind::Float(1000.0)),
            ("1.10", ScalarKind::Float(1.1)),
            ("18446744073709551615", ScalarKind::UInt(u64::MAX)),
            ("3600s", ScalarKind::Str),
            ("1.2.3", ScalarKind::Str),
            ("e5", ScalarKind::Str),
        ] {
            assert_eq!(resolve_plain(text), kind, "{text}");
        }
    }

    #[test]
    fn positions_and_text() {
        let root = one("a:\n  b: 1.10\n  c: 'x'\n");
        let a = root.get("a").expect("a");
        let entries = a.as_map().expect("map");
        assert_eq!(entries[0].key_pos, Pos { line: 2, column: 3 });
        assert_eq!(entries[0].value.pos, Pos { line: 2, column: 6 });
        match &entries[0].value.value {
            Value::Scalar { text, kind } => {
                assert_eq!(text, "1.10");
                assert_eq!(*kind, ScalarKind::Float(1.1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_key_is_an_error_at_the_second_key() {
        let e = load("a: 1\nb: 2\na: 3\n", &Limits::default()).expect_err("dup");
        assert_eq!(e.pos, Pos { line: 3, column: 1 });
        assert!(
            matches!(e.kind, YamlErrorKind::DuplicateKey { ref key, first } if key == "a" && first.line == 1)
        );
    }

    #[test]
    fn merge_keys() {
        let root = one("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n");
        let d = root.get("d").expect("d").to_json().expect("json");
        assert_eq!(d, serde_json::json!({"x": 1, "y": 3}));
        // A quoted "<<" is an ordinary key.
        let root = one("'<<': 1\n");
        assert!(root.get("<<").is_some());
    }

    #[test]
    fn tags() {
        let root = one("a: !!str 12\nb: !!int 7\nc: !!float 1\n");
        assert_eq!(
            root.to_json().expect("json"),
            serde_json::json!({"a": "12", "b": 7, "c": 1.0})
        );
        let e = load("a: !!int x\n", &Limits::default()).expect_err("bad");
        assert!(
            matches!(e.kind, YamlErrorKind::BadTaggedValue { .. }),
            "{e}"
        );
        let e = load("a: !custom x\n", &Limits::default()).expect_err("bad");
        assert!(matches!(e.kind, YamlErrorKind::UnsupportedTag(_)), "{e}");
    }

    #[test]
    fn json_is_yaml() {
        let src = "{\"a\": [1, 2.5, \"x\\u00e9\\/\", true, null],\t\"b\": {\"c\": -3}}";
        let root = one(src);
        assert_eq!(
            root.to_json().expect("json"),
            serde_json::json!({"a": [1, 2.5, "x\u{e9}/", true, null], "b": {"c": -3}})
        );
    }

    #[test]
    fn billion_laughs_is_stopped() {
        let mut src = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        let mut prev = 'a';
        for name in "bcdefghij".chars() {
            src.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
            prev = name;
        }
        let e = load(&src, &Limits::default()).expect_err("bomb");
        assert!(
            matches!(e.kind, YamlErrorKind::AliasExpansion { max: 10_000 }),
            "{e}"
        );
    }

    #[test]
    fn recursive_alias_is_an_error() {
        let e = load("a: &a [*a]\n", &Limits::default()).expect_err("recursive");
        assert_eq!(e.kind, YamlErrorKind::UnknownAnchor);
    }

    #[test]
    fn deep_nesting_is_stopped() {
        let src = "[".repeat(100_000);
        let e = load(&src, &Limits::default()).expect_err("deep");
        assert_eq!(e.kind, YamlErrorKind::TooDeep { max: 64 });
    }
}

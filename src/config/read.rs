//! Reading the config text into a [`FileConfig`] with every problem the
//! file has as written collected, not just the first.
//!
//! Three steps:
//! - The text is parsed into a tree of TOML values that keeps where each
//!   key and value was written ([`Node`]). A syntax error stops here; it is
//!   reported with its line and column in plain words (an unterminated
//!   string says so).
//! - The tree is read into the serde structs of [`super::file`] by a
//!   deserializer of our own ([`Reader`]) that does not stop at a problem.
//!   A value of the wrong type is recorded, in TOML's words ("a whole
//!   number", "a list of strings", never `u32`), and read as an empty value
//!   of the right type. A key or table the struct does not have is recorded
//!   with the nearest known key ("did you mean `max_body_bytes`?") and
//!   left out. The struct's own field list is the schema: nothing here
//!   repeats the keys.
//! - A problem only the target type can see (a required key missing, a
//!   value that matches no form of an either-or key) ends the pass. The
//!   entry is recorded (unless it follows from a problem already recorded)
//!   and left out, and the pass starts again; so those are all reported
//!   too.
//!
//! Every problem names the key's full path (`routes[0].methods`) and line.
//! `validate` reports these first, then what validation finds in the rest,
//! leaving out what it would say about the values that were read as empty.

use super::file::FileConfig;
use super::validate::ConfigError;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess};
use std::cell::{Cell, RefCell};
use std::fmt;

/// The file as read: the structs (when a pass completed) and every problem
/// found.
pub(super) struct Read {
    /// `None` when no pass could complete.
    pub file: Option<FileConfig>,
    /// Every problem, in the order of the file.
    pub errors: Vec<ConfigError>,
    /// Paths whose values were read as empty or left out: what validation
    /// says about them (or anything under them) follows from a problem
    /// already reported.
    pub replaced: Vec<String>,
}

/// Parses `text` and reads it into a [`FileConfig`]; `Err` is a syntax
/// error.
pub(super) fn read(text: &str) -> Result<Read, ConfigError> {
    let root: Node = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
    let cx = Cx {
        text,
        left_out: RefCell::new(Vec::new()),
        found: RefCell::new(Vec::new()),
    };
    let mut file = None;
    // Each pass that stops leaves one more entry out; a file has far fewer
    // such problems than this.
    for _ in 0..256 {
        let reader = Reader {
            node: &root,
            path: Vec::new(),
            at: None,
            cx: &cx,
        };
        match FileConfig::deserialize(reader) {
            Ok(f) => {
                file = Some(f);
                break;
            }
            Err(stop) => {
                let path = stop.path.clone().unwrap_or_default();
                if path.is_empty() {
                    cx.record(Found::replaced(path, None, stop.message(), stop.fix()));
                    break;
                }
                if !cx.follows(&stop, &path) {
                    cx.record(Found::replaced(
                        path.clone(),
                        stop.at,
                        stop.message(),
                        stop.fix(),
                    ));
                }
                cx.left_out.borrow_mut().push(path);
            }
        }
    }
    let mut found = cx.found.into_inner();
    // Later passes record again what earlier ones did.
    let mut seen = std::collections::HashSet::new();
    found.retain(|f| seen.insert((f.path.clone(), f.message.clone())));
    found.sort_by_key(|f| f.at.unwrap_or(usize::MAX));
    let mut replaced: Vec<String> = found
        .iter()
        .filter(|f| f.replaced)
        .map(|f| path_string(&f.path))
        .collect();
    replaced.extend(cx.left_out.into_inner().iter().map(|p| path_string(p)));
    let errors = found
        .into_iter()
        .map(|f| {
            let key = path_string(&f.path);
            let key = match f.at {
                Some(at) if key.is_empty() => format!("line {}", line_of(text, at)),
                Some(at) => format!("{key} (line {})", line_of(text, at)),
                None if key.is_empty() => String::from("(file)"),
                None => key,
            };
            ConfigError {
                key,
                message: f.message,
                fix: f.fix,
            }
        })
        .collect();
    Ok(Read {
        file,
        errors,
        replaced,
    })
}

/// True when `key` (a validation error's key) is `path`, under it, or
/// above it: validation reporting on a value that was read as empty.
pub(super) fn related(path: &str, key: &str) -> bool {
    let under = |a: &str, b: &str| {
        b.strip_prefix(a)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    under(path, key) || under(key, path)
}

// ---------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------

/// A TOML value and where it was written (byte offset), when known.
#[derive(Debug)]
struct Node {
    at: Option<usize>,
    value: Value,
}

#[derive(Debug)]
enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

/// One `key = value` of a table (or a `[table]` under it).
#[derive(Debug)]
struct Entry {
    key: String,
    /// Where the key was written.
    at: Option<usize>,
    node: Node,
}

/// The names the toml crate uses to hand out positions (its `Spanned`
/// protocol) and date-times.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
const DATETIME: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        // Asks for the position; a value that has none comes as itself.
        d.deserialize_struct(SPANNED, SPANNED_FIELDS, NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> de::Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
        let first: Option<Key> = m.next_key()?;
        match first {
            Some(k) if k.name == SPANNED_START => {
                let start: usize = m.next_value()?;
                let _: Option<Key> = m.next_key()?;
                let _end: usize = m.next_value()?;
                let _: Option<Key> = m.next_key()?;
                let value = m.next_value_seed(ValueSeed)?;
                Ok(Node {
                    at: Some(start),
                    value,
                })
            }
            first => Ok(Node {
                at: None,
                value: ValueVisitor.table(first, m)?,
            }),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Node, A::Error> {
        Ok(Node::bare(ValueVisitor.visit_seq(s)?))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::bare(Value::String(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::bare(Value::Integer(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::bare(Value::Integer(v as i64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::bare(Value::Float(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::bare(Value::Boolean(v)))
    }
}

impl Node {
    fn bare(value: Value) -> Node {
        Node { at: None, value }
    }
}

/// A table key, with its position when the parser has one.
struct Key {
    name: String,
    at: Option<usize>,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_struct(SPANNED, SPANNED_FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> de::Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            name: v.to_string(),
            at: None,
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Key, A::Error> {
        let _: Option<String> = m.next_key()?;
        let start: usize = m.next_value()?;
        let _: Option<String> = m.next_key()?;
        let _end: usize = m.next_value()?;
        let _: Option<String> = m.next_key()?;
        let name: String = m.next_value()?;
        Ok(Key {
            name,
            at: Some(start),
        })
    }
}

/// The value inside a position: read as itself (asking for the position
/// again would only get it again).
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl ValueVisitor {
    /// A table whose first key was already taken (or a date-time, which
    /// the parser hands out as a one-key table).
    fn table<'de, A: MapAccess<'de>>(
        self,
        first: Option<Key>,
        mut m: A,
    ) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        let mut next = first;
        let mut is_first = true;
        while let Some(k) = next {
            if is_first && k.name == DATETIME {
                let s: String = m.next_value()?;
                return Ok(Value::Datetime(s));
            }
            is_first = false;
            let node: Node = m.next_value()?;
            entries.push(Entry {
                key: k.name,
                at: k.at,
                node,
            });
            next = m.next_key()?;
        }
        Ok(Value::Table(entries))
    }
}

impl<'de> de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Value, A::Error> {
        let first = m.next_key()?;
        self.table(first, m)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = s.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Value::Array(items))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Integer(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Integer(v as i64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Boolean(v))
    }
}

// ---------------------------------------------------------------------------
// Paths and problems
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

type Path = Vec<Seg>;

/// `routes[0].compose.parts[1].upstream`, as validation names keys.
fn path_string(p: &[Seg]) -> String {
    let mut s = String::new();
    for seg in p {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => {
                s.push('[');
                s.push_str(&i.to_string());
                s.push(']');
            }
        }
    }
    s
}

fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line that holds byte `at`, trimmed.
fn line_text(text: &str, at: usize) -> &str {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |p| p + 1);
    let end = text[at..].find('\n').map_or(text.len(), |p| at + p);
    text[start..end].trim()
}

struct Found {
    path: Path,
    at: Option<usize>,
    message: String,
    fix: String,
    /// The value was read as empty, or the entry left out (not an unknown
    /// key, which is simply not there for validation).
    replaced: bool,
    /// The entry was dropped as unknown.
    unknown: bool,
}

impl Found {
    fn replaced(path: Path, at: Option<usize>, message: String, fix: String) -> Found {
        Found {
            path,
            at,
            message,
            fix,
            replaced: true,
            unknown: false,
        }
    }
}

struct Cx<'t> {
    text: &'t str,
    /// Entries a pass stopped at: later passes leave them out.
    left_out: RefCell<Vec<Path>>,
    found: RefCell<Vec<Found>>,
}

impl Cx<'_> {
    fn record(&self, f: Found) {
        self.found.borrow_mut().push(f);
    }

    fn is_left_out(&self, p: &[Seg]) -> bool {
        self.left_out.borrow().iter().any(|l| l == p)
    }

    /// Whether a pass stopping at `path` follows from a problem already
    /// recorded there: a table read as empty or missing a key because one
    /// of its entries was unknown or left out; anything under a value
    /// already reported.
    fn follows(&self, stop: &Stop, path: &[Seg]) -> bool {
        let found = self.found.borrow();
        let left = self.left_out.borrow();
        match stop.kind {
            StopKind::Missing(_) => {
                let child = |p: &[Seg]| p.len() == path.len() + 1 && p.starts_with(path);
                found
                    .iter()
                    .any(|f| f.path == path || (f.unknown && child(&f.path)))
                    || left.iter().any(|l| child(l))
            }
            _ => {
                found.iter().any(|f| f.path.starts_with(path))
                    || left.iter().any(|l| l.starts_with(path))
            }
        }
    }
}

/// What ends a pass. Errors the structs' visitors raise (through
/// [`de::Error`]) get the path of the value being read when they pass
/// through its [`Reader`].
#[derive(Debug)]
struct Stop {
    kind: StopKind,
    path: Option<Path>,
    at: Option<usize>,
    /// The value as TOML words ("the string \"x\"").
    found: String,
}

#[derive(Debug)]
enum StopKind {
    Missing(&'static str),
    Other(String),
    /// A probe for a list's element type (never leaves this module).
    Probe,
}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop {
            kind: StopKind::Other(msg.to_string()),
            path: None,
            at: None,
            found: String::new(),
        }
    }
    fn missing_field(field: &'static str) -> Self {
        Stop {
            kind: StopKind::Missing(field),
            path: None,
            at: None,
            found: String::new(),
        }
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Stop {}

impl Stop {
    fn message(&self) -> String {
        match &self.kind {
            StopKind::Missing(field) => format!("missing key `{field}`"),
            StopKind::Other(m) => match untagged_forms(m) {
                Some(forms) => format!("expected {forms}, found {}", self.found),
                None => m.clone(),
            },
            StopKind::Probe => String::from("(probe)"),
        }
    }

    fn fix(&self) -> String {
        match &self.kind {
            StopKind::Missing(field) => format!("add {field} = ... to it"),
            StopKind::Other(m) if untagged_forms(m).is_some() => {
                String::from("write the value in one of those forms")
            }
            _ => String::from("correct the value"),
        }
    }
}

/// The forms a key that takes one of several (an untagged enum in
/// `file`) accepts, in TOML words.
fn untagged_forms(message: &str) -> Option<&'static str> {
    let name = message
        .split("untagged enum ")
        .nth(1)?
        .split(|c: char| !c.is_alphanumeric())
        .next()?;
    Some(match name {
        "OneOrMany" => "an address string like \"127.0.0.1:8080\" or a list of them",
        "TargetFile" => {
            "an address string like \"127.0.0.1:9001\" or a table { addr = \"127.0.0.1:9001\", weight = 2 }"
        }
        "KeyFile" => "a string or a list of strings",
        "RouteCorsFile" => {
            "true, false or a table like { origins = [\"https://app.example.com\"] }"
        }
        "TierFile" => "a whole number (the limit) or a table like { limit = 100, burst = 20 }",
        _ => "another form",
    })
}

/// A value in TOML words, for "found ...".
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > 40 => {
            let short: String = s.chars().take(37).collect();
            format!("the string {:?}", format!("{short}..."))
        }
        Value::String(s) => format!("the string {s:?}"),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => format!("the date-time {d}"),
        Value::Array(_) => String::from("a list"),
        Value::Table(_) => String::from("a table"),
    }
}

/// The value as it would be written in TOML (for a fix's example).
fn as_toml(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => d.clone(),
        _ => return None,
    })
}

/// The nearest of `known` to `key`: a small edit distance, or one that
/// contains it (`threshold` for `failure_threshold`).
fn nearest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = (key.chars().count() / 3).max(2);
    let best = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k);
    best.or_else(|| {
        (key.len() >= 3)
            .then(|| known.iter().find(|k| k.contains(key) || key.contains(**k)))
            .flatten()
            .copied()
    })
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------

/// Reads one value of the tree into whatever the structs ask for, recording
/// what does not fit instead of stopping.
struct Reader<'a, 't> {
    node: &'a Node,
    path: Path,
    /// Where the value's key (or, in a list, the value) was written.
    at: Option<usize>,
    cx: &'a Cx<'t>,
}

impl<'a, 't> Reader<'a, 't> {
    /// The last key of the path, for examples in fixes (`retries = 1`).
    fn name(&self) -> String {
        match self.path.iter().rev().find_map(|s| match s {
            Seg::Key(k) => Some(k.clone()),
            Seg::Index(_) => None,
        }) {
            Some(k) => k,
            None => String::from("key"),
        }
    }

    fn mismatch(&self, expected: &str, fix: String) {
        self.cx.record(Found::replaced(
            self.path.clone(),
            self.at,
            format!("expected {expected}, found {}", describe(&self.node.value)),
            fix,
        ));
    }

    /// Gives an error from a visitor below this value the value's path.
    fn stop(&self, mut e: Stop) -> Stop {
        if e.path.is_none() {
            e.path = Some(self.path.clone());
            e.at = self.at;
            e.found = describe(&self.node.value);
        }
        e
    }

    fn whole_number(&self, min: i128, max: i128) -> i128 {
        let name = self.name();
        match &self.node.value {
            Value::Integer(i) if (min..=max).contains(&(*i as i128)) => *i as i128,
            Value::Integer(i) => {
                let expected = if min == 0 && max >= i64::MAX as i128 {
                    String::from("a whole number of 0 or more")
                } else if min == 0 {
                    format!("a whole number from 0 to {max}")
                } else {
                    format!("a whole number from {min} to {max}")
                };
                let fix = if *i < 0 && min == 0 {
                    String::from("use 0 or a positive whole number")
                } else {
                    format!("use a whole number from {min} to {max}")
                };
                self.cx.record(Found::replaced(
                    self.path.clone(),
                    self.at,
                    format!("expected {expected}, found {i}"),
                    fix,
                ));
                0
            }
            Value::String(s) if s.trim().parse::<i64>().is_ok() => {
                self.mismatch(
                    "a whole number",
                    format!("write the number without quotes: {name} = {}", s.trim()),
                );
                0
            }
            Value::Float(f) if f.fract() == 0.0 => {
                self.mismatch(
                    "a whole number",
                    format!("write it without a decimal point: {name} = {}", *f as i64),
                );
                0
            }
            _ => {
                self.mismatch(
                    "a whole number",
                    format!("write a whole number without quotes, e.g. {name} = 10"),
                );
                0
            }
        }
    }

    fn string(&self) -> String {
        match &self.node.value {
            Value::String(s) => s.clone(),
            v => {
                let fix = match as_toml(v) {
                    Some(raw) => format!("put it in quotes: {} = \"{raw}\"", self.name()),
                    None => format!("write a string in quotes: {} = \"...\"", self.name()),
                };
                self.mismatch("a string", fix);
                String::new()
            }
        }
    }

    fn table_access(&self, fields: Option<&'static [&'static str]>) -> TableAccess<'a, 't> {
        let entries: &'a [Entry] = match &self.node.value {
            Value::Table(e) => e,
            _ => &[],
        };
        TableAccess {
            entries: entries.iter(),
            fields,
            parent: self.path.clone(),
            cx: self.cx,
            pending: None,
        }
    }

    fn unexpected_table(&self) {
        let name = self.name();
        self.mismatch(
            "a table",
            format!(
                "write a table: [{}] on a line of its own with its keys below, or {name} = {{ ... }}",
                path_string(&self.path)
            ),
        );
    }
}

macro_rules! whole_number {
    ($($method:ident $visit:ident $ty:ty),* $(,)?) => {
        $(
            fn $method<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                let n = self.whole_number(<$ty>::MIN as i128, <$ty>::MAX as i128) as $ty;
                v.$visit(n).map_err(|e| self.stop(e))
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Reader<'_, '_> {
    type Error = Stop;

    fn deserialize_any<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        let r = match &self.node.value {
            Value::String(s) => v.visit_str(s),
            Value::Integer(i) => v.visit_i64(*i),
            Value::Float(f) => v.visit_f64(*f),
            Value::Boolean(b) => v.visit_bool(*b),
            Value::Datetime(d) => v.visit_str(d),
            Value::Array(_) => v.visit_seq(self.array_access()),
            Value::Table(_) => v.visit_map(self.table_access(None)),
        };
        r.map_err(|e| self.stop(e))
    }

    fn deserialize_bool<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        let b = match &self.node.value {
            Value::Boolean(b) => *b,
            Value::String(s) if s == "true" || s == "false" => {
                self.mismatch(
                    "a boolean (true or false)",
                    format!("write it without quotes: {} = {s}", self.name()),
                );
                false
            }
            _ => {
                self.mismatch(
                    "a boolean (true or false)",
                    format!("write {} = true or {} = false", self.name(), self.name()),
                );
                false
            }
        };
        v.visit_bool(b).map_err(|e| self.stop(e))
    }

    whole_number! {
        deserialize_u8 visit_u8 u8,
        deserialize_u16 visit_u16 u16,
        deserialize_u32 visit_u32 u32,
        deserialize_u64 visit_u64 u64,
        deserialize_i8 visit_i8 i8,
        deserialize_i16 visit_i16 i16,
        deserialize_i32 visit_i32 i32,
        deserialize_i64 visit_i64 i64,
    }

    fn deserialize_f32<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        let f = match &self.node.value {
            Value::Float(f) => *f,
            Value::Integer(i) => *i as f64,
            Value::String(s) if s.trim().parse::<f64>().is_ok() => {
                self.mismatch(
                    "a number",
                    format!(
                        "write the number without quotes: {} = {}",
                        self.name(),
                        s.trim()
                    ),
                );
                0.0
            }
            _ => {
                self.mismatch(
                    "a number",
                    format!("write a number without quotes, e.g. {} = 0.5", self.name()),
                );
                0.0
            }
        };
        v.visit_f64(f).map_err(|e| self.stop(e))
    }

    fn deserialize_char<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        let s = self.string();
        match s.chars().next() {
            Some(c) if s.chars().count() == 1 => v.visit_char(c),
            _ => v.visit_str(&s),
        }
        .map_err(|e| self.stop(e))
    }

    fn deserialize_str<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        let s = self.string();
        v.visit_str(&s).map_err(|e| self.stop(e))
    }

    fn deserialize_string<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        let s = self.string();
        v.visit_bytes(s.as_bytes()).map_err(|e| self.stop(e))
    }

    fn deserialize_byte_buf<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        self.deserialize_bytes(v)
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        // An absent key never gets here: present is Some.
        v.visit_some(self)
    }

    fn deserialize_unit<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_unit().map_err(|e| self.stop(e))
    }

    fn deserialize_unit_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Stop> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        if let Value::Array(_) = &self.node.value {
            let access = self.array_access();
            return v.visit_seq(access).map_err(|e| self.stop(e));
        }
        // The element type says what it is by the method it asks for.
        let kind = Cell::new(None);
        let value = v.visit_seq(ProbeSeq { kind: &kind });
        let expected = match kind.get() {
            Some(k) => format!("a list of {k}"),
            None => String::from("a list"),
        };
        let name = self.name();
        let fix = match as_toml(&self.node.value) {
            Some(raw) => format!("write a list: {name} = [{raw}]"),
            None => format!("write a list: {name} = [ ... ]"),
        };
        self.mismatch(&expected, fix);
        value.map_err(|e| self.stop(e))
    }

    fn deserialize_tuple<V: de::Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Stop> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        if !matches!(self.node.value, Value::Table(_)) {
            self.unexpected_table();
        }
        v.visit_map(self.table_access(None))
            .map_err(|e| self.stop(e))
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Stop> {
        if !matches!(self.node.value, Value::Table(_)) {
            self.unexpected_table();
        }
        v.visit_map(self.table_access(Some(fields)))
            .map_err(|e| self.stop(e))
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Stop> {
        let s = self.string();
        v.visit_enum(IntoDeserializer::<Stop>::into_deserializer(s))
            .map_err(|e| self.stop(e))
    }

    fn deserialize_identifier<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_unit()
    }
}

impl<'a, 't> Reader<'a, 't> {
    /// Reads this value with `seed`. An error the type itself raises after
    /// reading (an either-or key whose value fits no form) is this value's
    /// too.
    fn read<'de, T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Stop> {
        let (path, at, found) = (self.path.clone(), self.at, describe(&self.node.value));
        seed.deserialize(self).map_err(|mut e| {
            if e.path.is_none() {
                e.path = Some(path);
                e.at = at;
                e.found = found;
            }
            e
        })
    }

    fn array_access(&self) -> ArrayAccess<'a, 't> {
        let items: &'a [Node] = match &self.node.value {
            Value::Array(items) => items,
            _ => &[],
        };
        ArrayAccess {
            items: items.iter().enumerate(),
            parent: self.path.clone(),
            at: self.at,
            cx: self.cx,
        }
    }
}

struct ArrayAccess<'a, 't> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    parent: Path,
    at: Option<usize>,
    cx: &'a Cx<'t>,
}

impl<'de> SeqAccess<'de> for ArrayAccess<'_, '_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        for (i, node) in self.items.by_ref() {
            let mut path = self.parent.clone();
            path.push(Seg::Index(i));
            if self.cx.is_left_out(&path) {
                continue;
            }
            let r = Reader {
                node,
                path,
                at: node.at.or(self.at),
                cx: self.cx,
            };
            return r.read(seed).map(Some);
        }
        Ok(None)
    }
}

struct TableAccess<'a, 't> {
    entries: std::slice::Iter<'a, Entry>,
    /// The struct's keys; `None` for a map (any key).
    fields: Option<&'static [&'static str]>,
    parent: Path,
    cx: &'a Cx<'t>,
    pending: Option<(&'a Entry, Path)>,
}

impl TableAccess<'_, '_> {
    /// Records a key the struct does not have.
    fn unknown(&self, e: &Entry, path: Path, fields: &[&str]) {
        let text = self.cx.text;
        let here = e.at.map(|at| line_text(text, at)).unwrap_or("");
        let within = if self.parent.is_empty() {
            String::from("the top level")
        } else {
            format!("[{}]", path_string(&self.parent))
        };
        // A `[table]` or `[[table]]` header names it; a key is a key.
        let header = here.starts_with('[').then(|| {
            let end = here.find(']').map_or(here.len(), |p| {
                if here.starts_with("[[") {
                    (p + 2).min(here.len())
                } else {
                    p + 1
                }
            });
            &here[..end]
        });
        let table = header.filter(|h| {
            h.trim_matches(|c| c == '[' || c == ']')
                .rsplit('.')
                .next()
                .map(|last| last.trim().trim_matches(|c| c == '"' || c == '\''))
                == Some(e.key.as_str())
        });
        let (what, kind) = match (table, header) {
            (Some(h), _) => (format!("unknown table `{h}`"), "table"),
            (None, Some(h)) => (
                format!("unknown key `{}` (in the table header `{h}`)", e.key),
                "key",
            ),
            (None, None) => (format!("unknown key `{}`", e.key), "key"),
        };
        let (message, fix) = match nearest(&e.key, fields) {
            Some(near) => (
                format!("{what}; did you mean `{near}`?"),
                format!("rename it to `{near}`, or remove it"),
            ),
            None => (
                format!("{what}: {within} has no {kind} `{}`", e.key),
                format!(
                    "remove it or correct its spelling; {within} takes: {} \
                     (config/ringgate.example.toml lists every key)",
                    fields.join(", ")
                ),
            ),
        };
        self.cx.record(Found {
            path,
            at: e.at.or(e.node.at),
            message,
            fix,
            replaced: false,
            unknown: true,
        });
    }
}

impl<'de> MapAccess<'de> for TableAccess<'_, '_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        while let Some(e) = self.entries.next() {
            let mut path = self.parent.clone();
            path.push(Seg::Key(e.key.clone()));
            if self.cx.is_left_out(&path) {
                continue;
            }
            if let Some(fields) = self.fields
                && !fields.contains(&e.key.as_str())
            {
                // Recorded once per pass; duplicates are dropped at the end.
                self.unknown(e, path, fields);
                continue;
            }
            let key = seed.deserialize(e.key.as_str().into_deserializer())?;
            self.pending = Some((e, path));
            return Ok(Some(key));
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let (e, path) = self
            .pending
            .take()
            .expect("next_value_seed follows next_key_seed");
        let r = Reader {
            node: &e.node,
            path,
            at: e.at.or(e.node.at),
            cx: self.cx,
        };
        r.read(seed)
    }
}

/// A list of one element that is never there: the element's type says
/// what it is by the method it asks for.
struct ProbeSeq<'k> {
    kind: &'k Cell<Option<&'static str>>,
}

impl<'de> SeqAccess<'de> for ProbeSeq<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        let _ = seed.deserialize(Probe { kind: self.kind });
        Ok(None)
    }
}

struct Probe<'k> {
    kind: &'k Cell<Option<&'static str>>,
}

impl Probe<'_> {
    fn says<T>(self, kind: &'static str) -> Result<T, Stop> {
        self.kind.set(Some(kind));
        Err(Stop {
            kind: StopKind::Probe,
            path: None,
            at: None,
            found: String::new(),
        })
    }
}

macro_rules! probe {
    ($($method:ident => $kind:expr),* $(,)?) => {
        $(
            fn $method<V: de::Visitor<'de>>(self, _v: V) -> Result<V::Value, Stop> {
                self.says($kind)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    probe! {
        deserialize_bool => "booleans (true or false)",
        deserialize_u8 => "whole numbers",
        deserialize_u16 => "whole numbers",
        deserialize_u32 => "whole numbers",
        deserialize_u64 => "whole numbers",
        deserialize_i8 => "whole numbers",
        deserialize_i16 => "whole numbers",
        deserialize_i32 => "whole numbers",
        deserialize_i64 => "whole numbers",
        deserialize_f32 => "numbers",
        deserialize_f64 => "numbers",
        deserialize_char => "strings",
        deserialize_str => "strings",
        deserialize_string => "strings",
        deserialize_bytes => "strings",
        deserialize_byte_buf => "strings",
        deserialize_seq => "lists",
        deserialize_map => "tables",
        deserialize_identifier => "strings",
    }

    fn deserialize_any<V: de::Visitor<'de>>(self, _v: V) -> Result<V::Value, Stop> {
        self.says_nothing()
    }
    fn deserialize_ignored_any<V: de::Visitor<'de>>(self, _v: V) -> Result<V::Value, Stop> {
        self.says_nothing()
    }
    fn deserialize_unit<V: de::Visitor<'de>>(self, _v: V) -> Result<V::Value, Stop> {
        self.says_nothing()
    }
    fn deserialize_option<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
        v.visit_some(self)
    }
    fn deserialize_unit_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _v: V,
    ) -> Result<V::Value, Stop> {
        self.says_nothing()
    }
    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Stop> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_tuple<V: de::Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, Stop> {
        self.says("lists")
    }
    fn deserialize_tuple_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _v: V,
    ) -> Result<V::Value, Stop> {
        self.says("lists")
    }
    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, Stop> {
        self.says("tables")
    }
    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, Stop> {
        self.says("strings")
    }
}

impl Probe<'_> {
    fn says_nothing<T>(self) -> Result<T, Stop> {
        Err(Stop {
            kind: StopKind::Probe,
            path: None,
            at: None,
            found: String::new(),
        })
    }
}

// ---------------------------------------------------------------------------
// Syntax errors
// ---------------------------------------------------------------------------

/// A TOML syntax error in plain words, with the key (when the line has
/// one), the line and the column.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim().to_string();
    let Some(span) = e.span().filter(|s| s.start <= text.len()) else {
        return ConfigError {
            key: String::from("(file)"),
            message: msg.replace('\n', "; "),
            fix: String::from("correct the TOML syntax"),
        };
    };
    let at = span.start;
    let line_start = text[..at].rfind('\n').map_or(0, |p| p + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |p| at + p);
    let line = &text[line_start..line_end];
    let line_no = line_of(text, at);
    let column = text[line_start..at].chars().count() + 1;
    let place = format!("line {line_no}, column {column}");
    // The key written on that line, under the table header above it.
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            let end = l.rfind(']').map_or(l.len(), |p| p + 1);
            l[..end]
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string()
        });
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        });
    let key = match (table, key) {
        _ if line.trim_start().starts_with('[') => format!("{} ({place})", line.trim()),
        (Some(t), Some(k)) => format!("{t}.{k} ({place})"),
        (None, Some(k)) => format!("{k} ({place})"),
        _ => place.clone(),
    };
    let value_start = line.find('=').map_or(line_start, |p| line_start + p + 1);
    let value = text[value_start.min(line_end)..line_end].trim();
    let odd = |q: char| value.chars().filter(|&c| c == q).count() % 2 == 1;
    let control = text[at..]
        .chars()
        .next()
        .filter(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
    let (message, fix) = if let Some(c) = control {
        (
            format!(
                "a control character (U+{:04X}) is not allowed here: TOML allows only tabs and line ends",
                c as u32
            ),
            String::from("remove the character"),
        )
    } else if msg.is_empty() && value.is_empty() && line.contains('=') {
        (
            String::from("a value is missing after `=`"),
            String::from(
                "write a value: a \"string\", a number, true or false, [a, list] or { a = table }",
            ),
        )
    } else if msg.is_empty() {
        (
            String::from("this is not valid TOML"),
            format!("correct the TOML syntax at {place}"),
        )
    } else if msg.starts_with("invalid multiline basic string") && !text[at..].contains("\"\"\"") {
        (
            String::from("unterminated multi-line string: no closing \"\"\""),
            String::from("end the string with \"\"\""),
        )
    } else if msg.starts_with("invalid multiline literal string") && !text[at..].contains("'''") {
        (
            String::from("unterminated multi-line string: no closing '''"),
            String::from("end the string with '''"),
        )
    } else if msg.starts_with("invalid basic string") && odd('"') {
        (
            String::from("unterminated string: the closing \" is missing"),
            String::from(
                "end the string with \" on the same line (a string over several lines is written between \"\"\" and \"\"\")",
            ),
        )
    } else if msg.starts_with("invalid literal string") && odd('\'') {
        (
            String::from("unterminated string: the closing ' is missing"),
            String::from("end the string with ' on the same line"),
        )
    } else if msg.starts_with("invalid string") && msg.contains("expected `\"`") {
        let word: String = text[at..line_end]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '#' && *c != ',')
            .collect();
        if word.is_empty() {
            (
                String::from("a value is missing after `=`"),
                String::from(
                    "write a value: a \"string\", a number, true or false, [a, list] or { a = table }",
                ),
            )
        } else {
            (
                format!(
                    "`{word}` is not a TOML value: text must be in quotes (values are \"strings\", numbers, true or false, dates, [lists] and {{ tables }})"
                ),
                format!("put it in quotes: \"{word}\""),
            )
        }
    } else {
        (
            msg.replace('\n', "; "),
            format!("correct the TOML syntax at {place}"),
        )
    };
    ConfigError { key, message, fix }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        match read(text) {
            Ok(r) => r.errors,
            Err(e) => vec![e],
        }
    }

    #[test]
    fn nearest_known_key() {
        let known = ["listen", "workers", "max_body_bytes", "failure_threshold"];
        assert_eq!(nearest("listn", &known), Some("listen"));
        assert_eq!(nearest("max_body_byte", &known), Some("max_body_bytes"));
        assert_eq!(nearest("threshold", &known), Some("failure_threshold"));
        assert_eq!(nearest("colour", &known), None);
    }

    #[test]
    fn every_type_error_is_reported_in_toml_words() {
        let e = errors(
            "[server]\nworkers = \"2\"\npin = \"yes\"\n[upstreams.a]\ntargets = [\"127.0.0.1:1\"]\n\
             retries = \"1\"\nconnect_timeout_ms = -5\n[[routes]]\npath = \"/\"\nmethods = \"GET\"\n",
        );
        let text: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(e.len(), 5, "{text:#?}");
        assert!(
            text[0].starts_with(
                "server.workers (line 2): expected a whole number, found the string \"2\""
            ),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("server.pin (line 3): expected a boolean (true or false)"),
            "{text:#?}"
        );
        assert!(
            text[2].starts_with("upstreams.a.retries (line 6): expected a whole number"),
            "{text:#?}"
        );
        assert!(
            text[3].contains(
                "upstreams.a.connect_timeout_ms (line 7): expected a whole number of 0 or more, found -5"
            ),
            "{text:#?}"
        );
        assert!(
            text[4].starts_with(
                "routes[0].methods (line 10): expected a list of strings, found the string \"GET\""
            ),
            "{text:#?}"
        );
        assert!(text[4].contains("methods = [\"GET\"]"), "{text:#?}");
        for t in &text {
            for rust in ["usize", "u32", "u64", "i64", "i32", "u16"] {
                assert!(!t.contains(rust), "{t}");
            }
        }
    }

    #[test]
    fn missing_keys_and_either_or_forms_are_all_reported() {
        let e = errors(
            "[server]\nlisten = 5\n[upstreams.a]\ntargets = [5, \"127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\n\
             upstreams = [{ weight = 1 }, { name = \"a\" }]\n",
        );
        let text: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(e.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("server.listen (line 2): expected an address string"),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("upstreams.a.targets[0] (line 4): expected an address string"),
            "{text:#?}"
        );
        assert!(
            text[2].starts_with("routes[0].upstreams[0] (line 7): missing key `name`"),
            "{text:#?}"
        );
    }

    #[test]
    fn an_unknown_table_is_named_with_its_full_path() {
        let e = errors(
            "[server]\nlisten = \"127.0.0.1:1\"\n\n[[server.quic]]\nlisten = \"127.0.0.1:2\"\n",
        );
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].key, "server.quic (line 4)");
        assert!(
            e[0].message.starts_with("unknown table `[[server.quic]]`"),
            "{e:#?}"
        );
    }

    #[test]
    fn every_syntax_error_has_a_message() {
        for (text, want) in [
            ("r=", "a value is missing after `=`"),
            ("r=\n", "a value is missing after `=`"),
            ("# \0\n", "a control character (U+0000)"),
            ("a = \"x\0\"\n", "a control character (U+0000)"),
        ] {
            let e = errors(text);
            assert_eq!(e.len(), 1, "{text:?}: {e:#?}");
            assert!(e[0].message.starts_with(want), "{text:?}: {e:#?}");
            assert!(!e[0].fix.is_empty() && !e[0].key.is_empty(), "{e:#?}");
        }
    }

    #[test]
    fn unterminated_strings_say_so() {
        let e = errors("[server]\nlisten = \"127.0.0.1:8080\nworkers = 2\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].key, "server.listen (line 2, column 25)");
        assert!(e[0].message.starts_with("unterminated string"), "{e:#?}");
        let e = errors("a = 'x\n");
        assert!(e[0].message.starts_with("unterminated string"), "{e:#?}");
        let e = errors("[log]\naccess = json\n");
        assert_eq!(e[0].key, "log.access (line 2, column 10)");
        assert!(
            e[0].message.contains("`json` is not a TOML value"),
            "{e:#?}"
        );
    }
}

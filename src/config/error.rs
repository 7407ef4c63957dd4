//! [`ConfigError`]: one fault in one file, displayed as one line
//! (`routes.toml:27:7: route[3].alpn: expected a list of strings, found an integer`), and the
//! helpers that turn a byte span into a line, a column and a key path.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::terminate::TerminateError;
use toml::Spanned;

/// A config fault, located. Its `Display` is the whole line printed to the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file at fault: routes.toml, or a file it names.
    pub file: PathBuf,
    /// 1-based line and column inside `file`, where the fault has a place in it.
    pub position: Option<(usize, usize)>,
    /// The key path (`route[3].alpn`), 0-based indexes; empty where no key applies.
    pub key: String,
    /// What is wrong: lowercase, no trailing period.
    pub message: String,
}

impl ConfigError {
    /// A fault with the whole file (it can't be read, say).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            position: None,
            key: String::new(),
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// A fault at `position` (line, column) in `file`.
    pub(super) fn at(
        file: &Path,
        position: (usize, usize),
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_owned(),
            position: Some(position),
            key: bounded(key.into(), MAX_KEY),
            message: bounded(message.into(), MAX_MESSAGE),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(formatter, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(formatter, ": {}", self.key)?;
        }
        write!(formatter, ": {}", self.message)
    }
}

/// Characters of a value an error message shows; longer values are cut, with a marker.
const SHOWN_CHARS: usize = 64;
/// Bytes of message an error line carries at most, whatever it quotes.
const MAX_MESSAGE: usize = 300;
/// Bytes of key path an error line carries at most (a key is a name someone typed).
const MAX_KEY: usize = 100;

/// A value as an error message quotes it: escaped, in double quotes, and cut to its first
/// [`SHOWN_CHARS`] characters with a marker when longer, so a 50 MB value gives a short line.
pub fn quoted(value: &str) -> String {
    let mut shown: String = value.chars().take(SHOWN_CHARS).collect();
    shown = shown.escape_debug().to_string();
    if value.chars().nth(SHOWN_CHARS).is_some() {
        format!("\"{shown}…\" ({} bytes)", value.len())
    } else {
        format!("\"{shown}\"")
    }
}

/// `text` cut to `max` bytes (at a character boundary) with a marker.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("… (cut)");
    }
    text
}

/// Builds [`ConfigError`]s for one file's text.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
    /// Byte offset where each line after the first starts (see [`line_starts`]), so finding a
    /// line is a binary search, not a count from the top: a 100,000-route file stays linear.
    pub line_starts: &'a [usize],
}

/// The byte offsets just after each newline of `text`.
pub(super) fn line_starts(text: &str) -> Vec<usize> {
    text.match_indices('\n').map(|(at, _)| at + 1).collect()
}

impl Source<'_> {
    /// A fault at `span` in this file.
    pub fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(self.file, self.line_column(span.start), key, message)
    }

    /// A fault at a spanned value.
    pub fn at<T>(
        &self,
        value: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(value.span(), key, message)
    }

    /// 1-based line and column (in characters) of byte `offset`.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        // Lines that start at or before `offset`, past the first.
        let line = self
            .line_starts
            .partition_point(|&start| start <= before.len());
        let line_start = if line == 0 {
            0
        } else {
            self.line_starts[line - 1]
        };
        (line + 1, before[line_start..].chars().count() + 1)
    }

    /// A path routes.toml gives, taken from routes.toml's directory when relative.
    pub fn relative_path(&self, value: &Spanned<String>) -> PathBuf {
        self.file
            .parent()
            .unwrap_or(Path::new(""))
            .join(value.get_ref())
    }

    /// A fault in a file `table` names, located at the key (of `named`) that names that file.
    pub fn file_fault(
        &self,
        error: TerminateError,
        table: &str,
        named: &[(&str, &Spanned<String>)],
    ) -> ConfigError {
        let found = named
            .iter()
            .find(|(_, value)| self.relative_path(value) == error.file)
            .or(named.first());
        match found {
            Some((key, value)) => self.at(value, format!("{table}.{key}"), error.to_string()),
            None => ConfigError::file(&error.file, error.message),
        }
    }

    /// A TOML syntax or type error, with the key path of the value it points at.
    pub fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = rephrase(error.message().trim());
        match error.span() {
            Some(span) => {
                let key = key_path(self.text, span.start).unwrap_or_default();
                self.error(span, key, message)
            }
            None => ConfigError::file(self.file, bounded(message, MAX_MESSAGE)),
        }
    }
}

/// serde says "invalid type: integer `3`, expected a sequence"; the house style is
/// "expected a list, found integer `3`".
fn rephrase(message: &str) -> String {
    let message = message
        .replace("a sequence", "a list")
        .replace("a map", "a table")
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key");
    match message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        Some((found, expected)) => format!("expected {expected}, found {found}"),
        None => message,
    }
}

/// The dotted key path (`route[3].alpn[1]`) of the innermost key or value around `offset`, if
/// the document parses.
fn key_path(text: &str, offset: usize) -> Option<String> {
    let document = DeTable::parse(text).ok()?;
    let mut path = String::new();
    walk_table(document.get_ref(), offset, &mut path);
    Some(path)
}

fn walk_table(table: &DeTable<'_>, offset: usize, path: &mut String) {
    for (key, value) in table {
        let on_key = key.span().contains(&offset);
        if on_key || value.span().contains(&offset) || contains_deep(value, offset) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key.get_ref());
            if !on_key {
                walk_value(value, offset, path);
            }
            return;
        }
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) {
    match value.get_ref() {
        DeValue::Table(table) => walk_table(table, offset, path),
        DeValue::Array(array) => {
            if let Some(index) = array.iter().position(|item| contains_deep(item, offset)) {
                path.push_str(&format!("[{index}]"));
                walk_value(&array[index], offset, path);
            }
        }
        _ => {}
    }
}

/// Whether `offset` falls inside `value`, or inside any key or value it holds (a table's own
/// span does not always cover the keys under its header).
fn contains_deep(value: &Spanned<DeValue<'_>>, offset: usize) -> bool {
    if value.span().contains(&offset) {
        return true;
    }
    match value.get_ref() {
        DeValue::Table(table) => table
            .iter()
            .any(|(key, value)| key.span().contains(&offset) || contains_deep(value, offset)),
        DeValue::Array(array) => array.iter().any(|item| contains_deep(item, offset)),
        _ => false,
    }
}

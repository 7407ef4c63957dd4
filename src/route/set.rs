//! A set of routes in compact form: their patterns and labels written once into one text, an
//! [`Entry`] of offsets and numbers per route, and indexes of patterns (exact names, wildcard
//! suffixes) and labels. Routes of one pattern are chained from the index's entry; their order
//! doesn't matter, as routes of one pattern never share a protocol.

use once_cell::race::OnceBox;

use super::index::Index;
use super::NONE;
use crate::metrics::RouteHandles;

/// Routes with their text and indexes; numbers are local to the set.
#[derive(Debug)]
pub(super) struct Set {
    /// Each route's pattern (`a.example.com`, `*.example.com`; empty for `[default]`), followed
    /// by its label where that is not the pattern itself.
    text: String,
    entries: Vec<Entry>,
    /// Exact names, to the first route of the name.
    exact: Index,
    /// Wildcards' suffixes with their leading dot (`.tenants.example.com`), likewise.
    wildcards: Index,
    /// Labels, to their route.
    labels: Index,
}

/// One route, as offsets into its set's text and numbers of its other parts, and its series
/// (registered on first use) beside them: a lookup touches one line of memory for both.
#[derive(Debug)]
pub(super) struct Entry {
    /// Where its pattern starts in the set's text.
    text: u32,
    /// Bytes of its own label after the pattern; 0: the pattern is its label.
    label: u32,
    /// Bytes of its pattern; 0: `[default]`, in no pattern index.
    pattern: u16,
    wildcard: bool,
    /// Its target, by index in the table's targets.
    pub target: u32,
    /// Its `alpn` list, by index in the table's lists; [`NONE`]: none.
    pub alpn: u32,
    /// The next route of the same pattern; [`NONE`]: the last.
    next: u32,
    pub series: OnceBox<RouteHandles>,
}

/// What a route is, to enter it in a set.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record<'a> {
    /// `a.example.com`, `*.example.com`; empty for `[default]`.
    pub pattern: &'a str,
    pub label: &'a str,
    pub target: u32,
    pub alpn: u32,
}

impl Set {
    /// An empty set with room for `exact` exact names, `wildcards` wildcards, `all` routes and
    /// `text` bytes of text.
    pub fn with_capacity(exact: usize, wildcards: usize, all: usize, text: usize) -> Self {
        // Every route has a label, so the labels' room bounds the set's routes.
        let routes = Index::room(all);
        Self {
            text: String::with_capacity(text),
            entries: Vec::with_capacity(all),
            exact: Index::with_capacity(exact, routes),
            wildcards: Index::with_capacity(wildcards, routes),
            labels: Index::with_capacity(all, routes),
        }
    }

    /// Routes in the set.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn entry(&self, number: u32) -> &Entry {
        &self.entries[number as usize]
    }

    /// Route `number` as it was entered (its target and `alpn` numbers as they were).
    pub fn record(&self, number: u32) -> Record<'_> {
        let entry = self.entry(number);
        let start = entry.text as usize;
        Record {
            pattern: &self.text[start..start + usize::from(entry.pattern)],
            label: self.name(number),
            target: entry.target,
            alpn: entry.alpn,
        }
    }

    /// Its label: its own, or its pattern.
    pub fn name(&self, number: u32) -> &str {
        name(&self.text, self.entry(number))
    }

    /// The first route of the pattern whose key (an exact name, or a wildcard's suffix with its
    /// dot) is `key`.
    pub fn first(&self, wildcard: bool, key: &[u8]) -> Option<u32> {
        let index = match wildcard {
            true => &self.wildcards,
            false => &self.exact,
        };
        index.get(key, |number| self.key(number))
    }

    /// The routes of a pattern, from its `first`.
    pub fn chain(&self, first: Option<u32>) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(first, |&number| {
            Some(self.entry(number).next).filter(|&next| next != NONE)
        })
    }

    /// The route labelled `label`.
    pub fn labelled(&self, label: &str) -> Option<u32> {
        self.labels
            .get(label.as_bytes(), |number| self.name(number).as_bytes())
    }

    /// Whether there are wildcard routes.
    pub fn has_wildcards(&self) -> bool {
        !self.wildcards.is_empty()
    }

    /// Whether one more route of this kind fits its indexes.
    pub fn has_room(&self, wildcard: bool) -> bool {
        let index = match wildcard {
            true => &self.wildcards,
            false => &self.exact,
        };
        index.has_room(1) && self.labels.has_room(1)
    }

    /// Enters a route after the others (only where [`Set::has_room`] says so, and its label is
    /// free); returns its number.
    pub fn push(&mut self, route: Record<'_>) -> u32 {
        let start = self.text.len();
        self.text.push_str(route.pattern);
        let label = match route.label == route.pattern {
            true => 0,
            false => {
                self.text.push_str(route.label);
                route.label.len()
            }
        };
        let number = self.entries.len() as u32;
        self.entries.push(Entry {
            // Offsets fit: the config refuses routes whose names and patterns pass 4 GiB, and
            // a pattern is at most 257 bytes (a wildcard's `*.` and 255).
            text: start as u32,
            label: label as u32,
            pattern: route.pattern.len() as u16,
            wildcard: route.pattern.starts_with("*."),
            target: route.target,
            alpn: route.alpn,
            next: NONE,
            series: OnceBox::new(),
        });
        let (text, entries) = (&self.text, &mut self.entries);
        let entry = &entries[number as usize];
        self.labels
            .insert(name(text, entry).as_bytes(), number, |other| {
                name(text, &entries[other as usize]).as_bytes()
            });
        if entry.pattern > 0 {
            let index = match entry.wildcard {
                true => &mut self.wildcards,
                false => &mut self.exact,
            };
            let key_of = |other: u32| key(text, &entries[other as usize]);
            if let Some(first) = index.insert(key(text, entry), number, key_of) {
                // Second in its chain: the order of a pattern's routes doesn't matter.
                entries[number as usize].next = entries[first as usize].next;
                entries[first as usize].next = number;
            }
        }
        number
    }

    /// Bytes held: text, entries, indexes.
    pub fn bytes(&self) -> [usize; 3] {
        [
            self.text.capacity(),
            self.entries.capacity() * size_of::<Entry>(),
            self.exact.bytes() + self.wildcards.bytes() + self.labels.bytes(),
        ]
    }

    fn key(&self, number: u32) -> &[u8] {
        key(&self.text, self.entry(number))
    }
}

/// The name a route is indexed under: an exact name, or a wildcard's suffix with its dot.
fn key<'t>(text: &'t str, entry: &Entry) -> &'t [u8] {
    let start = entry.text as usize + usize::from(entry.wildcard);
    &text.as_bytes()[start..entry.text as usize + usize::from(entry.pattern)]
}

/// A route's label: its own, or its pattern.
fn name<'t>(text: &'t str, entry: &Entry) -> &'t str {
    let (start, pattern) = (entry.text as usize, usize::from(entry.pattern));
    match entry.label {
        0 => &text[start..start + pattern],
        label => &text[start + pattern..start + pattern + label as usize],
    }
}

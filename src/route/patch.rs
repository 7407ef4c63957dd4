//! A table made from another by taking out some tenant files' routes and adding routes read
//! again: a reload that changed one tenant file among a million routes copies the table's flat
//! arrays and touches only that file's routes, rather than building a million entries anew.
//!
//! Routes taken out stay in place, dead, and their text with them: once they are more than
//! [`MIN_DEAD`] and a fifth of the table (or an index is three-quarters full),
//! [`RouteTable::patched`] declines and the caller builds anew, which compacts.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use once_cell::race::OnceBox;

use super::{key, name, Adding, Entry, RouteTable, NONE};
use crate::config::Route;

/// Dead routes a table may always hold: building anew a table this small is quick anyway.
const MIN_DEAD: usize = 1024;

/// A patched table, and how many route labels came and went, for the reload's log line.
#[derive(Debug)]
pub struct Patched {
    /// The table.
    pub table: RouteTable,
    /// Labels it has that the table before had not.
    pub added: usize,
    /// Labels the table before had that it has not.
    pub removed: usize,
}

impl RouteTable {
    /// This table without the routes of the tenant files `removed` and with `routes` (tenant
    /// files' routes) after the others. `None` where one of `routes` would tie with a route
    /// kept or take its label (the caller loads the whole config, which names the fault), or
    /// where building anew is due. Pools of targets kept are kept; a new target's pool keeps
    /// the state of this table's pool of its label.
    pub fn patched(&self, removed: &[Arc<Path>], routes: &[Route]) -> Option<Patched> {
        let mut table = Self {
            text: self.text.clone(),
            routes: self.routes.iter().map(Entry::unregistered).collect(),
            targets: self.targets.clone(),
            alpn: self.alpn.clone(),
            exact: self.exact.clone(),
            wildcards: self.wildcards.clone(),
            labels: self.labels.clone(),
            files: self.files.clone(),
            default: self.default,
            dead: self.dead,
            serves_http: self.serves_http,
            unmatched: OnceBox::new(),
        };
        let mut gone: HashSet<&str> = HashSet::new();
        for file in removed {
            for run in table.files.remove(file).unwrap_or_default() {
                for number in run {
                    gone.insert(name(&self.text, &self.routes[number as usize]));
                    table.take_out(number);
                }
            }
        }
        let mut adding = Adding::new(&table, Some(self));
        let first = table.routes.len();
        for route in routes {
            if !table.add(route, &mut adding) {
                return None;
            }
        }
        if table.dead > MIN_DEAD && table.dead * 5 > table.routes.len() {
            return None;
        }
        let came: HashSet<&str> = table.routes[first..]
            .iter()
            .map(|entry| name(&table.text, entry))
            .collect();
        let added = came.iter().filter(|label| !gone.contains(*label)).count();
        let removed = gone.iter().filter(|label| !came.contains(*label)).count();
        Some(Patched {
            added,
            removed,
            table,
        })
    }

    /// Takes route `number` out of its pattern's chain and the indexes, and counts it off its
    /// target; its entry stays, dead.
    fn take_out(&mut self, number: u32) {
        let (text, routes) = (&self.text, &mut self.routes);
        let entry = &routes[number as usize];
        let (next, target) = (entry.next, entry.target);
        let (pattern, label) = (key(text, entry), name(text, entry).as_bytes());
        let index = match entry.wildcard {
            true => &mut self.wildcards,
            false => &mut self.exact,
        };
        let key_of = |index: u32| key(text, &routes[index as usize]);
        let before = match index.get(pattern, key_of) {
            Some(first) if first == number => {
                match next {
                    NONE => index.remove(pattern, key_of),
                    next => index.replace(pattern, next, key_of),
                }
                None
            }
            first => std::iter::successors(first, |&at| {
                Some(routes[at as usize].next).filter(|&at| at != NONE)
            })
            .find(|&at| routes[at as usize].next == number),
        };
        self.labels.remove(label, |index| {
            name(text, &routes[index as usize]).as_bytes()
        });
        if let Some(before) = before {
            routes[before as usize].next = next;
        }
        let entry = &mut routes[number as usize];
        entry.dead = true;
        entry.next = NONE;
        self.targets[target as usize].routes -= 1;
        self.dead += 1;
    }
}

impl Entry {
    /// A copy for another table, its series not registered there yet.
    fn unregistered(&self) -> Self {
        Self {
            series: OnceBox::new(),
            ..*self
        }
    }
}

//! A table made from another by taking out some tenant files' routes and adding routes read
//! again: a reload that changed one tenant file among a million routes touches that file's
//! routes only.
//!
//! A table is a base set of routes, shared (`Arc`) by every table patched from it, a bit per
//! base route that a patch took out, and a small set of the routes patches added, made anew by
//! each patch. A patch copies the bits (16 KB per 128,000 routes) and the added set, never the
//! base. Once the routes taken out are more than [`MIN_CHANGED`] and a fifth of the base, the
//! added ones more than a quarter, or the targets no route has any more more than a quarter of
//! them, [`RouteTable::patched`] declines and the caller builds anew.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use once_cell::race::OnceBox;

use super::set::Set;
use super::{Adding, RouteTable};
use crate::config::{self, Route};

/// Routes taken out or added that a table always allows: building anew one this small is quick
/// anyway.
const MIN_CHANGED: usize = 1024;

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
    /// files' routes). `None` where one of `routes` would tie with a route kept or take its
    /// label (the caller loads the whole config, which names the fault), or where building
    /// anew is due. Pools of targets kept are kept; a new target's pool keeps the state of this
    /// table's pool of its label.
    pub fn patched(&self, removed: &[Arc<Path>], routes: &[Route]) -> Option<Patched> {
        let mut files = self.files.clone();
        let (mut dead, mut dead_count) = (self.dead.clone(), self.dead_count);
        let mut targets = self.targets.clone();
        let mut gone_added = vec![false; self.added.len()];
        let mut gone: HashSet<&str> = HashSet::new();
        for file in removed {
            let Some(runs) = files.remove(file) else {
                continue;
            };
            for number in runs.base.into_iter().flatten() {
                dead[number as usize / 64] |= 1 << (number % 64);
                dead_count += 1;
                targets[self.base.entry(number).target as usize].routes -= 1;
                gone.insert(self.base.name(number));
            }
            for number in runs.added.into_iter().flatten() {
                gone_added[number as usize] = true;
                targets[self.added.entry(number).target as usize].routes -= 1;
                gone.insert(self.added.name(number));
            }
        }
        let all = gone_added.iter().filter(|gone| !**gone).count() + routes.len();
        let base = self.base.len();
        if (dead_count > MIN_CHANGED && dead_count * 5 > base) || all > MIN_CHANGED.max(base / 4) {
            return None;
        }
        let text = routes
            .iter()
            .map(|route| 2 * route.name.len() + 2)
            .sum::<usize>();
        let mut table = Self {
            base: self.base.clone(),
            added: Set::with_capacity(all, all, all, text),
            dead,
            dead_count,
            targets,
            alpn: self.alpn.clone(),
            files: HashMap::new(),
            default: self.default,
            serves_http: self.serves_http,
            unmatched: OnceBox::new(),
        };
        // The added routes kept, entered again, their files' runs numbered anew.
        for (file, mut runs) in files {
            let mut added = Vec::new();
            for number in runs.added.into_iter().flatten() {
                let number = table.added.push(self.added.record(number));
                super::runs(&mut added, number);
            }
            runs.added = added;
            table.files.insert(file, runs);
        }
        let mut adding = Adding::new(&table, Some(self));
        let mut pattern = String::new();
        let first = table.added.len();
        for route in routes {
            let record = adding.record(route, &mut pattern, &mut table);
            let wildcard = record.pattern.starts_with("*.");
            let key = &record.pattern.as_bytes()[usize::from(wildcard)..];
            let ties = (table.pattern(table.heads(wildcard, key)))
                .any(|other| config::tie(&route.alpn, table.alpn_of(other)).is_some());
            if ties || table.labelled(record.label).is_some() || !table.added.has_room(wildcard) {
                return None;
            }
            let number = table.added.push(record);
            if let Some(file) = &route.file {
                let runs = &mut table.files.entry(file.clone()).or_default().added;
                super::runs(runs, number);
            }
        }
        // Targets no route has any more (kept, so that numbers stay put): only so many.
        let unused = table
            .targets
            .iter()
            .filter(|shared| shared.routes == 0)
            .count();
        if unused > MIN_CHANGED && unused * 4 > table.targets.len() {
            return None;
        }
        let came: HashSet<&str> = (first..table.added.len())
            .map(|number| table.added.name(number as u32))
            .collect();
        let added = came.iter().filter(|label| !gone.contains(*label)).count();
        let removed = gone.iter().filter(|label| !came.contains(*label)).count();
        Some(Patched {
            added,
            removed,
            table,
        })
    }
}

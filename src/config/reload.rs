//! Reloads that read again only the tenant files that changed: with a million routes in a
//! thousand files, one file edited is one file parsed, and the route table is patched rather
//! than built anew (`RouteTable::patched`).
//!
//! A load remembers ([`Loaded`]) routes.toml's text, each tenant file's stamp (size, inode,
//! modification and change times) and the targets it read. [`Loaded::changed_tenants`] lists the
//! files again and reads those whose stamp moved, as well as those changed so soon before the
//! last read that their stamp can't be trusted (a write within one tick of the file system's
//! clock leaves the stamp alone: git's "racy clean" rule). It declines, and the reload reads
//! everything as at start-up, whenever the quick way could differ from a full load: routes.toml
//! changed; a file fails to read or parse; a route reads other files (a terminate route's PEMs,
//! a TLS health check's CA: they may have been rotated); or more than a quarter of the files
//! (and more than 16) changed.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use toml::Spanned;

use super::error::{line_starts, Source};
use super::include::{self, Stamps};
use super::pool::Check;
use super::route::{Reading, Route, Targets};

/// How far before a read a change makes a file's stamp untrustworthy: more than any file
/// system's timestamp tick (FAT's is 2 s).
const RACY: Duration = Duration::from_secs(3);

/// What a load read, for a reload to tell what changed. The default (nothing): the next reload
/// reads everything.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// routes.toml's text; `None`: every reload is a full one.
    main: Option<String>,
    include: Option<Spanned<Vec<Spanned<String>>>>,
    /// Each tenant file's stamp, in file order.
    files: Stamps,
    /// When the files were stamped.
    read_at: Option<SystemTime>,
    targets: Targets,
    quic: Option<usize>,
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    len: u64,
    device: u64,
    inode: u64,
    /// Modification and change times, seconds and nanoseconds.
    modified: (i64, i64),
    changed: (i64, i64),
}

/// The tenant files that changed since a load: the routes of `removed` go (files changed or
/// gone), `routes` come (files changed or new), and `loaded` is what the next reload compares.
#[derive(Debug)]
pub struct TenantChanges {
    /// Tenant files whose routes go.
    pub removed: Vec<Arc<Path>>,
    /// The routes of the tenant files read again, in file order.
    pub routes: Vec<Route>,
    /// For the next reload.
    pub loaded: Loaded,
}

impl Loaded {
    /// What a load of routes.toml (`main`, with its `include` patterns) and the tenant files
    /// stamped at `read_at` read: nothing to compare if a route reads other files.
    pub(super) fn new(
        main: &str,
        include: Option<Spanned<Vec<Spanned<String>>>>,
        files: Stamps,
        read_at: SystemTime,
        reading: Reading,
        routes: &[Route],
        default: Option<&Route>,
    ) -> Self {
        if !self_contained(routes.iter().chain(default)) {
            return Self::default();
        }
        Self {
            main: Some(main.to_owned()),
            include,
            files,
            read_at: Some(read_at),
            targets: reading.targets,
            quic: reading.quic,
        }
    }

    /// The tenant files that changed since this load, read (routes.toml at `path` unchanged);
    /// `None`: reload everything (see the module's doc for when).
    pub fn changed_tenants(&self, path: &Path) -> Option<TenantChanges> {
        let (main, last_read) = (self.main.as_ref()?, self.read_at?);
        let text = std::fs::read_to_string(path).ok()?;
        if text != *main {
            return None;
        }
        let read_at = SystemTime::now();
        let files = match &self.include {
            None => Vec::new(),
            Some(patterns) => {
                let line_starts = line_starts(&text);
                let source = Source {
                    file: path,
                    text: &text,
                    line_starts: &line_starts,
                };
                include::resolve(source, patterns).ok()?.files
            }
        };
        let before: HashMap<&Path, Stamp> = (self.files.iter())
            .map(|(file, stamp)| (&**file, *stamp))
            .collect();
        let mut kept: HashMap<&Path, Stamp> = HashMap::new();
        let mut changed: Vec<PathBuf> = Vec::new();
        for file in &files {
            let stamp = Stamp::of(&std::fs::metadata(file).ok()?);
            match before.get(file.as_path()) {
                Some(&old) if old == stamp && !old.racy(last_read) => {
                    kept.insert(file, old);
                }
                _ => changed.push(file.clone()),
            }
        }
        if changed.len() > 16 && changed.len() * 4 > files.len() {
            return None;
        }
        let reading = Reading {
            targets: self.targets.clone(),
            quic: self.quic,
        };
        let read = include::read_run(&changed, reading).ok()?;
        if !self_contained(&read.routes) {
            return None;
        }
        let removed = (self.files.iter())
            .filter(|(file, _)| !kept.contains_key(&**file))
            .map(|(file, _)| file.clone())
            .collect();
        let stamped: HashMap<&Path, &(Arc<Path>, Stamp)> = (read.stamps.iter())
            .map(|stamped| (&*stamped.0, stamped))
            .collect();
        let files = files
            .iter()
            .filter_map(|file| match kept.get(file.as_path()) {
                Some(&stamp) => Some((Arc::from(file.as_path()), stamp)),
                None => stamped.get(file.as_path()).map(|&stamped| stamped.clone()),
            })
            .collect();
        Some(TenantChanges {
            removed,
            routes: read.routes,
            loaded: Self {
                main: Some(text),
                include: self.include.clone(),
                files,
                read_at: Some(read_at),
                targets: read.reading.targets,
                quic: self.quic,
            },
        })
    }
}

/// Whether no route reads a file beside the config (a terminate route's PEMs, a TLS check's
/// settings), which a reload must read again even where the config didn't change.
fn self_contained<'r>(routes: impl IntoIterator<Item = &'r Route>) -> bool {
    let mut seen = HashSet::new();
    routes
        .into_iter()
        .filter(|route| seen.insert(Arc::as_ptr(&route.target)))
        .all(|route| {
            let target = &route.target;
            let checks_tls = |pool: &super::Pool| {
                (pool.health.as_ref())
                    .is_some_and(|health| matches!(health.check, Check::Tls { .. }))
            };
            target.terminate.is_none()
                && !checks_tls(&target.pool)
                && !checks_tls(&target.http.pool)
        })
}

impl Stamp {
    pub(super) fn of(meta: &Metadata) -> Self {
        Self {
            len: meta.len(),
            device: meta.dev(),
            inode: meta.ino(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file changed so close to `read_at` (or after it: a clock set back) that a
    /// later change could have left this stamp as it is.
    fn racy(&self, read_at: SystemTime) -> bool {
        let Ok(since_epoch) = read_at.duration_since(SystemTime::UNIX_EPOCH) else {
            return true;
        };
        let trusted_before = since_epoch.saturating_sub(RACY).as_secs() as i64;
        self.modified.0 >= trusted_before || self.changed.0 >= trusted_before
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::super::load;

    /// Only the tenant files whose stamp moved are read again; routes.toml changed, or a file
    /// that doesn't parse, means a full reload.
    #[test]
    fn only_changed_tenant_files_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let tenants = dir.path().join("routes.d");
        std::fs::create_dir(&tenants).unwrap();
        let route = |sni: &str| format!("[[route]]\nsni = \"{sni}\"\nbackend = \"127.0.0.1:9\"\n");
        for name in ["a", "b", "c"] {
            std::fs::write(
                tenants.join(format!("{name}.toml")),
                route(&format!("{name}.test")),
            )
            .unwrap();
        }
        let main = dir.path().join("routes.toml");
        let text = "include = [\"routes.d/*.toml\"]\n[[listen]]\naddress = \"127.0.0.1:1\"\n";
        std::fs::write(&main, text).unwrap();
        let mut loaded = load(&main).unwrap().loaded;
        // As if read long after these files were written: their stamps can be trusted.
        loaded.read_at = Some(SystemTime::now() + Duration::from_secs(3600));

        let unchanged = loaded.changed_tenants(&main).unwrap();
        assert!(unchanged.removed.is_empty() && unchanged.routes.is_empty());

        std::fs::write(tenants.join("b.toml"), route("b2.test")).unwrap();
        std::fs::remove_file(tenants.join("c.toml")).unwrap();
        std::fs::write(tenants.join("d.toml"), route("d.test")).unwrap();
        let changes = loaded.changed_tenants(&main).unwrap();
        let mut removed: Vec<_> = changes
            .removed
            .iter()
            .map(|file| file.to_path_buf())
            .collect();
        removed.sort();
        assert_eq!(removed, [tenants.join("b.toml"), tenants.join("c.toml")]);
        let names: Vec<&str> = changes
            .routes
            .iter()
            .map(|route| route.name.as_str())
            .collect();
        assert_eq!(names, ["b2.test", "d.test"]);
        let files: Vec<_> = changes
            .loaded
            .files
            .iter()
            .map(|(file, _)| file.to_path_buf())
            .collect();
        assert_eq!(
            files,
            ["a", "b", "d"].map(|name| tenants.join(format!("{name}.toml")))
        );

        std::fs::write(tenants.join("b.toml"), "[[route]]\nsni = 1\n").unwrap();
        assert!(loaded.changed_tenants(&main).is_none());
        std::fs::write(tenants.join("b.toml"), route("b.test")).unwrap();
        std::fs::write(&main, format!("{text}\n")).unwrap();
        assert!(loaded.changed_tenants(&main).is_none());
    }
}

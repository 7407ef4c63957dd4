//! Watching the config file for changes (SPEC "Reload"): rewritten in place, replaced by a
//! rename (as editors and config managers do), or reached through symlinks that are swapped, as
//! a Kubernetes ConfigMap volume does (`routes.toml -> ..data/routes.toml`,
//! `..data -> ..2026_01_01`, updated by renaming a new `..data` into place).
//!
//! Directories are watched, not files, so a replacement is seen; every directory along the
//! path's symlink chain is watched, and an event counts when it names the file or any symlink
//! on the way to it. After each reload the chain is resolved again, since a swap moves it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use notify::Watcher;
use tokio::sync::mpsc;

/// Symlinks followed at most when resolving the chain (the kernel's own limit is 40).
const MAX_HOPS: usize = 40;

/// A watch on one config file and the symlinks that lead to it.
pub struct ConfigWatch {
    path: PathBuf,
    watcher: notify::RecommendedWatcher,
    /// Each directory watched, and its inode when the watch began.
    watched: Vec<(PathBuf, Option<u64>)>,
    /// File names that matter in the watched directories: the file's and each symlink's.
    names: Arc<RwLock<HashSet<OsString>>>,
    /// Directories of tenant files (`include`), resolved, where any change matters.
    includes: Arc<RwLock<HashSet<PathBuf>>>,
    /// The same directories as the config names them (their symlinks are watched too).
    include_paths: Vec<PathBuf>,
}

impl std::fmt::Debug for ConfigWatch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ConfigWatch")
            .field("path", &self.path)
            .field("watched", &self.watched)
            .finish_non_exhaustive()
    }
}

impl ConfigWatch {
    /// Sends `()` on `events` whenever the file at `path`, or a symlink on the way to it,
    /// changes. `None` (with a WARN line) where the platform can't watch; SIGHUP still reloads.
    pub fn start(path: &Path, events: mpsc::Sender<()>) -> Option<Self> {
        let names = Arc::new(RwLock::new(HashSet::new()));
        let matching = names.clone();
        let includes: Arc<RwLock<HashSet<PathBuf>>> = Arc::default();
        let tenant_dirs = includes.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let (Ok(names), Ok(tenant_dirs)) = (matching.read(), tenant_dirs.read()) else {
                return;
            };
            if event.paths.iter().any(|changed| {
                changed.file_name().is_some_and(|name| names.contains(name))
                    || changed
                        .parent()
                        .is_some_and(|dir| tenant_dirs.contains(dir))
            }) {
                // A full channel already holds a pending reload.
                let _ = events.try_send(());
            }
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the config file; reload with SIGHUP");
                return None;
            }
        };
        let mut watch = Self {
            path: path.to_owned(),
            watcher,
            watched: Vec::new(),
            names,
            includes,
            include_paths: Vec::new(),
        };
        watch.refresh();
        Some(watch)
    }

    /// Watches these directories of tenant files too (the config's `include_dirs`), instead of
    /// the ones before; any file changing in them counts, and so does a symlink on the way to
    /// one being swapped.
    pub fn set_includes(&mut self, directories: &[PathBuf]) {
        self.include_paths = directories.to_vec();
        self.refresh();
    }

    /// Resolves the symlink chains again (the config file's and the tenant directories') and
    /// watches what they now go through.
    pub fn refresh(&mut self) {
        let (mut directories, mut names) = chain(&self.path);
        let mut resolved = HashSet::new();
        for include in &self.include_paths {
            let (more, more_names) = chain(include);
            names.extend(more_names);
            let real = std::fs::canonicalize(include).unwrap_or_else(|_| include.clone());
            for directory in more.into_iter().chain([real.clone()]) {
                if !directories.contains(&directory) {
                    directories.push(directory);
                }
            }
            resolved.insert(real);
        }
        if let Ok(mut includes) = self.includes.write() {
            *includes = resolved;
        }
        if let Ok(mut current) = self.names.write() {
            *current = names;
        }
        // Only what changed is unwatched and watched again: a directory watched throughout
        // never has a moment without its watch, when a change could go unseen. One replaced
        // under the same path (another inode) is watched anew.
        let wanted: Vec<(PathBuf, Option<u64>)> = directories
            .into_iter()
            .map(|directory| {
                let inode = inode(&directory);
                (directory, inode)
            })
            .collect();
        for watched in std::mem::take(&mut self.watched) {
            if wanted.contains(&watched) {
                self.watched.push(watched);
            } else {
                let _ = self.watcher.unwatch(&watched.0);
            }
        }
        for (directory, inode) in wanted {
            if self.watched.iter().any(|(known, _)| *known == directory) {
                continue;
            }
            match self
                .watcher
                .watch(&directory, notify::RecursiveMode::NonRecursive)
            {
                Ok(()) => self.watched.push((directory, inode)),
                Err(error) => {
                    tracing::warn!(%error, directory = %directory.display(), "cannot watch a directory of the config file; reload with SIGHUP");
                }
            }
        }
    }
}

/// A directory's inode, to tell a directory replaced under the same path.
#[cfg(unix)]
fn inode(directory: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(directory)
        .ok()
        .map(|metadata| metadata.ino())
}

#[cfg(not(unix))]
fn inode(_directory: &Path) -> Option<u64> {
    None
}

/// The directories to watch for `path`, and the names that matter in them: the path's own, and
/// every symlink met resolving it (the file itself or a directory on the way), hop by hop.
fn chain(path: &Path) -> (Vec<PathBuf>, HashSet<OsString>) {
    let mut directories: Vec<PathBuf> = Vec::new();
    let mut names = HashSet::new();
    let mut note = |path: &Path| {
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        if !directories.contains(&directory) {
            directories.push(directory);
        }
        if let Some(name) = path.file_name() {
            names.insert(name.to_owned());
        }
    };
    let mut current = path.to_owned();
    for _ in 0..MAX_HOPS {
        note(&current);
        // A symlinked directory on the way (`..data` in `..data/routes.toml`).
        for ancestor in current.ancestors().skip(1) {
            if ancestor
                .symlink_metadata()
                .is_ok_and(|metadata| metadata.file_type().is_symlink())
            {
                note(ancestor);
            }
        }
        let Ok(target) = std::fs::read_link(&current) else {
            break;
        };
        current = match current.parent() {
            Some(parent) if target.is_relative() => parent.join(target),
            _ => target,
        };
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        note(&real);
    }
    (directories, names)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn a_configmap_layout_is_watched_through_its_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("..2026_01_01")).unwrap();
        std::fs::write(root.join("..2026_01_01/routes.toml"), "").unwrap();
        symlink("..2026_01_01", root.join("..data")).unwrap();
        symlink("..data/routes.toml", root.join("routes.toml")).unwrap();
        let (directories, names) = chain(&root.join("routes.toml"));
        for name in ["routes.toml", "..data"] {
            assert!(names.contains(&OsString::from(name)), "{name}: {names:?}");
        }
        assert!(directories.contains(&root.to_owned()));
        let real = std::fs::canonicalize(root.join("..2026_01_01")).unwrap();
        assert!(directories.contains(&real), "{directories:?}");
    }
}

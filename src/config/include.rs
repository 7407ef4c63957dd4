//! `include = ["routes.d/*.toml"]`: tenant files, each holding `[[route]]` tables only, found
//! by a pattern whose file name may hold `*` (any run of characters) and `?` (any one). Paths
//! are taken from routes.toml's directory; files are read in name order; hidden files (a
//! leading dot: editors' swap files, a Kubernetes ConfigMap's `..data`) are left out.
//!
//! Tenant files are read on every core at once, each file's text and raw tables dropped as soon
//! as its routes are made, so loading a million routes never holds a million raw tables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::error::{self, quoted, ConfigError, Source};
use super::raw::RawTenant;
use super::reload::Stamp;
use super::route::{self, Reading, Route, Target, Targets};

/// Tenant files at most, across every pattern.
pub const MAX_TENANT_FILES: usize = 100_000;

/// What `include` names: the files, in order without repeats, and the directories they are
/// read from (watched for files added, changed or removed).
#[derive(Debug, Default)]
pub(super) struct Included {
    pub files: Vec<PathBuf>,
    pub directories: Vec<PathBuf>,
}

pub(super) fn resolve(
    source: Source<'_>,
    patterns: &Spanned<Vec<Spanned<String>>>,
) -> Result<Included, ConfigError> {
    let mut included = Included::default();
    let mut seen = std::collections::HashSet::new();
    for (index, pattern) in patterns.get_ref().iter().enumerate() {
        let key = format!("include[{index}]");
        let path = source.relative_path(pattern);
        let (Some(directory), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(source.at(pattern, key, "expected a path like \"routes.d/*.toml\""));
        };
        let name = name.to_string_lossy();
        let directory = match directory.as_os_str().is_empty() {
            true => std::path::Path::new("."),
            false => directory,
        };
        if directory.to_string_lossy().contains(['*', '?']) {
            return Err(source.at(
                pattern,
                key,
                "only the file name may hold `*` or `?`, not a directory",
            ));
        }
        let entries = std::fs::read_dir(directory).map_err(|error| {
            source.at(
                pattern,
                key.clone(),
                format!(
                    "cannot read directory {}: {error}",
                    quoted(&directory.display().to_string())
                ),
            )
        })?;
        let mut matched: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| {
                let file = entry.file_name();
                let file = file.to_string_lossy();
                !file.starts_with('.')
                    && matches(name.as_bytes(), file.as_bytes())
                    && std::fs::metadata(entry.path()).is_ok_and(|meta| meta.is_file())
            })
            .map(|entry| entry.path())
            .collect();
        matched.sort();
        for file in matched {
            if seen.insert(file.clone()) {
                included.files.push(file);
            }
        }
        if included.files.len() > MAX_TENANT_FILES {
            return Err(source.at(
                pattern,
                key,
                format!("more than {MAX_TENANT_FILES} tenant files"),
            ));
        }
        if !included.directories.iter().any(|known| known == directory) {
            included.directories.push(directory.to_owned());
        }
    }
    Ok(included)
}

/// Reads `files`' routes onto `routes`, in file order, on up to one thread per core: each thread
/// a run of files in a row, with its own copy of `reading`; then targets read by several threads
/// are made one (the first in file order).
///
/// Returns the targets read (by key, the first of each) and each file's stamp, in file order.
///
/// # Errors
/// The first fault in file order.
pub(super) fn read(
    files: &[PathBuf],
    reading: Reading,
    routes: &mut Vec<Route>,
) -> Result<(Targets, Stamps), ConfigError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(files.len().div_ceil(16))
        .max(1);
    let runs: Vec<&[PathBuf]> = files.chunks(files.len().div_ceil(threads).max(1)).collect();
    let read = super::on_threads(runs.len(), |run| read_run(runs[run], reading.clone()));
    let mut shared = reading.targets;
    let mut stamps = Vec::with_capacity(files.len());
    for result in read {
        let Run {
            routes: mut run,
            reading,
            stamps: mut run_stamps,
        } = result?;
        stamps.append(&mut run_stamps);
        // Each thread's copy of a target to the first one read.
        let mut same: HashMap<*const Target, Arc<Target>> = HashMap::new();
        for (key, target) in reading.targets {
            let first = shared.entry(key).or_insert_with(|| target.clone());
            if !Arc::ptr_eq(first, &target) {
                same.insert(Arc::as_ptr(&target), first.clone());
            }
        }
        if !same.is_empty() {
            for route in &mut run {
                if let Some(first) = same.get(&Arc::as_ptr(&route.target)) {
                    route.target = first.clone();
                }
            }
        }
        routes.append(&mut run);
    }
    Ok((shared, stamps))
}

/// Tenant files' stamps, in file order.
pub(super) type Stamps = Vec<(Arc<Path>, Stamp)>;

/// What a run of tenant files gave: their routes, the targets read, and each file's stamp.
pub(super) struct Run {
    pub routes: Vec<Route>,
    pub reading: Reading,
    pub stamps: Stamps,
}

/// Reads a run of tenant files in turn, stopping at the first fault. Each file is stamped
/// before it is read, so a change while it is read shows at the next reload.
pub(super) fn read_run(files: &[PathBuf], mut reading: Reading) -> Result<Run, ConfigError> {
    let mut routes = Vec::new();
    let mut stamps = Vec::with_capacity(files.len());
    for path in files {
        let cannot_read =
            |error: std::io::Error| ConfigError::file(path, format!("cannot read: {error}"));
        let stamp = Stamp::of(&std::fs::metadata(path).map_err(cannot_read)?);
        let text = std::fs::read_to_string(path).map_err(cannot_read)?;
        let line_starts = error::line_starts(&text);
        let path = Arc::<Path>::from(path.as_path());
        stamps.push((path.clone(), stamp));
        let source = Source {
            file: &path,
            text: &text,
            line_starts: &line_starts,
        };
        let tenant: RawTenant = toml::from_str(&text).map_err(|error| source.toml_error(&error))?;
        routes.reserve(tenant.route.len());
        for (index, raw) in tenant.route.iter().enumerate() {
            routes.push(route::route_from_raw(
                source,
                index,
                raw,
                Some(&path),
                &mut reading,
            )?);
        }
    }
    Ok(Run {
        routes,
        reading,
        stamps,
    })
}

/// Whether `name` matches `pattern` (`*`: any run, `?`: any one byte).
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    // The classic greedy match with one backtrack point: linear in practice, no recursion.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&byte) if byte == b'?' || byte == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn file_name_patterns() {
        for (pattern, name, expected) in [
            ("*.toml", "a.toml", true),
            ("*.toml", "a.toml.bak", false),
            ("*", "anything", true),
            ("tenant-?.toml", "tenant-1.toml", true),
            ("tenant-?.toml", "tenant-12.toml", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("exact.toml", "exact.toml", true),
        ] {
            assert_eq!(
                matches(pattern.as_bytes(), name.as_bytes()),
                expected,
                "{pattern} {name}"
            );
        }
    }
}

//! `include = ["routes.d/*.toml"]`: tenant files, each holding `[[route]]` tables only, found
//! by a pattern whose file name may hold `*` (any run of characters) and `?` (any one). Paths
//! are taken from routes.toml's directory; files are read in name order; hidden files (a
//! leading dot: editors' swap files, a Kubernetes ConfigMap's `..data`) are left out.

use std::path::PathBuf;

use toml::Spanned;

use super::error::{quoted, ConfigError, Source};

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
            if !included.files.contains(&file) {
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

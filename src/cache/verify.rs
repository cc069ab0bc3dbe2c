//! Checking a cache folder before a worker serves it.
//!
//! Files the manifest lists are checked against their size and CRC32
//! (`full`) or size alone (`size`). Files it does not list (written by
//! ggml's server during a coordinator's upload, or by an older tool) are
//! re-hashed with FNV-1a and must hash to their own name; those that do are
//! added to the manifest, so the next start checks them at CRC speed.
//! Damaged files are moved into `bad/` inside the folder (the server only
//! looks at the top level), and the manifest forgets them.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use super::{is_cache_name, parallel_for, read_chunks, CacheError, Entry, Manifest};

/// Sub-folder damaged cache files are moved into.
pub const BAD_DIR: &str = "bad";

/// How thoroughly a worker checks its cache folder at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// Size and CRC32 of every listed file; unlisted files re-hashed.
    #[default]
    Full,
    /// Size of every listed file; unlisted files re-hashed.
    Size,
    /// No check.
    Off,
}

impl std::str::FromStr for VerifyMode {
    type Err = CacheError;
    fn from_str(s: &str) -> Result<Self, CacheError> {
        match s {
            "full" => Ok(VerifyMode::Full),
            "size" => Ok(VerifyMode::Size),
            "off" => Ok(VerifyMode::Off),
            other => Err(CacheError::Mode(other.to_string())),
        }
    }
}

impl std::fmt::Display for VerifyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerifyMode::Full => "full",
            VerifyMode::Size => "size",
            VerifyMode::Off => "off",
        })
    }
}

/// A cache file that failed the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFile {
    /// Its name.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Cache files found.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Unlisted files that were re-hashed (and found right).
    pub rehashed: usize,
    /// Damaged files, now in `bad/`.
    pub bad: Vec<BadFile>,
}

enum Verdict {
    Good(Option<Entry>),
    Bad(String),
}

/// Checks cache folder `dir` as `mode` says, on up to `threads` threads,
/// leaving out the files in `trusted` (just written by [`super::seed()`]).
/// Damaged files are moved into `dir/bad/`; the manifest is brought up to
/// date.
pub fn verify(
    dir: &Path,
    mode: VerifyMode,
    trusted: &HashSet<String>,
    threads: usize,
) -> Result<VerifyReport, CacheError> {
    let mut report = VerifyReport::default();
    if mode == VerifyMode::Off {
        return Ok(report);
    }
    let io = |source| CacheError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut manifest = Manifest::load(dir)?;
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let name = e.file_name().to_string_lossy().into_owned();
        // Followed through links: ggml's server reads what a link points at,
        // so that is what must be checked.
        // A dangling link is no cache entry to ggml either.
        let Ok(meta) = std::fs::metadata(e.path()) else {
            continue;
        };
        if meta.is_file() && is_cache_name(&name) {
            files.push((name, meta.len()));
        }
    }
    let listed: HashSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let gone: Vec<String> = manifest
        .names()
        .filter(|n| !listed.contains(n))
        .map(str::to_string)
        .collect();
    let mut changed = !gone.is_empty();
    for n in &gone {
        manifest.remove(n);
    }
    files.sort_by_key(|(_, len)| std::cmp::Reverse(*len));
    report.files = files.len();
    report.bytes = files.iter().map(|(_, len)| len).sum();

    let verdicts: Mutex<Vec<(usize, Result<Verdict, CacheError>)>> = Mutex::new(Vec::new());
    parallel_for(files.len(), threads, |i| {
        let (name, len) = &files[i];
        let v = if trusted.contains(name) {
            Ok(Verdict::Good(None))
        } else {
            check(dir, name, *len, manifest.get(name), mode)
        };
        if let Ok(mut out) = verdicts.lock() {
            out.push((i, v));
        }
    });
    let bad_dir = dir.join(BAD_DIR);
    for (i, v) in verdicts.into_inner().unwrap_or_default() {
        let name = &files[i].0;
        match v? {
            Verdict::Good(None) => {}
            Verdict::Good(Some(entry)) => {
                report.rehashed += 1;
                manifest.insert(name.clone(), entry);
                changed = true;
            }
            Verdict::Bad(reason) => {
                std::fs::create_dir_all(&bad_dir).map_err(|source| CacheError::Io {
                    path: bad_dir.clone(),
                    source,
                })?;
                let from = dir.join(name);
                std::fs::rename(&from, bad_dir.join(name))
                    .map_err(|source| CacheError::Io { path: from, source })?;
                manifest.remove(name);
                changed = true;
                report.bad.push(BadFile {
                    name: name.clone(),
                    reason,
                });
            }
        }
    }
    if changed {
        manifest.save(dir)?;
    }
    report.bad.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(report)
}

/// Checks one file of `len` bytes: `Good(Some(entry))` when it was unlisted,
/// re-hashed and found right.
fn check(
    dir: &Path,
    name: &str,
    len: u64,
    listed: Option<Entry>,
    mode: VerifyMode,
) -> Result<Verdict, CacheError> {
    let path = dir.join(name);
    if let Some(entry) = listed {
        if len != entry.size {
            return Ok(Verdict::Bad(format!(
                "{len} bytes, the manifest says {}",
                entry.size
            )));
        }
        if mode == VerifyMode::Size {
            return Ok(Verdict::Good(None));
        }
        let mut crc = crc32fast::Hasher::new();
        read_chunks(&path, |b| crc.update(b))?;
        let got = crc.finalize();
        if got != entry.crc32 {
            return Ok(Verdict::Bad(format!(
                "CRC32 {got:08x}, the manifest says {:08x}",
                entry.crc32
            )));
        }
        return Ok(Verdict::Good(None));
    }
    let mut fnv = shardline_protocol::Fnv1a64::new();
    let mut crc = crc32fast::Hasher::new();
    let size = read_chunks(&path, |b| {
        fnv.update(b);
        crc.update(b);
    })?;
    let hash = format!("{:016x}", fnv.finish());
    if hash != name {
        return Ok(Verdict::Bad(format!("its bytes hash to {hash}")));
    }
    Ok(Verdict::Good(Some(Entry {
        size,
        crc32: crc.finalize(),
    })))
}

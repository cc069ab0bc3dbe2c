//! The manifest of a worker's cache folder: each cache file's size and
//! CRC32, so the folder can be checked at memory speed before it is served.
//!
//! One line per file, tab separated: `name size crc32` (the CRC as 8 hex
//! digits), after a comment line naming the format. It lives beside the
//! cache files as `shardline-manifest.tsv`; ggml's server only ever opens
//! files named by 16 hex digits, so it never mistakes the manifest for a
//! tensor.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use super::CacheError;

/// File name of the manifest inside a cache folder.
pub const MANIFEST_FILE: &str = "shardline-manifest.tsv";

const HEADER: &str = "# shardline cache manifest v1: file\tsize\tcrc32";

/// What the manifest says about one cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its size in bytes.
    pub size: u64,
    /// CRC32 (IEEE) of its bytes.
    pub crc32: u32,
}

/// A cache folder's manifest: file name -> [`Entry`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<String, Entry>,
}

/// Whether `name` is what ggml's server calls a cache file: the FNV-1a 64
/// hash of its bytes as 16 lowercase hex digits.
pub fn is_cache_name(name: &str) -> bool {
    name.len() == 16
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The cache file name of data with FNV-1a hash `hash`.
pub fn cache_name(hash: u64) -> String {
    format!("{hash:016x}")
}

impl Manifest {
    /// The manifest of `dir`; empty when there is none. Lines that do not
    /// parse are skipped (their files then count as unlisted).
    pub fn load(dir: &Path) -> Result<Manifest, CacheError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let mut entries = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut f = line.split('\t');
            let (Some(name), Some(size), Some(crc), None) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let (Ok(size), Ok(crc32)) = (size.parse(), u32::from_str_radix(crc, 16)) else {
                continue;
            };
            if is_cache_name(name) {
                entries.insert(name.to_string(), Entry { size, crc32 });
            }
        }
        Ok(Manifest { entries })
    }

    /// Writes the manifest to `dir` (to a temporary file, then renamed, so a
    /// crash never leaves half a manifest).
    pub fn save(&self, dir: &Path) -> Result<(), CacheError> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join(format!(".{MANIFEST_FILE}.{}", std::process::id()));
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let mut out = Vec::with_capacity(40 * (self.entries.len() + 1));
        let _ = writeln!(out, "{HEADER}");
        for (name, e) in &self.entries {
            let _ = writeln!(out, "{name}\t{}\t{:08x}", e.size, e.crc32);
        }
        std::fs::write(&tmp, out).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The entry of file `name`.
    pub fn get(&self, name: &str) -> Option<Entry> {
        self.entries.get(name).copied()
    }

    /// Records file `name`.
    pub fn insert(&mut self, name: String, entry: Entry) {
        self.entries.insert(name, entry);
    }

    /// Forgets file `name`.
    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Names listed.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Number of files listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no file is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_cache_name("0123456789abcdef"));
        assert!(!is_cache_name("0123456789ABCDEF"));
        assert!(!is_cache_name("0123456789abcde"));
        assert!(!is_cache_name(MANIFEST_FILE));
        assert_eq!(cache_name(0xab), "00000000000000ab");
    }

    #[test]
    fn round_trip_and_bad_lines() {
        let dir = std::env::temp_dir().join(format!("shardline-manifest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Manifest::load(&dir).unwrap().is_empty());
        let mut m = Manifest::default();
        m.insert(
            "00000000000000ab".into(),
            Entry {
                size: 12,
                crc32: 0xdead_beef,
            },
        );
        m.save(&dir).unwrap();
        let mut text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        assert!(text.contains("00000000000000ab\t12\tdeadbeef"));
        text.push_str("garbage\nffffffffffffffff\tx\t1\n");
        std::fs::write(dir.join(MANIFEST_FILE), text).unwrap();
        let back = Manifest::load(&dir).unwrap();
        assert_eq!(back, m);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Filling a cache folder from a GGUF on the worker's own disk, so the
//! coordinator's upload finds every weight already there.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{cache_name, parallel_for, read_chunks, CacheError, Entry, Manifest};
use crate::gguf::Gguf;

/// What seeding did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Tensors in the model.
    pub tensors: usize,
    /// Cache files written.
    pub written: usize,
    /// Cache files that were already right and left alone.
    pub kept: usize,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes of all the model's tensors.
    pub bytes_total: u64,
    /// Names of every file the model needs (all present and right now).
    pub files: HashSet<String>,
}

/// Writes every tensor of `g` into cache folder `dir` as
/// `dir/<016x FNV-1a of its bytes>`, the layout ggml's rpc-server reads,
/// straight from the mapped file, on up to `threads` threads. A file already
/// there with the right bytes is kept; anything else is replaced. Each file
/// is written under a temporary name and renamed, so a server reading the
/// folder meanwhile never sees half a file. The manifest records each file's
/// size and CRC32. `progress` gets each tensor's bytes once it is done.
pub fn seed(
    dir: &Path,
    g: &Gguf,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SeedReport, CacheError> {
    std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut manifest = Manifest::load(dir)?;
    let tensors = g.tensors();
    let done: Mutex<Vec<(String, Entry, bool)>> = Mutex::new(Vec::with_capacity(tensors.len()));
    let first_error: Mutex<Option<CacheError>> = Mutex::new(None);
    let written_bytes = AtomicU64::new(0);
    // Largest first, so one big tensor does not finish alone at the end.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tensors[i].n_bytes()));
    parallel_for(order.len(), threads, |k| {
        let info = &tensors[order[k]];
        let data = g.tensor_data(info);
        let name = cache_name(shardline_protocol::fnv1a_64(data));
        let entry = Entry {
            size: data.len() as u64,
            crc32: crc32fast::hash(data),
        };
        match place(dir, &name, data, entry) {
            Ok(wrote) => {
                if wrote {
                    written_bytes.fetch_add(entry.size, Ordering::Relaxed);
                }
                if let Ok(mut d) = done.lock() {
                    d.push((name, entry, wrote));
                }
            }
            Err(e) => {
                if let Ok(mut slot) = first_error.lock() {
                    slot.get_or_insert(e);
                }
            }
        }
        progress(entry.size);
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let done = done.into_inner().unwrap_or_default();
    let mut report = SeedReport {
        tensors: tensors.len(),
        bytes_written: written_bytes.load(Ordering::Relaxed),
        bytes_total: tensors.iter().map(|t| t.n_bytes()).sum(),
        ..SeedReport::default()
    };
    for (name, entry, wrote) in done {
        // Identical tensors share a file: count it once.
        if report.files.insert(name.clone()) {
            if wrote {
                report.written += 1;
            } else {
                report.kept += 1;
            }
        }
        manifest.insert(name, entry);
    }
    manifest.save(dir)?;
    Ok(report)
}

/// Makes `dir/name` hold `data`; returns whether it had to be written.
fn place(dir: &Path, name: &str, data: &[u8], entry: Entry) -> Result<bool, CacheError> {
    let path = dir.join(name);
    if let Ok(meta) = std::fs::metadata(&path) {
        if meta.is_file() && meta.len() == entry.size {
            let mut crc = crc32fast::Hasher::new();
            let len = read_chunks(&path, |b| crc.update(b))?;
            if len == entry.size && crc.finalize() == entry.crc32 {
                return Ok(false);
            }
        }
    }
    let tmp = dir.join(format!(
        ".{name}.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let io = |source| CacheError::Io {
        path: path.clone(),
        source,
    };
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.flush()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(true)
}

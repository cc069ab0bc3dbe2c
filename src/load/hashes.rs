//! Each weight's FNV-1a hash: the name a server's cache knows it by.
//!
//! Hashing a large model takes seconds of CPU, so it is done once per model
//! file and remembered in a small JSON memo under the user's cache folder,
//! keyed by the file's path, size, modification time and a checksum of its
//! header. When there is no matching memo the hashes are computed on
//! background threads (all cores, never on the async runtime), in the order
//! the uploads need them, while the uploads already run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::gguf::Gguf;

/// Version of the memo's layout; a memo of another version is ignored.
const MEMO_VERSION: u32 = 1;

/// The folder shardline keeps per-user caches in: `$SHARDLINE_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/shardline`, else `~/.cache/shardline`.
pub fn user_cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = env("SHARDLINE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = env("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("shardline"));
    }
    env("HOME").map(|h| PathBuf::from(h).join(".cache").join("shardline"))
}

/// Where tensor-hash memos go by default: `hashes/` in [`user_cache_dir`].
pub fn default_memo_dir() -> Option<PathBuf> {
    user_cache_dir().map(|d| d.join("hashes"))
}

/// What identifies one version of a model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileKey {
    path: String,
    size: u64,
    mtime_ns: u128,
    header_crc32: u32,
}

impl FileKey {
    fn of(g: &Gguf, path: &Path) -> Option<FileKey> {
        let canonical = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&canonical).ok()?;
        let mtime_ns = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        let header_len = usize::try_from(g.data_offset()).ok()?;
        let header = g.bytes().get(..header_len)?;
        Some(FileKey {
            path: canonical.to_string_lossy().into_owned(),
            size: meta.len(),
            mtime_ns,
            header_crc32: crc32fast::hash(header),
        })
    }

    fn memo_file(&self, dir: &Path) -> PathBuf {
        let id = shardline_protocol::fnv1a_64(self.path.as_bytes());
        dir.join(format!("{id:016x}.json"))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Memo {
    version: u32,
    file: FileKey,
    /// Tensor name -> FNV-1a 64 of its bytes, as 16 hex digits.
    hashes: HashMap<String, String>,
}

struct Inner {
    index: HashMap<String, usize>,
    slots: Vec<OnceLock<u64>>,
    /// Bumped each time a slot is filled; waiters watch it.
    filled: tokio::sync::watch::Sender<usize>,
    hashed_bytes: AtomicU64,
    stop: AtomicBool,
    /// Set once hashing has ended and the memo is written (or not needed).
    finished: tokio::sync::watch::Sender<bool>,
}

impl Inner {
    fn fill(&self, i: usize, hash: u64) {
        if let Some(slot) = self.slots.get(i) {
            if slot.set(hash).is_ok() {
                self.filled.send_modify(|n| *n += 1);
            }
        }
    }
}

/// The FNV-1a hashes of a model's tensors, known at once (from the memo) or
/// filling in as background threads compute them.
pub struct TensorHashes {
    inner: Arc<Inner>,
    from_memo: bool,
}

impl std::fmt::Debug for TensorHashes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorHashes")
            .field("tensors", &self.inner.slots.len())
            .field("from_memo", &self.from_memo)
            .finish_non_exhaustive()
    }
}

impl Drop for TensorHashes {
    fn drop(&mut self) {
        // Nobody waits any more: let the hashing threads stop early.
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

impl TensorHashes {
    /// The hashes of every tensor of `g`, the file at `path`.
    ///
    /// With `memo_dir`, a memo there that matches the file is used as is;
    /// otherwise the hashes are computed on `threads` background threads,
    /// the tensors named in `first` before the others (give them in the
    /// order uploads need them), and written to `memo_dir` once complete.
    pub fn start(
        g: &Gguf,
        path: &Path,
        memo_dir: Option<&Path>,
        first: &[String],
        threads: usize,
    ) -> TensorHashes {
        let names: Vec<String> = g.tensors().iter().map(|t| t.name().to_string()).collect();
        let index: HashMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let (filled, _) = tokio::sync::watch::channel(0usize);
        let inner = Arc::new(Inner {
            slots: (0..names.len()).map(|_| OnceLock::new()).collect(),
            index,
            filled,
            hashed_bytes: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            finished: tokio::sync::watch::channel(false).0,
        });
        let key = FileKey::of(g, path);
        if let (Some(dir), Some(key)) = (memo_dir, &key) {
            if let Some(memo) = read_memo(&key.memo_file(dir), key) {
                let mut complete = true;
                for (i, name) in names.iter().enumerate() {
                    match memo
                        .hashes
                        .get(name)
                        .and_then(|h| u64::from_str_radix(h, 16).ok())
                    {
                        Some(h) => inner.fill(i, h),
                        None => complete = false,
                    }
                }
                if complete {
                    tracing::debug!(model = %path.display(), "tensor hashes from memo");
                    inner.finished.send_replace(true);
                    return TensorHashes {
                        inner,
                        from_memo: true,
                    };
                }
            }
        }

        // Hash in upload order first, then whatever the uploads do not need.
        let mut order: Vec<usize> = first
            .iter()
            .filter_map(|n| inner.index.get(n).copied())
            .collect();
        let mut seen = vec![false; names.len()];
        order.retain(|&i| !std::mem::replace(&mut seen[i], true));
        order.extend((0..names.len()).filter(|&i| !seen[i]));
        let order = Arc::new(order);
        let cursor = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(threads.max(1)));
        let memo_target = memo_dir.zip(key).map(|(d, k)| (d.to_path_buf(), k));
        let finish_one = {
            let (inner, running) = (inner.clone(), running.clone());
            move || {
                // The last thread out remembers the result.
                if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                    if let Some((dir, key)) = &memo_target {
                        write_memo(dir, key.clone(), &names, &inner);
                    }
                    inner.finished.send_replace(true);
                }
            }
        };
        for t in 0..threads.max(1) {
            let (model, slots, todo, next) =
                (g.clone(), inner.clone(), order.clone(), cursor.clone());
            let done = finish_one.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hash-{t}"))
                .spawn(move || {
                    hash_worker(&model, &slots, &todo, &next);
                    done();
                });
            if spawned.is_err() {
                // No thread: hash here rather than never.
                hash_worker(g, &inner, &order, &cursor);
                finish_one();
            }
        }
        TensorHashes {
            inner,
            from_memo: false,
        }
    }

    /// Whether every hash came from the memo (nothing was hashed).
    pub fn from_memo(&self) -> bool {
        self.from_memo
    }

    /// Bytes hashed so far by this instance (0 when the memo answered).
    pub fn hashed_bytes(&self) -> u64 {
        self.inner.hashed_bytes.load(Ordering::Relaxed)
    }

    /// The hash of tensor `name`, if computed yet.
    pub fn get(&self, name: &str) -> Option<u64> {
        let i = *self.inner.index.get(name)?;
        self.inner.slots.get(i)?.get().copied()
    }

    /// Waits until the hashes of at least `min` of `names` are known (all of
    /// them when `min` exceeds their number) and returns the positions in
    /// `names` of those known now. Names the model lacks count as known.
    pub async fn wait_some(&self, names: &[&str], min: usize) -> Vec<usize> {
        let mut rx = self.inner.filled.subscribe();
        loop {
            let known: Vec<usize> = names
                .iter()
                .enumerate()
                .filter(|(_, n)| {
                    self.inner
                        .index
                        .get(**n)
                        .is_none_or(|&i| self.inner.slots[i].get().is_some())
                })
                .map(|(k, _)| k)
                .collect();
            if known.len() >= min.min(names.len()) {
                return known;
            }
            if rx.changed().await.is_err() {
                return known;
            }
        }
    }

    /// Waits until hashing has ended and its memo is written, so a process
    /// that exits next does not lose it.
    pub async fn finished(&self) {
        let mut rx = self.inner.finished.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Waits for every hash (as [`TensorHashes::wait_some`] for all).
    pub async fn wait_all(&self) {
        let names: Vec<&str> = self.inner.index.keys().map(String::as_str).collect();
        self.wait_some(&names, names.len()).await;
    }
}

fn hash_worker(g: &Gguf, inner: &Inner, order: &[usize], cursor: &AtomicUsize) {
    while !inner.stop.load(Ordering::Relaxed) {
        let k = cursor.fetch_add(1, Ordering::Relaxed);
        let Some(&i) = order.get(k) else { return };
        let Some(info) = g.tensors().get(i) else {
            continue;
        };
        let data = g.tensor_data(info);
        let h = shardline_protocol::fnv1a_64(data);
        inner
            .hashed_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        inner.fill(i, h);
    }
}

fn read_memo(file: &Path, key: &FileKey) -> Option<Memo> {
    let text = std::fs::read(file).ok()?;
    let memo: Memo = serde_json::from_slice(&text).ok()?;
    (memo.version == MEMO_VERSION && memo.file == *key).then_some(memo)
}

fn write_memo(dir: &Path, key: FileKey, names: &[String], inner: &Inner) {
    let mut hashes = HashMap::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let Some(h) = inner.slots.get(i).and_then(|s| s.get()) else {
            return; // stopped early: nothing complete to remember
        };
        hashes.insert(name.clone(), format!("{h:016x}"));
    }
    let file = key.memo_file(dir);
    let memo = Memo {
        version: MEMO_VERSION,
        file: key,
        hashes,
    };
    let result = std::fs::create_dir_all(dir).and_then(|()| {
        let json = serde_json::to_vec(&memo).map_err(std::io::Error::other)?;
        // Write then rename, so a concurrent reader never sees half a memo.
        // Unique per process and per engine: two loads of one file at once
        // must not write into the same temporary file.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tmp = file.with_extension(format!(
            "tmp{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &file)
    });
    match result {
        Ok(()) => tracing::debug!(memo = %file.display(), "tensor hashes remembered"),
        Err(e) => tracing::warn!(memo = %file.display(), "cannot remember tensor hashes: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;
    use crate::gguf::GgmlType;

    fn model(dir: &Path, seed: u8) -> PathBuf {
        let path = dir.join("m.gguf");
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "llama");
        for t in 0..5u8 {
            let data: Vec<u8> = (0..256u32).map(|i| (i as u8) ^ t ^ seed).collect();
            w.add_tensor(format!("t{t}"), GgmlType::F32, &[64], data)
                .unwrap();
        }
        w.write_file(&path).unwrap();
        path
    }

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("shardline-hashes-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn computed_once_then_remembered() {
        let dir = tmp("memo");
        let path = model(&dir, 1);
        let memo = dir.join("memo");
        let g = Gguf::open(&path).unwrap();
        let first = TensorHashes::start(&g, &path, Some(&memo), &["t3".into()], 2);
        first.wait_all().await;
        assert!(!first.from_memo());
        let expect = shardline_protocol::fnv1a_64(g.tensor_bytes("t3").unwrap());
        assert_eq!(first.get("t3"), Some(expect));
        assert_eq!(first.hashed_bytes(), 5 * 64 * 4);
        first.finished().await;
        drop(first);
        let second = TensorHashes::start(&g, &path, Some(&memo), &[], 2);
        assert!(second.from_memo());
        assert_eq!(second.hashed_bytes(), 0);
        assert_eq!(second.get("t3"), Some(expect));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn changed_file_is_hashed_again() {
        let dir = tmp("changed");
        let memo = dir.join("memo");
        let path = model(&dir, 1);
        let g = Gguf::open(&path).unwrap();
        let a = TensorHashes::start(&g, &path, Some(&memo), &[], 1);
        a.finished().await;
        drop((a, g));
        // Same size, other bytes, other mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let path = model(&dir, 2);
        let g = Gguf::open(&path).unwrap();
        let b = TensorHashes::start(&g, &path, Some(&memo), &[], 1);
        assert!(!b.from_memo());
        b.wait_all().await;
        let expect = shardline_protocol::fnv1a_64(g.tensor_bytes("t0").unwrap());
        assert_eq!(b.get("t0"), Some(expect));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn wait_some_returns_what_is_known() {
        let dir = tmp("wait");
        let path = model(&dir, 3);
        let g = Gguf::open(&path).unwrap();
        let h = TensorHashes::start(&g, &path, None, &[], 1);
        let got = h.wait_some(&["t0", "t1", "missing"], 3).await;
        assert_eq!(got, vec![0, 1, 2]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

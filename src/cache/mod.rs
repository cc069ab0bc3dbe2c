//! A worker's weight cache: the folder ggml's rpc-server reads with `-c`
//! (one file per tensor, named by the FNV-1a 64 hash of its bytes as 16 hex
//! digits), filled ahead of time from a GGUF ([`seed()`]) and checked before
//! it is served ([`verify()`]).
//!
//! ggml's server trusts whatever a cache file holds: a truncated file leaves
//! part of a tensor unwritten and a flipped byte changes a weight, silently.
//! So every file carries a size and CRC32 in the folder's [`Manifest`], and
//! a worker checks them at start, moving damaged files aside: a damaged
//! cache then costs a resend, never a wrong token.

mod manifest;
mod seed;
mod verify;

use std::path::PathBuf;

pub use manifest::{cache_name, is_cache_name, Entry, Manifest, MANIFEST_FILE};
pub use seed::{seed, SeedReport};
pub use verify::{verify, BadFile, VerifyMode, VerifyReport, BAD_DIR};

/// Why a cache folder could not be seeded or checked.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A `--verify-cache` value that is not full, size or off.
    #[error("unknown cache check '{0}' (expected full, size or off)")]
    Mode(String),
}

/// Streams `path` through `f` in 1 MiB pieces; returns its length.
fn read_chunks(path: &std::path::Path, mut f: impl FnMut(&[u8])) -> Result<u64, CacheError> {
    use std::io::Read as _;
    let io = |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(total);
        }
        f(&buf[..n]);
        total += n as u64;
    }
}

/// Runs `work(i)` for every `i < n` on up to `threads` threads, each taking
/// the next index when it is free.
fn parallel_for(n: usize, threads: usize, work: impl Fn(usize) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                work(i);
            });
        }
    });
}

#[cfg(test)]
mod tests;

//! Mapping a model file into memory: the one `unsafe` call of the crate.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::GgufError;

/// A file mapped read-only into memory.
#[derive(Debug)]
pub struct MappedFile {
    map: Mmap,
    path: PathBuf,
}

impl MappedFile {
    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// Opens `path` read-only and maps the whole file.
#[allow(unsafe_code)]
pub fn map_file(path: &Path) -> Result<MappedFile, GgufError> {
    let io_err = |source| GgufError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    // SAFETY: the map is read-only (the file was opened read-only and `Mmap`
    // gives out only `&[u8]`), so this process never writes through it. What
    // mmap cannot rule out is another process modifying or truncating the file
    // while it is mapped, which could change bytes under a live `&[u8]` or make
    // reading it fault; as with every mmap-based model reader, keeping model
    // files unchanged while they are in use is the caller's responsibility.
    let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
    Ok(MappedFile {
        map,
        path: path.to_owned(),
    })
}

//! The API key: where it comes from and how a request's key is checked.

use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

use super::error::ApiError;
use super::state::AppState;

/// Largest key file read: a key is a line, not a document.
const KEY_FILE_LIMIT: u64 = 4096;

/// Why an API key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyFileError {
    /// The file could not be read.
    #[error("reading the API key from {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no key (empty, or only white space).
    #[error("the API key file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is longer than a key could be.
    #[error("the API key file {} is over {KEY_FILE_LIMIT} bytes", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
    },
    /// The key holds a character no `Authorization` header can carry, so no
    /// client could ever send it.
    #[error("the API key in {} must be one line of printable ASCII", path.display())]
    NotOneLine {
        /// The file.
        path: PathBuf,
    },
}

/// Reads an API key from `path`: its one line, without the surrounding white
/// space (the trailing newline editors add, in particular).
pub fn read_api_key_file(path: &Path) -> Result<String, ApiKeyFileError> {
    use std::io::Read as _;
    let read = |source| ApiKeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    // Read one byte past the limit to tell "at the limit" from "over it",
    // without reading all of a huge file (or a device) to find out.
    let mut bytes = Vec::new();
    file.take(KEY_FILE_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > KEY_FILE_LIMIT {
        return Err(ApiKeyFileError::TooLong {
            path: path.to_owned(),
        });
    }
    let key = String::from_utf8(bytes)
        .map_err(|_| ApiKeyFileError::NotOneLine {
            path: path.to_owned(),
        })?
        .trim()
        .to_owned();
    if key.is_empty() {
        return Err(ApiKeyFileError::Empty {
            path: path.to_owned(),
        });
    }
    // Inner spaces are fine in a header; control characters and non-ASCII
    // are not.
    if !key.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        return Err(ApiKeyFileError::NotOneLine {
            path: path.to_owned(),
        });
    }
    Ok(key)
}

/// Checks `Authorization: Bearer <key>` when the server has a key.
pub async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = state.api_key() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        None => ApiError::unauthorized(
            "You didn't provide an API key. Pass it in the Authorization header: 'Authorization: Bearer YOUR_KEY'.",
        )
        .into_response(),
        Some(g) if !same_key(g.as_bytes(), key.as_bytes()) => {
            ApiError::unauthorized("Incorrect API key provided.").into_response()
        }
        Some(_) => next.run(req).await,
    }
}

/// Whether `given` equals `key`, in a time that does not depend on where
/// they differ, so that timing answers cannot be used to guess the key a
/// byte at a time. (Copying `given` takes time in proportion to the shorter
/// of the two lengths, which in principle hints at the key's length.)
pub(crate) fn same_key(given: &[u8], key: &[u8]) -> bool {
    // `ct_eq` on slices returns early when the lengths differ; compare a
    // copy of `given` cut or padded to the key's length instead, and the
    // lengths separately.
    let mut padded = vec![0u8; key.len()];
    let n = given.len().min(key.len());
    padded[..n].copy_from_slice(&given[..n]);
    let same_len = (given.len() as u64).ct_eq(&(key.len() as u64));
    (padded.as_slice().ct_eq(key) & same_len).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secret", b"secreT"));
        assert!(!same_key(b"Secret", b"secret"));
        assert!(!same_key(b"secret", b"secret2"));
        assert!(!same_key(b"secret2", b"secret"));
        // A prefix padded with zeros must not pass for the key.
        assert!(!same_key(b"sec", b"sec\0\0\0"));
        assert!(!same_key(b"sec\0\0\0", b"sec"));
        assert!(!same_key(b"", b"x"));
        assert!(!same_key(b"x", b""));
        assert!(same_key(b"", b""));
        let long = vec![b'k'; 10_000];
        assert!(same_key(&long, &long));
        assert!(!same_key(&long[..9_999], &long));
    }

    fn key_file(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardline-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn key_files() {
        let p = key_file("ok", b"  s3cret key\r\n");
        assert_eq!(read_api_key_file(&p).unwrap(), "s3cret key");
        let p = key_file("empty", b"");
        assert!(matches!(
            read_api_key_file(&p),
            Err(ApiKeyFileError::Empty { .. })
        ));
        let p = key_file("blank", b" \n\n");
        assert!(matches!(
            read_api_key_file(&p),
            Err(ApiKeyFileError::Empty { .. })
        ));
        let p = key_file("two-lines", b"one\ntwo\n");
        assert!(matches!(
            read_api_key_file(&p),
            Err(ApiKeyFileError::NotOneLine { .. })
        ));
        let p = key_file("binary", &[0xff, 0xfe, b'a']);
        assert!(matches!(
            read_api_key_file(&p),
            Err(ApiKeyFileError::NotOneLine { .. })
        ));
        let p = key_file("huge", &vec![b'a'; 5000]);
        assert!(matches!(
            read_api_key_file(&p),
            Err(ApiKeyFileError::TooLong { .. })
        ));
        let missing = p.with_file_name("no-such-file");
        let e = read_api_key_file(&missing).unwrap_err();
        assert!(matches!(e, ApiKeyFileError::Read { .. }));
        assert!(e.to_string().contains("no-such-file"), "{e}");
        let _ = std::fs::remove_dir_all(p.parent().unwrap());
    }
}

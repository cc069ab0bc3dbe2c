//! Cutting special tokens out of text before tokenizing.
//!
//! Special tokens are tried longest text first; each one is cut out of every
//! stretch of text still left, so a longer token wins over a shorter one it
//! contains. Control and unknown tokens are only cut out with
//! `parse_special`; user-defined tokens always are.

use std::ops::Range;

use super::{attr, Tokenizer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A stretch of the input still to tokenize (byte range).
    Text(Range<usize>),
    Token(u32),
}

/// Whitespace as C's `isspace` sees it.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

pub(crate) fn partition(tok: &Tokenizer, text: &str, parse_special: bool) -> Vec<Fragment> {
    let mut fragments = Vec::new();
    if text.is_empty() {
        return fragments;
    }
    fragments.push(Fragment::Text(0..text.len()));
    let bytes = text.as_bytes();
    for &id in &tok.special_cache {
        let Some(data) = tok.token(id) else { continue };
        if !parse_special && data.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let needle = data.text.as_str();
        if needle.is_empty()
            || !fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(r) if text[r.clone()].contains(needle)))
        {
            continue;
        }
        let mut next = Vec::with_capacity(fragments.len() + 2);
        for fragment in fragments {
            let Fragment::Text(range) = fragment else {
                next.push(fragment);
                continue;
            };
            let mut start = range.start;
            let end = range.end;
            while let Some(found) = text[start..end].find(needle) {
                let at = start + found;
                let mut left_end = at;
                if data.attr & attr::LSTRIP != 0 {
                    while left_end > start && is_c_space(bytes[left_end - 1]) {
                        left_end -= 1;
                    }
                }
                if left_end > start {
                    next.push(Fragment::Text(start..left_end));
                }
                next.push(Fragment::Token(id));
                start = at + needle.len();
                if data.attr & attr::RSTRIP != 0 {
                    while start < end && is_c_space(bytes[start]) {
                        start += 1;
                    }
                }
            }
            if start < end {
                next.push(Fragment::Text(start..end));
            }
        }
        fragments = next;
    }
    fragments
}

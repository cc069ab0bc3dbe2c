//! Byte-level BPE merges within one pre-tokenized word.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::{MergeRanks, Tokenizer};

/// One symbol of a word being merged: a byte range of the word, linked to
/// its neighbours. A symbol merged into its left neighbour has `len == 0`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Symbol {
    pub start: usize,
    pub len: usize,
    pub prev: Option<usize>,
    pub next: Option<usize>,
}

/// A candidate merge of `left` with the symbol after it.
#[derive(Debug, PartialEq, Eq)]
struct Candidate {
    rank: u32,
    left: usize,
    right: usize,
    /// Combined length when queued; a different length now means stale.
    len: usize,
}

impl Ord for Candidate {
    /// Lowest rank first, then leftmost (the heap pops the greatest).
    fn cmp(&self, other: &Self) -> Ordering {
        Reverse((self.rank, self.left)).cmp(&Reverse((other.rank, other.left)))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Splits `word` into one symbol per UTF-8 character.
pub(crate) fn char_symbols(word: &str) -> Vec<Symbol> {
    let n = word.chars().count();
    word.char_indices()
        .enumerate()
        .map(|(i, (start, c))| Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: (i + 1 < n).then_some(i + 1),
        })
        .collect()
}

pub(crate) fn tokenize_word(
    tok: &Tokenizer,
    ranks: &MergeRanks,
    ignore_merges: bool,
    word: &str,
    out: &mut Vec<u32>,
) {
    if word.is_empty() {
        return;
    }
    if ignore_merges {
        if let Some(id) = tok.text_to_token(word) {
            out.push(id);
            return;
        }
    }
    let mut symbols = char_symbols(word);
    let text = |s: &Symbol| &word[s.start..s.start + s.len];
    let mut queue = BinaryHeap::new();
    let push = |queue: &mut BinaryHeap<Candidate>,
                symbols: &[Symbol],
                left: Option<usize>,
                right: Option<usize>| {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (l, r) = (&symbols[left], &symbols[right]);
        if let Some(rank) = ranks.rank(text(l), text(r)) {
            queue.push(Candidate {
                rank,
                left,
                right,
                len: l.len + r.len,
            });
        }
    };
    for i in 1..symbols.len() {
        push(&mut queue, &symbols, Some(i - 1), Some(i));
    }
    while let Some(c) = queue.pop() {
        let (l, r) = (symbols[c.left], symbols[c.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != c.len {
            continue;
        }
        symbols[c.left].len += r.len;
        symbols[c.right].len = 0;
        symbols[c.left].next = r.next;
        if let Some(n) = r.next {
            symbols[n].prev = Some(c.left);
        }
        push(&mut queue, &symbols, l.prev, Some(c.left));
        push(&mut queue, &symbols, Some(c.left), r.next);
    }
    for s in symbols.iter().filter(|s| s.len > 0) {
        let piece = text(s);
        match tok.text_to_token(piece) {
            Some(id) => out.push(id),
            None => {
                // No token for the merged text: fall back to tokens for its
                // single bytes where those exist (as llama.cpp does).
                for b in piece.bytes() {
                    let one = [b];
                    if let Some(id) = std::str::from_utf8(&one)
                        .ok()
                        .and_then(|s| tok.text_to_token(s))
                    {
                        out.push(id);
                    }
                }
            }
        }
    }
}

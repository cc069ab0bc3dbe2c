//! SentencePiece (BPE with scores) tokenization of one stretch of text whose
//! spaces are already `▁`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::bpe::{char_symbols, Symbol};
use super::Tokenizer;

/// A candidate merge of `left` with the symbol after it.
#[derive(Debug)]
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Candidate {
    /// Highest score first, then leftmost (the heap pops the greatest).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

struct Session<'a> {
    tok: &'a Tokenizer,
    text: &'a str,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Candidate>,
    /// For each merged text, the last pair of symbols it was proposed from:
    /// how to split it again if it turns out to be no token.
    rev_merge: HashMap<&'a str, (usize, usize)>,
}

impl<'a> Session<'a> {
    fn sym_text(&self, i: usize) -> &'a str {
        let s = self.symbols[i];
        &self.text[s.start..s.start + s.len]
    }

    fn try_add(&mut self, left: Option<usize>, right: Option<usize>) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (l, r) = (self.symbols[left], self.symbols[right]);
        let merged = &self.text[l.start..l.start + l.len + r.len];
        let Some(id) = self.tok.text_to_token(merged) else {
            return;
        };
        let Some(data) = self.tok.token(id) else {
            return;
        };
        self.queue.push(Candidate {
            score: data.score,
            left,
            right,
            len: merged.len(),
        });
        self.rev_merge.insert(merged, (left, right));
    }

    /// Emits the tokens for symbol `i`: its own token, else the tokens of the
    /// pair it was merged from, else its bytes. (Merges only ever make
    /// tokens, so in practice only single characters fall through to bytes;
    /// `depth` bounds the recursion all the same.)
    fn resegment(&self, i: usize, out: &mut Vec<u32>, depth: usize) {
        let text = self.sym_text(i);
        if let Some(id) = self.tok.text_to_token(text) {
            out.push(id);
            return;
        }
        match self.rev_merge.get(text) {
            Some(&(l, r)) if depth < self.symbols.len() => {
                self.resegment(l, out, depth + 1);
                self.resegment(r, out, depth + 1);
            }
            _ => {
                for b in text.bytes() {
                    out.extend(self.tok.byte_to_token(b));
                }
            }
        }
    }
}

pub(crate) fn tokenize(tok: &Tokenizer, text: &str, out: &mut Vec<u32>) {
    if text.is_empty() {
        return;
    }
    let mut s = Session {
        tok,
        text,
        symbols: char_symbols(text),
        queue: BinaryHeap::new(),
        rev_merge: HashMap::new(),
    };
    for i in 1..s.symbols.len() {
        s.try_add(Some(i - 1), Some(i));
    }
    while let Some(c) = s.queue.pop() {
        let (l, r) = (s.symbols[c.left], s.symbols[c.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != c.len {
            continue;
        }
        s.symbols[c.left].len += r.len;
        s.symbols[c.right].len = 0;
        s.symbols[c.left].next = r.next;
        if let Some(n) = r.next {
            s.symbols[n].prev = Some(c.left);
        }
        s.try_add(l.prev, Some(c.left));
        s.try_add(Some(c.left), r.next);
    }
    let mut i = Some(0);
    while let Some(at) = i {
        s.resegment(at, out, 0);
        i = s.symbols[at].next;
    }
}

//! Pre-tokenization of byte-level BPE vocabularies: splitting text into words
//! before merges, as chosen by `tokenizer.ggml.pre`.
//!
//! Each pre-tokenizer is a list of split steps applied in turn: every step
//! splits each piece left by the previous one further (a piece never spans a
//! boundary made earlier). The common patterns (GPT-2's, Llama 3's, Qwen 2's)
//! are hand-written scanners over code point classes, the same way llama.cpp
//! handles them; the rest go through a backtracking regex engine on a
//! "collapsed" copy of the text in which every non-ASCII code point is
//! replaced by one stand-in character for its class, so that `\p{L}` and
//! friends need only match those stand-ins.

use std::ops::Range;

use fancy_regex::Regex;

use super::unicode::{byte_encode_into, flags_of, Class, Flags};
use super::TokenizerError;

mod patterns;
pub(crate) use patterns::for_name;

/// Pattern of GPT-2's pre-tokenizer (handled by [`Step::Gpt2`]).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Behaviour that goes with a pre-tokenizer name besides its split steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreOptions {
    /// A word that is itself a token is taken whole, without merges.
    pub ignore_merges: bool,
    /// Default of `add_bos` before `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// Whether detokenizing tidies spaces before punctuation.
    pub clean_spaces: bool,
    /// The vocabulary has no BOS unless the metadata names one.
    pub no_default_bos: bool,
}

/// One split step.
#[derive(Debug)]
pub(crate) enum Step {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Llama 3 and relatives: case-insensitive contractions, an optional
    /// non-letter before letters, numbers in runs of at most `max_digits`,
    /// punctuation with trailing newlines, newline-ending whitespace.
    /// `marks` makes combining marks count as letters (Qwen 3.5).
    Llama3 { max_digits: usize, marks: bool },
    /// Runs of `\n` and runs of anything else.
    Newlines,
    /// Any other pattern.
    Regex(CompiledPattern),
}

/// A llama.cpp-style pattern compiled for the collapsed text (or, without
/// `\p{..}` classes, for the text itself).
#[derive(Debug)]
pub(crate) struct CompiledPattern {
    regex: Regex,
    collapsed: bool,
}

fn regexes(patterns: &[&str]) -> Result<Vec<Step>, TokenizerError> {
    patterns
        .iter()
        .map(|p| {
            if *p == GPT2 {
                Ok(Step::Gpt2)
            } else {
                compile(p).map(Step::Regex)
            }
        })
        .collect()
}

// Stand-ins for non-ASCII code points in the collapsed text: one per class
// that patterns name, one for the rest, and vertical tab for whitespace.
const STAND_IN_OTHER: char = '\u{D0}';
const STAND_IN_NUMBER: char = '\u{D1}';
const STAND_IN_LETTER: char = '\u{D2}';
const STAND_IN_PUNCTUATION: char = '\u{D3}';
const STAND_IN_MARK: char = '\u{D4}';
const STAND_IN_SYMBOL: char = '\u{D5}';
const STAND_IN_SPACE: char = '\u{0B}';

/// The class body (no brackets) a `\p{..}` name stands for in a collapsed
/// pattern: its stand-in plus the ASCII members of the category.
fn class_body(name: &str) -> Option<String> {
    let (stand_in, ascii) = match name {
        "N" => (STAND_IN_NUMBER, "0-9"),
        "L" | "Lu" | "Ll" | "Lt" | "Lm" | "Lo" => (STAND_IN_LETTER, "A-Za-z"),
        "P" => (STAND_IN_PUNCTUATION, r##"!-#%-\*,-/:;\?@\[-\]_\{\}"##),
        "M" => (STAND_IN_MARK, ""),
        "S" => (STAND_IN_SYMBOL, r"\$\+<->\^`\|~"),
        _ => return None,
    };
    Some(format!("\\x{{{:X}}}{ascii}", u32::from(stand_in)))
}

/// ASCII-only meanings of the Perl classes, as ECMAScript has them.
fn perl_class_body(c: char) -> Option<(&'static str, bool)> {
    match c {
        's' => Some((r"\t\n\x0B\x0C\r ", false)),
        'S' => Some((r"\t\n\x0B\x0C\r ", true)),
        'd' => Some(("0-9", false)),
        'D' => Some(("0-9", true)),
        'w' => Some(("0-9A-Za-z_", false)),
        'W' => Some(("0-9A-Za-z_", true)),
        _ => None,
    }
}

/// Rewrites a pattern for the regex engine: `\p{..}` classes (collapsed mode)
/// and `\s`, `\d`, `\w` become explicit ASCII classes.
fn compile(pattern: &str) -> Result<CompiledPattern, TokenizerError> {
    let collapsed = ["N", "L", "P", "M", "S", "Lu", "Ll", "Lt", "Lm", "Lo"]
        .iter()
        .any(|n| pattern.contains(&format!("\\p{{{n}}}")));
    if collapsed && !pattern.is_ascii() {
        return Err(TokenizerError::BadPattern {
            pattern: pattern.to_owned(),
            reason: "mixes \\p{..} classes with non-ASCII characters".to_owned(),
        });
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            let next = chars[i + 1];
            if next == 'p' && chars.get(i + 2) == Some(&'{') {
                let close = chars[i + 3..]
                    .iter()
                    .position(|&c| c == '}')
                    .map(|p| p + i + 3);
                if let Some(close) = close {
                    let name: String = chars[i + 3..close].iter().collect();
                    if let Some(body) = class_body(&name) {
                        if inside {
                            out.push_str(&body);
                        } else {
                            out.push('[');
                            out.push_str(&body);
                            out.push(']');
                        }
                        i = close + 1;
                        continue;
                    }
                }
            }
            if let Some((body, negated)) = perl_class_body(next) {
                if inside && !negated {
                    out.push_str(body);
                } else {
                    // A negated class inside brackets nests.
                    out.push_str(if negated { "[^" } else { "[" });
                    out.push_str(body);
                    out.push(']');
                }
                i += 2;
                continue;
            }
            out.push(c);
            out.push(next);
            i += 2;
            continue;
        }
        if c == '[' && !inside {
            inside = true;
        } else if c == ']' && inside {
            inside = false;
        }
        out.push(c);
        i += 1;
    }
    let regex = Regex::new(&out).map_err(|e| TokenizerError::BadPattern {
        pattern: pattern.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(CompiledPattern { regex, collapsed })
}

/// Splits `text` into words with `steps`, each word byte-level encoded
/// (every UTF-8 byte as its GPT-2 character).
pub(crate) fn split(text: &str, steps: &[Step]) -> Vec<String> {
    let cps: Vec<char> = text.chars().collect();
    let flags: Vec<Flags> = cps.iter().map(|&c| flags_of(c)).collect();
    let mut pieces: Vec<usize> = vec![cps.len()];
    let mut collapsed: Option<Vec<char>> = None;
    let mut plain: Option<Vec<char>> = None;
    for step in steps {
        let mut next = Vec::with_capacity(pieces.len());
        let mut start = 0;
        for &len in &pieces {
            let range = start..start + len;
            start += len;
            match step {
                Step::Gpt2 => split_gpt2(&cps, &flags, range, &mut next),
                Step::Llama3 { max_digits, marks } => {
                    split_llama3(&cps, &flags, range, *max_digits, *marks, &mut next)
                }
                Step::Newlines => split_newlines(&cps, range, &mut next),
                Step::Regex(p) => {
                    let subject = if p.collapsed {
                        collapsed.get_or_insert_with(|| collapse(&cps, &flags))
                    } else {
                        plain.get_or_insert_with(|| plain_text(&cps, &flags))
                    };
                    split_regex(&p.regex, subject, range, &mut next)
                }
            }
        }
        pieces = next;
    }
    let mut words = Vec::with_capacity(pieces.len());
    let mut start = 0;
    let mut buf = String::new();
    for len in pieces {
        buf.clear();
        buf.extend(&cps[start..start + len]);
        start += len;
        let mut word = String::with_capacity(buf.len() * 2);
        byte_encode_into(&buf, &mut word);
        words.push(word);
    }
    words
}

/// Appends the lengths of the pieces `range` splits into when a word ends at
/// each of `ends` (relative to the whole text, increasing), skipping empties.
struct Cuts<'a> {
    out: &'a mut Vec<usize>,
    prev: usize,
}

impl Cuts<'_> {
    fn cut(&mut self, end: usize) -> usize {
        let len = end - self.prev;
        if len > 0 {
            self.out.push(len);
        }
        self.prev = end;
        len
    }
}

fn split_gpt2(cps: &[char], flags: &[Flags], range: Range<usize>, out: &mut Vec<usize>) {
    let end = range.end;
    let cp = |i: usize| if i < end { Some(cps[i]) } else { None };
    let fl = |i: usize| if i < end { flags[i] } else { Flags::default() };
    let mut cuts = Cuts {
        out,
        prev: range.start,
    };
    let mut pos = range.start;
    while pos < end {
        let c = cps[pos];
        if let Some(n) = contraction_len(c, cp(pos + 1), cp(pos + 2), false) {
            pos += cuts.cut(pos + n);
            continue;
        }
        let lead = usize::from(c == ' ');
        let f = fl(pos + lead);
        let run = |pos: &mut usize, keep: &dyn Fn(Flags) -> bool| {
            *pos += lead;
            while keep(fl(*pos)) {
                *pos += 1;
            }
        };
        if f.is_letter() {
            run(&mut pos, &|f| f.is_letter());
            cuts.cut(pos);
            continue;
        }
        if f.is_number() {
            run(&mut pos, &|f| f.is_number());
            cuts.cut(pos);
            continue;
        }
        if is_other(f) {
            run(&mut pos, &is_other);
            cuts.cut(pos);
            continue;
        }
        let n_ws = (pos..end).take_while(|&i| flags[i].is_whitespace()).count();
        if n_ws > 1 && pos + n_ws < end {
            // Whitespace before a non-space: the last one goes with what follows.
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws;
        } else {
            pos += 1;
        }
        cuts.cut(pos);
    }
}

/// Neither whitespace, letter nor number (and a real code point).
fn is_other(f: Flags) -> bool {
    f.is_some() && !(f.is_whitespace() || f.is_letter() || f.is_number())
}

/// Length of an English contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`,
/// `'d`) starting at an apostrophe `c`, if there is one.
fn contraction_len(c: char, c1: Option<char>, c2: Option<char>, any_case: bool) -> Option<usize> {
    if c != '\'' {
        return None;
    }
    let fold = |c: Option<char>| c.map(|c| if any_case { c.to_ascii_lowercase() } else { c });
    let (c1, c2) = (fold(c1)?, fold(c2));
    if matches!(c1, 's' | 't' | 'm' | 'd') {
        return Some(2);
    }
    match (c1, c2?) {
        ('r', 'e') | ('v', 'e') | ('l', 'l') => Some(3),
        _ => None,
    }
}

fn split_llama3(
    cps: &[char],
    flags: &[Flags],
    range: Range<usize>,
    max_digits: usize,
    marks: bool,
    out: &mut Vec<usize>,
) {
    let end = range.end;
    let cp = |i: usize| if i < end { Some(cps[i]) } else { None };
    let fl = |i: usize| if i < end { flags[i] } else { Flags::default() };
    let wordish = |f: Flags| f.is_letter() || (marks && f.is_mark());
    let mut cuts = Cuts {
        out,
        prev: range.start,
    };
    let mut pos = range.start;
    while pos < end {
        let c = cps[pos];
        let f = flags[pos];
        if let Some(n) = contraction_len(c, cp(pos + 1), cp(pos + 2), true) {
            pos += cuts.cut(pos + n);
            continue;
        }
        // One optional non-letter (not a newline or digit), then letters.
        if !(c == '\r' || c == '\n' || f.is_number()) && (wordish(f) || wordish(fl(pos + 1))) {
            pos += 1;
            while wordish(fl(pos)) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        if f.is_number() {
            let mut group_start = pos;
            while fl(pos).is_number() {
                pos += 1;
                if pos - group_start >= max_digits {
                    cuts.cut(pos);
                    group_start = pos;
                }
            }
            cuts.cut(pos);
            continue;
        }
        // An optional space, punctuation and symbols, then newlines.
        let lead = usize::from(c == ' ');
        let punct = |f: Flags| {
            f.is_some()
                && !(f.is_whitespace() || f.is_letter() || f.is_number() || (marks && f.is_mark()))
        };
        if punct(fl(pos + lead)) || (lead == 1 && !fl(pos + 1).is_some()) {
            pos += lead;
            while punct(fl(pos)) {
                pos += 1;
            }
            while matches!(cp(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            cuts.cut(pos);
            continue;
        }
        let mut n_ws = 0;
        let mut after_last_newline = None;
        while fl(pos + n_ws).is_whitespace() {
            if matches!(cps[pos + n_ws], '\r' | '\n') {
                after_last_newline = Some(pos + n_ws + 1);
            }
            n_ws += 1;
        }
        if let Some(p) = after_last_newline {
            pos = p;
        } else if n_ws > 1 && pos + n_ws < end {
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws;
        } else {
            pos += 1;
        }
        cuts.cut(pos);
    }
}

fn split_newlines(cps: &[char], range: Range<usize>, out: &mut Vec<usize>) {
    let mut pos = range.start;
    while pos < range.end {
        let newline = cps[pos] == '\n';
        let start = pos;
        while pos < range.end && (cps[pos] == '\n') == newline {
            pos += 1;
        }
        out.push(pos - start);
    }
}

/// The text with each non-ASCII code point replaced by its class's stand-in.
fn collapse(cps: &[char], flags: &[Flags]) -> Vec<char> {
    cps.iter()
        .zip(flags)
        .map(|(&c, f)| {
            if c.is_ascii() {
                c
            } else if f.is_whitespace() {
                STAND_IN_SPACE
            } else {
                match f.class {
                    Some(Class::Number) => STAND_IN_NUMBER,
                    Some(Class::Letter) => STAND_IN_LETTER,
                    Some(Class::Punctuation) => STAND_IN_PUNCTUATION,
                    Some(Class::Mark) => STAND_IN_MARK,
                    Some(Class::Symbol) => STAND_IN_SYMBOL,
                    _ => STAND_IN_OTHER,
                }
            }
        })
        .collect()
}

/// The text with non-ASCII whitespace replaced by vertical tab, so that an
/// ASCII `\s` sees it.
fn plain_text(cps: &[char], flags: &[Flags]) -> Vec<char> {
    cps.iter()
        .zip(flags)
        .map(|(&c, f)| {
            if !c.is_ascii() && f.is_whitespace() {
                STAND_IN_SPACE
            } else {
                c
            }
        })
        .collect()
}

/// Splits `subject[range]` at the matches of `regex`: each match is a piece,
/// and so is each stretch between matches.
fn split_regex(regex: &Regex, subject: &[char], range: Range<usize>, out: &mut Vec<usize>) {
    let text: String = subject[range.clone()].iter().collect();
    // Byte offset in `text` → code point offset.
    let mut cp_at = vec![0usize; text.len() + 1];
    for (n, (b, c)) in text.char_indices().enumerate() {
        for slot in &mut cp_at[b..b + c.len_utf8()] {
            *slot = n;
        }
    }
    cp_at[text.len()] = range.len();
    let mut done = 0;
    for m in regex.find_iter(&text) {
        // A pattern that fails at run time (backtrack limit) leaves the rest unsplit.
        let Ok(m) = m else { break };
        let (s, e) = (cp_at[m.start()], cp_at[m.end()]);
        if s > done {
            out.push(s - done);
        }
        out.push(e - s);
        done = e;
    }
    if done < range.len() {
        out.push(range.len() - done);
    }
}

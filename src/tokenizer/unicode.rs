//! Code point classes the pre-tokenizers split on, and GPT-2's byte-to-text
//! mapping.
//!
//! The classes are the Unicode general categories collapsed to one class per
//! major category (letter, number, mark, …), plus the `White_Space` property.
//! The category data comes from `regex-syntax`'s Unicode tables (Unicode 16);
//! llama.cpp ships its own tables (Unicode 15.1), so the two disagree only on
//! code points first assigned in Unicode 16, which llama.cpp treats as
//! unassigned.

use std::sync::OnceLock;

/// The major general category of a code point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `Cn`: not assigned.
    Unassigned,
    /// `N*`.
    Number,
    /// `L*`.
    Letter,
    /// `Z*`.
    Separator,
    /// `M*` (combining marks).
    Mark,
    /// `P*`.
    Punctuation,
    /// `S*`.
    Symbol,
    /// `Cc`, `Cf`, `Cs`, `Co`.
    Control,
}

/// What the splitters ask about one code point. `Flags::default()` stands for
/// "past the end of the text": no class at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    pub class: Option<Class>,
    pub whitespace: bool,
}

impl Flags {
    pub fn is_letter(self) -> bool {
        self.class == Some(Class::Letter)
    }
    pub fn is_number(self) -> bool {
        self.class == Some(Class::Number)
    }
    pub fn is_mark(self) -> bool {
        self.class == Some(Class::Mark)
    }
    pub fn is_whitespace(self) -> bool {
        self.whitespace
    }
    /// Whether this stands for a real code point (not past the end).
    pub fn is_some(self) -> bool {
        self.class.is_some()
    }
}

/// The code points with the Unicode `White_Space` property.
const WHITE_SPACE: [u32; 25] = [
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
    0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
];

pub(crate) fn is_white_space(c: char) -> bool {
    WHITE_SPACE.contains(&u32::from(c))
}

/// Sorted, non-overlapping `(first, last, class)` ranges; gaps are unassigned.
fn class_table() -> &'static [(u32, u32, Class)] {
    static TABLE: OnceLock<Vec<(u32, u32, Class)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        const CLASSES: [(&str, Class); 9] = [
            (r"\p{L}", Class::Letter),
            (r"\p{N}", Class::Number),
            (r"\p{Z}", Class::Separator),
            (r"\p{M}", Class::Mark),
            (r"\p{P}", Class::Punctuation),
            (r"\p{S}", Class::Symbol),
            (r"\p{Cc}", Class::Control),
            (r"\p{Cf}", Class::Control),
            (r"\p{Co}", Class::Control),
        ];
        let mut table = Vec::new();
        for (pattern, class) in CLASSES {
            for (first, last) in unicode_class_ranges(pattern) {
                table.push((first, last, class));
            }
        }
        // Surrogates are not `char`s, but a class keeps the table complete.
        table.push((0xD800, 0xDFFF, Class::Control));
        table.sort_by_key(|&(first, _, _)| first);
        table
    })
}

/// The ranges of a `\p{..}` class, from regex-syntax's tables. The patterns
/// are fixed and valid; a failure would leave the class empty.
fn unicode_class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class as HirClass, HirKind};
    let Ok(hir) = regex_syntax::ParserBuilder::new().build().parse(pattern) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(HirClass::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn class_of(c: char) -> Class {
    let cp = u32::from(c);
    let table = class_table();
    let i = table.partition_point(|&(first, _, _)| first <= cp);
    match i.checked_sub(1).map(|i| table[i]) {
        Some((_, last, class)) if cp <= last => class,
        _ => Class::Unassigned,
    }
}

pub(crate) fn flags_of(c: char) -> Flags {
    Flags {
        class: Some(class_of(c)),
        whitespace: is_white_space(c),
    }
}

/// GPT-2's reversible byte-to-character mapping: printable Latin-1 bytes stand
/// for themselves, the others for U+0100 onwards in byte order.
pub(crate) struct ByteMap {
    to_char: [char; 256],
    /// The byte behind each of U+0100 .. U+0100 + N_REMAPPED.
    remapped: [u8; N_REMAPPED],
}

/// Bytes that are not printable Latin-1 and so map past U+00FF.
const N_REMAPPED: usize = 68;

fn is_printable_latin1(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

impl ByteMap {
    pub fn get() -> &'static ByteMap {
        static MAP: OnceLock<ByteMap> = OnceLock::new();
        MAP.get_or_init(|| {
            let mut to_char = ['\0'; 256];
            let mut remapped = [0u8; N_REMAPPED];
            let mut n = 0usize;
            for b in 0..=255u8 {
                let cp = if is_printable_latin1(b) {
                    u32::from(b)
                } else {
                    remapped[n] = b;
                    n += 1;
                    0x100 + n as u32 - 1
                };
                to_char[usize::from(b)] = char::from_u32(cp).unwrap_or('\u{FFFD}');
            }
            ByteMap { to_char, remapped }
        })
    }

    pub fn byte_to_char(&self, b: u8) -> char {
        self.to_char[usize::from(b)]
    }

    /// The byte a mapped character stands for.
    pub fn char_to_byte(&self, c: char) -> Option<u8> {
        let cp = u32::from(c);
        match u8::try_from(cp) {
            Ok(b) if is_printable_latin1(b) => Some(b),
            Ok(_) => None,
            Err(_) => {
                let n = cp.checked_sub(0x100)? as usize;
                self.remapped.get(n).copied()
            }
        }
    }
}

/// Appends the byte-level encoding of `word` (each UTF-8 byte as its mapped
/// character).
pub(crate) fn byte_encode_into(word: &str, out: &mut String) {
    let map = ByteMap::get();
    for &b in word.as_bytes() {
        out.push(map.byte_to_char(b));
    }
}

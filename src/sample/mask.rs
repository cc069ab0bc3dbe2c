//! The set of tokens a constraint allows at one step.

/// A set of token ids, one bit each (bit `i % 32` of word `i / 32`, the
/// layout llguidance's masks use, so they copy over word for word).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenMask {
    words: Vec<u32>,
}

impl TokenMask {
    /// No token allowed, room for `n_vocab` ids.
    pub fn none(n_vocab: usize) -> TokenMask {
        TokenMask {
            words: vec![0; n_vocab.div_ceil(32)],
        }
    }

    /// The mask whose bit words are `words`.
    pub fn from_words(words: Vec<u32>) -> TokenMask {
        TokenMask { words }
    }

    /// Allows `id` (ids past the room are ignored).
    pub fn allow(&mut self, id: u32) {
        if let Some(w) = self.words.get_mut(id as usize / 32) {
            *w |= 1 << (id % 32);
        }
    }

    /// Whether `id` is allowed.
    pub fn allows(&self, id: u32) -> bool {
        self.words
            .get(id as usize / 32)
            .is_some_and(|w| w & (1 << (id % 32)) != 0)
    }

    /// How many ids are allowed.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The allowed ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.words.len() as u32 * 32).filter(|&i| self.allows(i))
    }
}

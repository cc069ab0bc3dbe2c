//! OpenAI's logit bias and its presence and frequency penalties.
//!
//! Both penalties look at the tokens the sampler has produced, not at the
//! prompt, as OpenAI describes them (and vLLM does): a token's logit `l`
//! becomes `l - count * frequency - (count > 0) * presence`.

use std::collections::HashMap;

use super::Candidate;

/// Adds each bias to its token's logit. `candidates` is indexed by token id
/// (nothing has been filtered yet); ids past it are ignored.
pub(crate) fn bias(candidates: &mut [Candidate], bias: &[(u32, f32)]) {
    for &(id, b) in bias {
        if let Some(c) = candidates.get_mut(id as usize) {
            c.logit += b;
        }
    }
}

/// How often each token was produced.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    counts: HashMap<u32, u32>,
}

impl Counts {
    /// Counts one more `id`.
    pub fn add(&mut self, id: u32) {
        *self.counts.entry(id).or_insert(0) += 1;
    }

    /// How often `id` was counted.
    pub fn get(&self, id: u32) -> u32 {
        self.counts.get(&id).copied().unwrap_or(0)
    }

    /// Applies the penalties to `candidates`, indexed by token id.
    pub(crate) fn penalize(&self, candidates: &mut [Candidate], presence: f32, frequency: f32) {
        for (&id, &n) in &self.counts {
            if let Some(c) = candidates.get_mut(id as usize) {
                c.logit -= n as f32 * frequency + presence;
            }
        }
    }
}

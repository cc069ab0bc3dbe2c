//! Choosing the next token from logits. Pure: no I/O, and a seeded random
//! number generator of its own, so a seed reproduces a run exactly.
//!
//! The filters run in the order of llama.cpp's default sampler chain, each
//! one off at its neutral value:
//!
//! 1. logit bias (`logit_bias`, empty = off): added to the named tokens'
//!    logits, as OpenAI's `logit_bias`;
//! 2. repetition penalty (`repeat_penalty`, 1 = off): each distinct token
//!    among the last `repeat_last_n` of the history has its logit divided by
//!    the penalty when positive, multiplied by it otherwise;
//!    then OpenAI's presence and frequency penalties (0 = off), over the
//!    tokens this sampler has produced (not the prompt): a token's logit
//!    loses `frequency_penalty` times its count plus `presence_penalty` once
//!    it has appeared ([`penalties`]);
//! 3. the constraint's mask, when [`Sampler::sample_masked`] is given one:
//!    tokens outside it cannot be chosen ([`TokenMask`]);
//! 4. top-k (`top_k`, 0 = off): keep the `k` highest logits;
//! 5. top-p (`top_p`, 1 = off): keep the most probable tokens whose
//!    probabilities (softmax of the logits so far, before temperature) first
//!    add up to at least `p`;
//! 6. min-p (`min_p`, 0 = off): keep tokens at least `min_p` times as
//!    probable as the most probable one;
//! 7. temperature: divide the logits by it;
//! 8. draw from the softmax of what is left.
//!
//! A temperature of 0 or less is greedy: the highest logit after the
//! penalty, the lowest id on a tie, with no filter and no draw. NaN logits
//! count as minus infinity; tokens at plus infinity share all the
//! probability between them.
//!
//! [`logprobs`] reports what the model thought of each chosen token: its
//! log-probability and the most likely alternatives, from the raw logits.

pub mod logprobs;
mod mask;
pub mod penalties;
mod rng;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;

pub use logprobs::{TokenLogprob, MAX_TOP_LOGPROBS};
pub use mask::TokenMask;
use rng::Xoshiro256;

/// Sampler settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerConfig {
    /// 0 or less: greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off.
    pub top_k: u32,
    /// Nucleus sampling threshold in `[0, 1]`; 1 = off.
    pub top_p: f32,
    /// Minimum probability relative to the most likely token, in `[0, 1]`; 0 = off.
    pub min_p: f32,
    /// Repetition penalty, positive; 1 = off.
    pub repeat_penalty: f32,
    /// How many of the latest history tokens the penalty looks at; 0 = off.
    pub repeat_last_n: usize,
    /// Seed of the random number generator that draws tokens; the same seed
    /// and inputs give the same tokens.
    pub seed: u64,
    /// OpenAI's presence penalty: subtracted once from the logit of every
    /// token already generated; 0 = off.
    #[serde(default)]
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted from a token's logit once per
    /// time it was generated; 0 = off.
    #[serde(default)]
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens (OpenAI's `logit_bias`); ids past
    /// the vocabulary are ignored here (the engine refuses them).
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplerConfig {
    /// llama.cpp's defaults, with seed 0.
    fn default() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token.
    pub fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }

    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), SamplerError> {
        if !self.temperature.is_finite() {
            return Err(SamplerError::Temperature(self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(SamplerError::TopP(self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(SamplerError::MinP(self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(SamplerError::RepeatPenalty(self.repeat_penalty));
        }
        if !self.presence_penalty.is_finite() {
            return Err(SamplerError::PresencePenalty(self.presence_penalty));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(SamplerError::FrequencyPenalty(self.frequency_penalty));
        }
        if let Some(&(id, b)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return Err(SamplerError::LogitBias(id, b));
        }
        Ok(())
    }

    fn greedy_mode(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// A sampler setting out of range.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// The temperature is NaN or infinite; holds it.
    #[error("temperature must be a finite number (0 or less for greedy), got {0}")]
    Temperature(f32),
    /// `top_p` is outside `[0, 1]` (or NaN); holds it.
    #[error("top-p must be between 0 and 1 (1 = off), got {0}")]
    TopP(f32),
    /// `min_p` is outside `[0, 1]` (or NaN); holds it.
    #[error("min-p must be between 0 and 1 (0 = off), got {0}")]
    MinP(f32),
    /// The repetition penalty is not a positive finite number; holds it.
    #[error("the repetition penalty must be a positive finite number (1 = off), got {0}")]
    RepeatPenalty(f32),
    /// The presence penalty is not finite; holds it.
    #[error("the presence penalty must be a finite number (0 = off), got {0}")]
    PresencePenalty(f32),
    /// The frequency penalty is not finite; holds it.
    #[error("the frequency penalty must be a finite number (0 = off), got {0}")]
    FrequencyPenalty(f32),
    /// A logit bias is not finite; holds the token and the bias.
    #[error("the logit bias of token {0} must be a finite number, got {1}")]
    LogitBias(u32, f32),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) id: u32,
    pub(crate) logit: f32,
}

/// Highest logit first, then lowest id: a total order, so results do not
/// depend on the sort algorithm.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Chooses tokens; see the module documentation for the order of filters.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng: Xoshiro256,
    candidates: Vec<Candidate>,
    recent: Vec<u32>,
    /// How often each token was produced, for the presence and frequency
    /// penalties (kept only when one of them is on).
    counts: penalties::Counts,
}

impl Sampler {
    /// A sampler with these settings, its generator seeded from `config.seed`;
    /// [`SamplerError`] if a setting is out of range.
    pub fn new(config: SamplerConfig) -> Result<Sampler, SamplerError> {
        config.validate()?;
        Ok(Sampler {
            rng: Xoshiro256::seed_from_u64(config.seed),
            config,
            candidates: Vec::new(),
            recent: Vec::new(),
            counts: penalties::Counts::default(),
        })
    }

    /// The settings it was made with.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The next token, given the logits over the vocabulary and the tokens
    /// so far (prompt and generated; ids past the vocabulary are ignored).
    ///
    /// # Panics
    /// When `logits` is empty or has more than `u32::MAX` entries.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.sample_masked(logits, history, None)
    }

    /// [`Sampler::sample`], choosing only among the tokens `mask` allows
    /// (a constraint's). When the mask allows no token it is ignored,
    /// rather than choosing a token it forbids at random.
    ///
    /// # Panics
    /// When `logits` is empty or has more than `u32::MAX` entries.
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        history: &[u32],
        mask: Option<&TokenMask>,
    ) -> u32 {
        let tok = self.choose(logits, history, mask);
        if self.counts_tokens() {
            self.counts.add(tok);
        }
        tok
    }

    fn counts_tokens(&self) -> bool {
        self.config.presence_penalty != 0.0 || self.config.frequency_penalty != 0.0
    }

    fn choose(&mut self, logits: &[f32], history: &[u32], mask: Option<&TokenMask>) -> u32 {
        assert!(!logits.is_empty(), "sampling from an empty vocabulary");
        assert!(
            u32::try_from(logits.len()).is_ok(),
            "vocabulary larger than u32"
        );
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| Candidate {
                id: i as u32,
                logit: if l.is_nan() { f32::NEG_INFINITY } else { l },
            }));
        penalties::bias(&mut self.candidates, &self.config.logit_bias);
        self.penalize(history);
        if self.counts_tokens() {
            self.counts.penalize(
                &mut self.candidates,
                self.config.presence_penalty,
                self.config.frequency_penalty,
            );
        }
        if let Some(mask) = mask {
            if self.candidates.iter().any(|c| mask.allows(c.id)) {
                self.candidates.retain(|c| mask.allows(c.id));
            }
        }

        if self.config.greedy_mode() {
            return argmax(&self.candidates);
        }
        // Tokens at +inf take all the probability, equally; tokens at -inf
        // have none. With nothing finite left, fall back to greedy.
        if self.candidates.iter().any(|c| c.logit == f32::INFINITY) {
            self.candidates.retain(|c| c.logit == f32::INFINITY);
            self.candidates.iter_mut().for_each(|c| c.logit = 0.0);
        } else {
            let fallback = argmax(&self.candidates);
            self.candidates.retain(|c| c.logit > f32::NEG_INFINITY);
            if self.candidates.is_empty() {
                return fallback;
            }
        }
        self.top_k();
        self.top_p();
        self.min_p();
        self.draw()
    }

    fn penalize(&mut self, history: &[u32]) {
        let penalty = self.config.repeat_penalty;
        let n = self.config.repeat_last_n.min(history.len());
        if penalty == 1.0 || n == 0 {
            return;
        }
        self.recent.clear();
        self.recent.extend_from_slice(&history[history.len() - n..]);
        self.recent.sort_unstable();
        self.recent.dedup();
        for &id in &self.recent {
            // Candidates are still indexed by id here: nothing was removed.
            if let Some(c) = self.candidates.get_mut(id as usize) {
                if c.logit <= 0.0 {
                    c.logit *= penalty;
                } else {
                    c.logit /= penalty;
                }
            }
        }
    }

    fn top_k(&mut self) {
        let k = self.config.top_k as usize;
        if k == 0 || k >= self.candidates.len() {
            return;
        }
        self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
        self.candidates.truncate(k);
    }

    fn top_p(&mut self) {
        let p = f64::from(self.config.top_p);
        if p >= 1.0 {
            return;
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        let max = self.candidates[0].logit;
        let weights: Vec<f64> = self
            .candidates
            .iter()
            .map(|c| f64::from(c.logit - max).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut cum = 0.0;
        let mut keep = self.candidates.len();
        for (i, w) in weights.iter().enumerate() {
            cum += w / total;
            if cum >= p {
                keep = i + 1;
                break;
            }
        }
        self.candidates.truncate(keep.max(1));
    }

    fn min_p(&mut self) {
        let min_p = self.config.min_p;
        if min_p <= 0.0 {
            return;
        }
        // p_i >= min_p * p_max  <=>  logit_i >= logit_max + ln(min_p).
        let max = self
            .candidates
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        let threshold = max + min_p.ln();
        self.candidates.retain(|c| c.logit >= threshold);
    }

    fn draw(&mut self) -> u32 {
        let t = self.config.temperature;
        let max = self
            .candidates
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        // exp((logit - max) / t): at most 1, and 1 for the top token, so the
        // total is at least 1 and nothing overflows whatever t is.
        let weights: Vec<f64> = self
            .candidates
            .iter()
            .map(|c| (f64::from(c.logit - max) / f64::from(t)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let r = self.rng.next_f64() * total;
        let mut cum = 0.0;
        for (c, w) in self.candidates.iter().zip(&weights) {
            cum += w;
            if r < cum {
                return c.id;
            }
        }
        // Rounding left r at the very top: the last token with any weight.
        self.candidates
            .iter()
            .zip(&weights)
            .rev()
            .find(|(_, &w)| w > 0.0)
            .map_or(self.candidates[0].id, |(c, _)| c.id)
    }
}

/// The first highest logit (NaN never wins; all -inf gives the first).
fn argmax(candidates: &[Candidate]) -> u32 {
    let mut best = candidates[0];
    for c in &candidates[1..] {
        if c.logit > best.logit {
            best = *c;
        }
    }
    best.id
}

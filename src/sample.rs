//! Choosing the next token from logits. Pure: no I/O, and a seeded random
//! number generator of its own, so a seed reproduces a run exactly.
//!
//! The filters run in the order of llama.cpp's default sampler chain, each
//! one off at its neutral value:
//!
//! 1. repetition penalty (`repeat_penalty`, 1 = off): each distinct token
//!    among the last `repeat_last_n` of the history has its logit divided by
//!    the penalty when positive, multiplied by it otherwise;
//! 2. top-k (`top_k`, 0 = off): keep the `k` highest logits;
//! 3. top-p (`top_p`, 1 = off): keep the most probable tokens whose
//!    probabilities (softmax of the logits so far, before temperature) first
//!    add up to at least `p`;
//! 4. min-p (`min_p`, 0 = off): keep tokens at least `min_p` times as
//!    probable as the most probable one;
//! 5. temperature: divide the logits by it;
//! 6. draw from the softmax of what is left.
//!
//! A temperature of 0 or less is greedy: the highest logit after the
//! penalty, the lowest id on a tie, with no filter and no draw. NaN logits
//! count as minus infinity; tokens at plus infinity share all the
//! probability between them.

use std::cmp::Ordering;

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
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
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
        self.penalize(history);

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

/// xoshiro256** (Blackman and Vigna), seeded through SplitMix64.
#[derive(Debug, Clone)]
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn seed_from_u64(seed: u64) -> Xoshiro256 {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        // SplitMix64 outputs are never all zero for four draws in a row.
        Xoshiro256 {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`, 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(temperature: f32) -> SamplerConfig {
        SamplerConfig {
            temperature,
            seed: 42,
            ..SamplerConfig::greedy()
        }
    }

    fn sampler(c: SamplerConfig) -> Sampler {
        Sampler::new(c).unwrap()
    }

    /// Draws `n` tokens and counts each id.
    fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits, &[]) as usize] += 1;
        }
        counts
    }

    /// Logits whose softmax is `probs`.
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    fn pseudo_random_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Xoshiro256::seed_from_u64(seed);
        (0..n)
            .map(|_| (rng.next_f64() * 20.0 - 10.0) as f32)
            .collect()
    }

    #[test]
    fn greedy_takes_the_highest_logit_and_the_lowest_id_on_ties() {
        let mut s = sampler(config(0.0));
        assert_eq!(s.sample(&[0.1, 3.0, -2.0, 2.9], &[]), 1);
        assert_eq!(s.sample(&[1.0, 5.0, 5.0, 5.0], &[]), 1);
        assert_eq!(s.sample(&[7.0], &[]), 0);
        let mut s = sampler(config(-1.0));
        assert_eq!(
            s.sample(&[0.1, 3.0, -2.0, 2.9], &[]),
            1,
            "negative temperature is greedy"
        );
        // The default filters do not matter when greedy.
        let mut s = sampler(SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        });
        for seed in 0..20 {
            let l = pseudo_random_logits(1000, seed);
            let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
            assert_eq!(s.sample(&l, &[]) as usize, best);
        }
    }

    #[test]
    fn a_seed_reproduces_a_run() {
        let logits = pseudo_random_logits(500, 7);
        let c = SamplerConfig {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let run = |seed: u64| {
            let mut s = sampler(SamplerConfig { seed, ..c.clone() });
            (0..200).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        // Clones continue the same stream.
        let mut a = sampler(SamplerConfig { seed: 9, ..c });
        a.sample(&logits, &[]);
        let mut b = a.clone();
        for _ in 0..50 {
            assert_eq!(a.sample(&logits, &[]), b.sample(&logits, &[]));
        }
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Xoshiro256::seed_from_u64(0);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            buckets[(x * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (9_500..10_500).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn top_k_1_is_greedy() {
        let mut greedy = sampler(config(0.0));
        let mut top1 = sampler(SamplerConfig {
            top_k: 1,
            ..config(1.0)
        });
        let mut top1_hot = sampler(SamplerConfig {
            top_k: 1,
            seed: 3,
            ..config(100.0)
        });
        for seed in 0..50 {
            let l = pseudo_random_logits(300, seed);
            let g = greedy.sample(&l, &[]);
            assert_eq!(top1.sample(&l, &[]), g);
            assert_eq!(top1_hot.sample(&l, &[]), g);
        }
        // Ties: the lowest id, as greedy.
        assert_eq!(top1.sample(&[0.0, 2.0, 2.0], &[]), 1);
    }

    #[test]
    fn top_k_keeps_the_k_best() {
        let logits = logits_of(&[0.1, 0.3, 0.05, 0.25, 0.3]);
        let mut s = sampler(SamplerConfig {
            top_k: 3,
            ..config(1.0)
        });
        let h = histogram(&mut s, &logits, 5000);
        assert_eq!((h[0], h[2]), (0, 0), "{h:?}");
        assert!(h[1] > 1000 && h[3] > 1000 && h[4] > 1000, "{h:?}");
    }

    #[test]
    fn unfiltered_draws_follow_the_probabilities() {
        let probs = [0.5, 0.3, 0.1, 0.05, 0.03, 0.02];
        let mut s = sampler(config(1.0));
        let n = 20_000;
        let h = histogram(&mut s, &logits_of(&probs), n);
        for (p, &c) in probs.iter().zip(&h) {
            let expected = p * n as f64;
            let sd = (expected * (1.0 - p)).sqrt();
            assert!((c as f64 - expected).abs() < 5.0 * sd, "{h:?}");
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let probs = [0.5, 0.3, 0.1, 0.05, 0.03, 0.02];
        let logits = logits_of(&probs);
        // 0.5 + 0.3 reaches 0.75: the rest goes.
        let mut s = sampler(SamplerConfig {
            top_p: 0.75,
            ..config(1.0)
        });
        let h = histogram(&mut s, &logits, 5000);
        assert!(h[2..].iter().all(|&c| c == 0), "{h:?}");
        // Renormalised: 5/8 and 3/8.
        assert!((2900..3350).contains(&h[0]), "{h:?}");
        // Over 0.8 keeps the third.
        let mut s = sampler(SamplerConfig {
            top_p: 0.85,
            ..config(1.0)
        });
        let h = histogram(&mut s, &logits, 5000);
        assert!(h[2] > 0 && h[3..].iter().all(|&c| c == 0), "{h:?}");
        // top-p 0 keeps one token.
        let mut s = sampler(SamplerConfig {
            top_p: 0.0,
            ..config(1.0)
        });
        let h = histogram(&mut s, &logits, 500);
        assert_eq!(h[0], 500);
    }

    #[test]
    fn top_p_is_measured_before_temperature() {
        // At temperature 5 the tail is likely, but top-p on the original
        // probabilities has already removed it.
        let logits = logits_of(&[0.5, 0.3, 0.1, 0.05, 0.03, 0.02]);
        let mut s = sampler(SamplerConfig {
            top_p: 0.75,
            ..config(5.0)
        });
        let h = histogram(&mut s, &logits, 5000);
        assert!(h[2..].iter().all(|&c| c == 0), "{h:?}");
        assert!(h[1] > 2000, "near-uniform between the two: {h:?}");
    }

    #[test]
    fn min_p_cuts_the_tail() {
        let probs = [0.4, 0.3, 0.15, 0.1, 0.05];
        let logits = logits_of(&probs);
        // Keep p >= 0.3 * 0.4 = 0.12.
        let mut s = sampler(SamplerConfig {
            min_p: 0.3,
            ..config(1.0)
        });
        let h = histogram(&mut s, &logits, 5000);
        assert!(h[3] == 0 && h[4] == 0, "{h:?}");
        assert!(h[0] > 0 && h[1] > 0 && h[2] > 0, "{h:?}");
        let mut s = sampler(SamplerConfig {
            min_p: 1.0,
            ..config(1.0)
        });
        assert_eq!(histogram(&mut s, &logits, 300)[0], 300);
    }

    #[test]
    fn low_temperature_concentrates() {
        let logits = logits_of(&[0.4, 0.35, 0.25]);
        let mut cold = sampler(config(0.02));
        let mut hot = sampler(config(1.0));
        let c = histogram(&mut cold, &logits, 2000);
        let h = histogram(&mut hot, &logits, 2000);
        assert!(c[0] > 1950, "{c:?}");
        assert!(h[0] < 1000, "{h:?}");
        // A very small temperature neither overflows nor panics.
        let mut tiny = sampler(config(f32::MIN_POSITIVE));
        assert_eq!(tiny.sample(&[1e30, 1e30, -1e30], &[]), 0);
    }

    #[test]
    fn repetition_penalty_changes_the_argmax() {
        let mut plain = sampler(config(0.0));
        let mut penalized = sampler(SamplerConfig {
            repeat_penalty: 1.2,
            repeat_last_n: 64,
            ..config(0.0)
        });
        // Positive logits are divided: 2.0 / 1.2 < 1.9.
        assert_eq!(plain.sample(&[2.0, 1.9], &[0]), 0);
        assert_eq!(penalized.sample(&[2.0, 1.9], &[0]), 1);
        // Negative ones multiplied: -1.0 * 1.2 < -1.1.
        assert_eq!(penalized.sample(&[-1.0, -1.1], &[0]), 1);
        // Once per token, however often it repeats: 2.0 / 1.2 > 1.6.
        assert_eq!(penalized.sample(&[2.0, 1.6], &[0, 0, 0, 0]), 0);
        // Only the last `repeat_last_n` tokens count.
        let mut short = sampler(SamplerConfig {
            repeat_penalty: 1.2,
            repeat_last_n: 2,
            ..config(0.0)
        });
        assert_eq!(short.sample(&[2.0, 1.9, 0.0], &[0, 2, 2]), 0);
        assert_eq!(short.sample(&[2.0, 1.9, 0.0], &[2, 0, 2]), 1);
        // Ids past the vocabulary are ignored.
        assert_eq!(penalized.sample(&[2.0, 1.9], &[7, u32::MAX]), 0);
        // A penalty below 1 rewards repeats.
        let mut reward = sampler(SamplerConfig {
            repeat_penalty: 0.5,
            repeat_last_n: 8,
            ..config(0.0)
        });
        assert_eq!(reward.sample(&[2.0, 1.9], &[1]), 1);
    }

    #[test]
    fn nan_and_infinite_logits_do_not_panic() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let configs = [
            config(0.0),
            config(1.0),
            SamplerConfig::default(),
            SamplerConfig {
                top_k: 2,
                top_p: 0.5,
                min_p: 0.2,
                repeat_penalty: 1.3,
                repeat_last_n: 4,
                ..config(0.7)
            },
        ];
        for c in configs {
            let mut s = sampler(c.clone());
            for _ in 0..20 {
                assert_eq!(s.sample(&[nan, 1.0, nan], &[0, 1]), 1, "{c:?}");
                assert_eq!(s.sample(&[0.0, inf, 3.0], &[1]), 1, "{c:?}");
                let both = s.sample(&[inf, 0.0, inf], &[]);
                assert!(both == 0 || both == 2, "{c:?}");
                assert!(s.sample(&[nan, nan, nan], &[]) < 3);
                assert!(s.sample(&[-inf, -inf], &[0]) < 2);
                assert_eq!(s.sample(&[-inf, nan, -3.0], &[]), 2, "{c:?}");
                assert!(s.sample(&[f32::MAX, f32::MAX, -f32::MAX], &[]) < 2);
            }
        }
        // Several +inf tokens share the probability.
        let mut s = sampler(config(1.0));
        let h = histogram(&mut s, &[inf, 0.0, inf], 1000);
        assert!(h[0] > 350 && h[2] > 350 && h[1] == 0, "{h:?}");
    }

    #[test]
    #[should_panic(expected = "empty vocabulary")]
    fn empty_logits_panic() {
        sampler(config(1.0)).sample(&[], &[]);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            (
                SamplerConfig {
                    temperature: f32::NAN,
                    ..config(1.0)
                },
                "temperature",
            ),
            (
                SamplerConfig {
                    temperature: f32::INFINITY,
                    ..config(1.0)
                },
                "temperature",
            ),
            (
                SamplerConfig {
                    top_p: -0.1,
                    ..config(1.0)
                },
                "top-p",
            ),
            (
                SamplerConfig {
                    top_p: 1.5,
                    ..config(1.0)
                },
                "top-p",
            ),
            (
                SamplerConfig {
                    top_p: f32::NAN,
                    ..config(1.0)
                },
                "top-p",
            ),
            (
                SamplerConfig {
                    min_p: -0.5,
                    ..config(1.0)
                },
                "min-p",
            ),
            (
                SamplerConfig {
                    min_p: f32::NAN,
                    ..config(1.0)
                },
                "min-p",
            ),
            (
                SamplerConfig {
                    repeat_penalty: 0.0,
                    ..config(1.0)
                },
                "penalty",
            ),
            (
                SamplerConfig {
                    repeat_penalty: -1.1,
                    ..config(1.0)
                },
                "penalty",
            ),
            (
                SamplerConfig {
                    repeat_penalty: f32::NAN,
                    ..config(1.0)
                },
                "penalty",
            ),
            (
                SamplerConfig {
                    repeat_penalty: f32::INFINITY,
                    ..config(1.0)
                },
                "penalty",
            ),
        ];
        for (c, word) in bad {
            let err = Sampler::new(c.clone()).unwrap_err();
            assert!(err.to_string().contains(word), "{c:?}: {err}");
        }
        assert!(Sampler::new(SamplerConfig::default()).is_ok());
        assert!(Sampler::new(SamplerConfig::greedy()).is_ok());
        assert!(matches!(
            Sampler::new(SamplerConfig { top_p: 2.0, ..config(1.0) }),
            Err(SamplerError::TopP(p)) if p == 2.0
        ));
    }
}

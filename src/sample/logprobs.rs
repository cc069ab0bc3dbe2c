//! Log-probabilities of chosen tokens and their most likely alternatives,
//! as OpenAI's `logprobs` reports them.
//!
//! They come from the model's raw logits (a log-softmax over the whole
//! vocabulary), before bias, penalties, constraint and temperature: what the
//! model thought of the token, not how the sampler chose it (vLLM's default
//! too). So for greedy decoding without bias or constraint the chosen token
//! is the first of the alternatives, with the same log-probability.

/// Most alternatives a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token's log-probability and the most likely tokens at its
/// place.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The chosen token.
    pub id: u32,
    /// Its natural log-probability.
    pub logprob: f32,
    /// The most likely tokens with theirs, most likely first (the lower id
    /// first on a tie); as many as asked for.
    pub top: Vec<(u32, f32)>,
}

/// The log-probability of `chosen` and of the `top_n` most likely tokens
/// under the softmax of `logits`. NaN logits count as minus infinity.
///
/// # Panics
/// When `chosen` is not an index of `logits`.
pub fn token_logprob(logits: &[f32], chosen: u32, top_n: usize) -> TokenLogprob {
    let clean = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
    let max = logits
        .iter()
        .map(|&l| clean(l))
        .fold(f32::NEG_INFINITY, f32::max);
    // log-sum-exp in f64: a 100k-token sum in f32 loses digits.
    let sum: f64 = logits
        .iter()
        .map(|&l| (f64::from(clean(l)) - f64::from(max)).exp())
        .sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |l: f32| (f64::from(clean(l)) - log_z) as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(top_n + 1);
    if top_n > 0 {
        // One pass keeping the best `top_n`: cheap next to the model.
        for (i, &l) in logits.iter().enumerate() {
            let l = clean(l);
            if top.len() == top_n && l <= top[top_n - 1].1 {
                continue;
            }
            let at = top.partition_point(|&(_, t)| t >= l);
            top.insert(at, (i as u32, l));
            top.truncate(top_n);
        }
    }
    TokenLogprob {
        id: chosen,
        logprob: lp(logits[chosen as usize]),
        top: top.into_iter().map(|(i, l)| (i, lp(l))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_one_and_top_is_sorted() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NAN, -1.0];
        let t = token_logprob(&logits, 2, 6);
        let total: f64 = t.top.iter().map(|&(_, l)| f64::from(l).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{t:?}");
        let ids: Vec<u32> = t.top.iter().map(|&(i, _)| i).collect();
        assert_eq!(ids, [1, 3, 2, 0, 5, 4], "ties: lower id first; NaN last");
        assert_eq!(t.top[5].1, f32::NEG_INFINITY);
        assert_eq!(t.logprob, t.top[2].1);
        // Softmax of [3, 3, 2, 1, -1]: checked against the formula.
        let z: f64 = [3.0f64, 3.0, 2.0, 1.0, -1.0].iter().map(|x| x.exp()).sum();
        assert!((f64::from(t.logprob) - (2.0 - z.ln())).abs() < 1e-6);
    }

    #[test]
    fn top_zero_gives_only_the_chosen() {
        let t = token_logprob(&[0.0, 0.0], 1, 0);
        assert!(t.top.is_empty());
        assert!((t.logprob - 0.5f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn shifting_logits_changes_nothing() {
        let a = token_logprob(&[1.0, 2.0, 0.5], 0, 2);
        let b = token_logprob(&[101.0, 102.0, 100.5], 0, 2);
        assert!((a.logprob - b.logprob).abs() < 1e-5);
        assert_eq!(a.top[0].0, b.top[0].0);
    }
}

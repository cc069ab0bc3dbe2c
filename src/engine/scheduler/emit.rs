//! What the scheduler does with a sequence's logits: choose the token (under
//! the sequence's constraint, noting its log-probability when asked), then
//! stop conditions, text out, next input.

use std::time::Instant;

use super::{After, Scheduler, Seq};
use crate::engine::{Event, Finish};
use crate::sample::logprobs::token_logprob;

impl Scheduler {
    /// Chooses the next token from `logits` and takes it.
    pub(super) fn next_token(&self, seq: &mut Seq, logits: &[f32]) -> After {
        let tok = match seq.job.out.constraint.as_mut() {
            None => seq.sampler.sample(logits, &seq.history),
            Some(c) => match c.mask() {
                Ok(mask) => seq.sampler.sample_masked(logits, &seq.history, Some(&mask)),
                Err(e) => return self.fail(seq, &e.to_string()),
            },
        };
        if let Some(n) = seq.job.out.logprobs {
            seq.pending_logprob = Some(token_logprob(logits, tok, n));
        }
        self.take_token(seq, tok)
    }

    /// Ends a sequence with an error.
    fn fail(&self, seq: &mut Seq, message: &str) -> After {
        let _ = seq.job.tx.send(Event::Error(message.to_owned()));
        After::Finished
    }

    /// Handles a sampled token: stop conditions, text out, next input.
    fn take_token(&self, seq: &mut Seq, tok: u32) -> After {
        seq.next = None;
        if seq.generated >= seq.job.req.max_tokens {
            // max_tokens 0: the prompt was read, nothing is generated.
            return self.finish(seq, Finish::Length);
        }
        if seq.job.req.stop_at_eog && self.tokenizer.is_eog(tok) {
            return self.finish(seq, Finish::Stop);
        }
        if let Some(c) = seq.job.out.constraint.as_mut() {
            if let Err(e) = c.commit(tok) {
                return self.fail(seq, &e.to_string());
            }
        }
        seq.generated += 1;
        seq.history.push(tok);
        if let Ok(mut p) = seq.job.produced.lock() {
            p.ids.push(tok);
            // Before the text that holds the token goes out.
            p.logprobs.extend(seq.pending_logprob.take());
        }
        let piece = seq.decoder.push(&self.tokenizer, tok);
        seq.held.push_str(&piece);
        let stops = &seq.job.req.stop;
        if let Some(at) = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| seq.held.find(s.as_str()))
            .min()
        {
            let before = seq.held[..at].to_string();
            seq.held.clear();
            if !before.is_empty() && seq.job.tx.send(Event::Text(before)).is_err() {
                return After::Finished;
            }
            return self.finish(seq, Finish::Stop);
        }
        // Hold back the end of the text while it could still become a stop text.
        let keep = stops
            .iter()
            .map(|s| longest_prefix_suffix(&seq.held, s))
            .max()
            .unwrap_or(0);
        let cut = seq.held.len() - keep;
        if cut > 0 {
            let out: String = seq.held.drain(..cut).collect();
            if seq.job.tx.send(Event::Text(out)).is_err() {
                return After::Finished;
            }
        }
        if seq.job.out.constraint.as_ref().is_some_and(|c| c.is_done()) {
            // Nothing but the end can follow: no step spent to sample it.
            return self.finish(seq, Finish::Stop);
        }
        if seq.generated >= seq.job.req.max_tokens {
            return self.finish(seq, Finish::Length);
        }
        seq.next = Some(tok);
        seq.ready_at = Instant::now();
        After::Continue
    }

    fn finish(&self, seq: &mut Seq, finish: Finish) -> After {
        let mut rest = std::mem::take(&mut seq.held);
        rest.push_str(&seq.decoder.finish());
        if !rest.is_empty() {
            let _ = seq.job.tx.send(Event::Text(rest));
        }
        let _ = seq.job.tx.send(Event::Done(seq.usage(finish)));
        After::Finished
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`,
/// at a character boundary.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_what_may_become_a_stop_text() {
        assert_eq!(longest_prefix_suffix("hello wor", "world"), 3);
        assert_eq!(longest_prefix_suffix("hello", "world"), 0);
        assert_eq!(
            longest_prefix_suffix("ab", "b"),
            0,
            "a whole match is not held, it is cut"
        );
        assert_eq!(longest_prefix_suffix("é", "éa"), 2);
    }
}

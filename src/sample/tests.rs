//! Tests of the sampler's filters, seeds and settings.

use super::rng::Xoshiro256;
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

#[test]
fn logit_bias_moves_the_choice() {
    let mut s = sampler(SamplerConfig {
        logit_bias: vec![(2, 5.0), (9, 100.0)],
        ..config(0.0)
    });
    // 0.5 + 5 beats 3; the id past the vocabulary is ignored.
    assert_eq!(s.sample(&[1.0, 3.0, 0.5], &[]), 2);
    // -100 bans a token in practice.
    let mut ban = sampler(SamplerConfig {
        logit_bias: vec![(1, -100.0)],
        ..config(1.0)
    });
    let h = histogram(&mut ban, &[1.0, 3.0, 0.5], 2000);
    assert_eq!(h[1], 0, "{h:?}");
}

#[test]
fn presence_and_frequency_count_generated_tokens_only() {
    // Frequency 1: each time token 0 is produced its logit drops by 1.
    let mut s = sampler(SamplerConfig {
        frequency_penalty: 1.0,
        ..config(0.0)
    });
    let logits = [3.5, 2.0, 0.0];
    // The history (a prompt full of 0s) does not count.
    let picks: Vec<u32> = (0..5).map(|_| s.sample(&logits, &[0, 0, 0, 0])).collect();
    // 3.5 > 2 → 0; 2.5 > 2 → 0; 1.5 < 2 → 1; then 1.5 vs 1.0 → 0; 0.5 vs 1 → 1.
    assert_eq!(picks, [0, 0, 1, 0, 1]);
    // Presence: once, however often.
    let mut p = sampler(SamplerConfig {
        presence_penalty: 1.0,
        ..config(0.0)
    });
    let picks: Vec<u32> = (0..4).map(|_| p.sample(&[3.5, 2.0], &[])).collect();
    assert_eq!(picks, [0, 0, 0, 0], "2.5 stays above 2");
    let mut p = sampler(SamplerConfig {
        presence_penalty: 2.0,
        ..config(0.0)
    });
    let picks: Vec<u32> = (0..3).map(|_| p.sample(&[3.5, 2.0], &[])).collect();
    assert_eq!(picks, [0, 1, 0], "after both appeared, 1.5 vs 0: 0 again");
    // Negative penalties reward repeats.
    let mut r = sampler(SamplerConfig {
        frequency_penalty: -1.0,
        ..config(0.0)
    });
    r.sample(&[0.0, 0.5], &[]);
    assert_eq!(r.sample(&[0.6, 0.5], &[]), 1, "1 was produced: 1.5 > 0.6");
}

#[test]
fn the_mask_limits_the_choice() {
    let mut mask = TokenMask::none(5);
    mask.allow(1);
    mask.allow(3);
    assert_eq!(mask.count(), 2);
    assert_eq!(mask.ids().collect::<Vec<_>>(), [1, 3]);
    let logits = [9.0, 1.0, 8.0, 2.0, 7.0];
    let mut g = sampler(config(0.0));
    assert_eq!(g.sample_masked(&logits, &[], Some(&mask)), 3);
    assert_eq!(g.sample(&logits, &[]), 0, "no mask: unchanged");
    let mut hot = sampler(config(2.0));
    for _ in 0..500 {
        let t = hot.sample_masked(&logits, &[], Some(&mask));
        assert!(t == 1 || t == 3, "{t}");
    }
    // A mask allowing nothing is ignored rather than trusted.
    let empty = TokenMask::none(5);
    assert_eq!(g.sample_masked(&logits, &[], Some(&empty)), 0);
}

#[test]
fn a_seed_reproduces_a_run_with_every_setting() {
    let logits = pseudo_random_logits(300, 11);
    let c = SamplerConfig {
        temperature: 1.2,
        presence_penalty: 0.5,
        frequency_penalty: 0.3,
        logit_bias: vec![(3, 2.0), (7, -1.0)],
        repeat_penalty: 1.1,
        repeat_last_n: 16,
        ..SamplerConfig::default()
    };
    let run = |seed: u64| {
        let mut s = sampler(SamplerConfig { seed, ..c.clone() });
        let mut hist = Vec::new();
        for _ in 0..100 {
            let t = s.sample(&logits, &hist);
            hist.push(t);
        }
        hist
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn new_settings_are_checked() {
    for (c, word) in [
        (
            SamplerConfig {
                presence_penalty: f32::NAN,
                ..config(1.0)
            },
            "presence",
        ),
        (
            SamplerConfig {
                frequency_penalty: f32::INFINITY,
                ..config(1.0)
            },
            "frequency",
        ),
        (
            SamplerConfig {
                logit_bias: vec![(4, f32::NAN)],
                ..config(1.0)
            },
            "token 4",
        ),
    ] {
        let err = Sampler::new(c).unwrap_err();
        assert!(err.to_string().contains(word), "{err}");
    }
}

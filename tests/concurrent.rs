//! Continuous batching: sequences decoded together produce exactly what they
//! produce alone (greedy), new requests join between steps, cancelled ones
//! free their slot, and a full queue refuses new work.

mod common;

use std::time::Duration;

use common::{model_path, start_worker, Worker};
use shardline::engine::{Engine, EngineOptions, Event, GenerateRequest, Prompt, SubmitError};
use shardline::plan::Strategy;
use shardline::sample::SamplerConfig;

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "The three primary colors are",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "In 1969, the first person to walk on the moon was",
    "A haiku about autumn leaves:",
];

/// The tests' engine settings: SmolLM2 over `workers` (memory plan, so
/// that each holds layers), `parallel` slots, a queue of `queue`.
fn options(workers: &[Worker], parallel: usize, queue: usize) -> EngineOptions {
    EngineOptions {
        strategy: Strategy::Memory,
        model: model_path(),
        servers: workers.iter().map(|w| w.endpoint.to_string()).collect(),
        n_ctx: 1024,
        n_batch: 256,
        threads: 1,
        progress: false,
        parallel,
        queue,
        ..EngineOptions::default()
    }
}

async fn load(workers: &[Worker], parallel: usize, queue: usize) -> Engine {
    Engine::load(options(workers, parallel, queue))
        .await
        .unwrap()
}

fn greedy(prompt: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text(prompt.to_string()),
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        stop_at_eog: false,
    }
}

async fn run(engine: &Engine, prompt: &str, max_tokens: usize) -> (String, Vec<u32>) {
    let mut s = engine.generate(greedy(prompt, max_tokens)).unwrap();
    let mut text = String::new();
    while let Some(ev) = s.next().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done(_) => {}
            Event::Error(e) => panic!("{e}"),
        }
    }
    (text, s.token_ids())
}

#[tokio::test]
async fn concurrent_sequences_match_their_solo_runs() {
    let workers = [start_worker(&[]), start_worker(&[])];
    let engine = load(&workers, 8, 16).await;
    let mut alone = Vec::new();
    for p in PROMPTS {
        alone.push(run(&engine, p, 24).await);
    }
    // All at once, and staggered so some join while others decode.
    engine.step_trace().clear();
    let mut tasks = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        let e = engine.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(15 * i as u64)).await;
            run(&e, p, 24).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        assert_eq!(
            got.1, alone[i].1,
            "prompt {:?}: tokens differ from its solo run",
            PROMPTS[i]
        );
        assert_eq!(got.0, alone[i].0);
    }
    assert_eq!(engine.metrics().active_sequences(), 0);
    // Pipelined: while one server computed a micro-batch, the other
    // computed another one.
    let spans = engine.step_trace().spans();
    let servers: std::collections::BTreeSet<&str> =
        spans.iter().map(|s| s.endpoint.as_str()).collect();
    assert_eq!(servers.len(), 2, "both servers ran steps: {servers:?}");
    let overlap = engine.step_trace().max_overlap();
    eprintln!(
        "{} step spans, longest overlap of two stages {overlap:?}",
        spans.len()
    );
    assert!(
        overlap > Duration::ZERO,
        "the two stages never computed at the same time"
    );
}

#[tokio::test]
async fn one_micro_batch_at_a_time_never_overlaps_the_stages() {
    let workers = [start_worker(&[]), start_worker(&[])];
    let engine = Engine::load(EngineOptions {
        micro_batches: 1,
        ..options(&workers, 4, 8)
    })
    .await
    .unwrap();
    let tasks: Vec<_> = PROMPTS[..4]
        .iter()
        .map(|p| {
            let e = engine.clone();
            tokio::spawn(async move { run(&e, p, 8).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let spans = engine.step_trace().spans();
    assert!(spans.len() > 8, "{} spans", spans.len());
    assert_eq!(engine.step_trace().max_overlap(), Duration::ZERO);
}

#[tokio::test]
async fn pipelined_prompt_chunks_match_the_solo_run() {
    // Small chunks, so one prompt's chunks follow each other through the
    // pipeline (several in flight at once) while another sequence decodes.
    let workers = [start_worker(&[]), start_worker(&[])];
    let engine = Engine::load(EngineOptions {
        n_batch: 32,
        // The output matrix shared by both workers: a third pipeline stage
        // whose shares take turns with the layer stages on each device.
        head_split: shardline::plan::HeadSplit::On,
        ..options(&workers, 2, 4)
    })
    .await
    .unwrap();
    assert_eq!(engine.plan().head_shares.len(), 2);
    let long = PROMPTS.join(" ").repeat(3);
    assert!(engine.tokenizer().encode(&long, true, true).len() > 4 * 32);
    let alone_long = run(&engine, &long, 12).await;
    let alone_short = run(&engine, PROMPTS[0], 40).await;
    let e = engine.clone();
    let short = tokio::spawn(async move { run(&e, PROMPTS[0], 40).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got_long = run(&engine, &long, 12).await;
    assert_eq!(got_long, alone_long, "the long prompt's output changed");
    assert_eq!(short.await.unwrap(), alone_short);
    let spans = engine.step_trace().spans();
    assert!(spans.iter().any(|s| s.endpoint.starts_with("head:")));
}

/// Workers that serve their CPU twice give each stage a spare graph slot:
/// a prompt read in chunks beside a decoding sequence runs there, so the
/// decode graph stays stored instead of going out again at every turn
/// change. Outputs equal the solo runs either way; the graphs sent during
/// the overlap are counted on plain workers and on workers with slots.
#[tokio::test]
async fn prompt_chunks_in_a_spare_slot_leave_the_decode_graph_stored() {
    async fn overlap_graphs(slots: bool) -> f64 {
        let args: &[&str] = if slots { &["--device", "CPU,CPU"] } else { &[] };
        let workers = [start_worker(args), start_worker(args)];
        let engine = Engine::load(EngineOptions {
            n_batch: 32,
            ..options(&workers, 2, 4)
        })
        .await
        .unwrap();
        let spare: Vec<Option<u32>> = engine.plan().stages.iter().map(|s| s.spare_slot).collect();
        assert_eq!(spare, vec![slots.then_some(1); 2]);
        assert!(engine.plan().head_shares.is_empty());
        let long = PROMPTS.join(" ").repeat(3);
        assert!(engine.tokenizer().encode(&long, true, true).len() > 4 * 32);
        let alone_long = run(&engine, &long, 12).await;
        let alone_short = run(&engine, PROMPTS[0], 40).await;
        let sent = |e: &Engine| -> f64 {
            e.metrics_text()
                .lines()
                .filter(|l| l.starts_with("shardline_graphs_sent_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let before = sent(&engine);
        let e = engine.clone();
        let short = tokio::spawn(async move { run(&e, PROMPTS[0], 40).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got_long = run(&engine, &long, 12).await;
        assert_eq!(got_long, alone_long, "the long prompt's output changed");
        assert_eq!(short.await.unwrap(), alone_short);
        sent(&engine) - before
    }
    let plain = overlap_graphs(false).await;
    let spare = overlap_graphs(true).await;
    eprintln!("graphs sent while a prompt was read beside a decode: {plain} on plain workers, {spare} with spare slots");
    // With slots only a new shape (a chunk's KV length, the last chunk)
    // sends a graph; without, every turn change does too.
    assert!(spare * 2.0 <= plain, "{spare} with slots, {plain} without");
}

/// Several answers to one prompt (an API request's `n`): the prompt is
/// read once and the other sequences copy its KV cells, on both workers
/// and on the coordinator's layer, in the pipeline ahead of their first
/// token; every answer is what its sampler gives alone. A group larger
/// than the engine's slots reads the prompt once per answer instead.
#[tokio::test]
async fn choices_of_one_prompt_read_it_once_and_match_their_solo_runs() {
    let workers = [start_worker(&[]), start_worker(&[])];
    let engine = Engine::load(EngineOptions {
        // Several chunks: the copy waits for the last one.
        n_batch: 16,
        local_layers: 1,
        ..options(&workers, 4, 16)
    })
    .await
    .unwrap();
    assert!(engine.plan().stages.len() >= 3, "{}", engine.plan());
    let prompt = PROMPTS.join(" ");
    let n_prompt = engine.tokenizer().encode(&prompt, true, true).len() as u64;
    assert!(n_prompt > 2 * 16);
    let sampled = |seed: u64| GenerateRequest {
        sampler: SamplerConfig {
            temperature: 1.0,
            seed,
            ..SamplerConfig::greedy()
        },
        ..greedy(&prompt, 20)
    };
    async fn tokens(mut s: shardline::engine::TokenStream) -> Vec<u32> {
        while let Some(ev) = s.next().await {
            if let Event::Error(e) = ev {
                panic!("{e}");
            }
        }
        s.token_ids()
    }
    let mut alone = Vec::new();
    for seed in 1..=5 {
        alone.push(tokens(engine.generate(sampled(seed)).unwrap()).await);
    }
    let distinct: std::collections::BTreeSet<_> = alone.iter().collect();
    assert!(distinct.len() > 1, "the seeds give different answers");

    for n in [3, 5] {
        let before = engine.metrics().prompt_tokens();
        let reqs = (1..=n)
            .map(|seed| (sampled(seed), Default::default()))
            .collect();
        let streams = engine.generate_many(reqs).unwrap();
        for (i, s) in streams.into_iter().enumerate() {
            assert_eq!(
                tokens(s).await,
                alone[i],
                "n = {n}: answer {i} differs from its solo run"
            );
        }
        let read = engine.metrics().prompt_tokens() - before;
        // Five answers do not fit four slots at once: each reads it.
        let times = if n <= 4 { 1 } else { n };
        assert_eq!(read, times * n_prompt, "n = {n}: prompt tokens read");
    }

    // The first answer's client goes away before its prompt is read (this
    // runtime has one thread: the scheduler has not run yet): the others
    // read the prompt themselves and still answer as they would alone.
    let before = engine.metrics().prompt_tokens();
    let reqs = (1..=3)
        .map(|seed| (sampled(seed), Default::default()))
        .collect();
    let mut streams = engine.generate_many(reqs).unwrap().into_iter();
    drop(streams.next());
    for (i, s) in streams.enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(60), tokens(s))
            .await
            .expect("an answer whose leader left still finishes");
        assert_eq!(got, alone[i + 1], "answer {} after the first left", i + 1);
    }
    let read = engine.metrics().prompt_tokens() - before;
    assert!(
        read >= 2 * n_prompt,
        "each remaining answer read the prompt: {read}"
    );
    assert_eq!(engine.metrics().active_sequences(), 0);
}

#[tokio::test]
async fn dropped_stream_frees_its_sequence_and_full_queue_refuses() {
    let workers = [start_worker(&[])];
    let engine = load(&workers, 1, 1).await;
    let mut first = engine
        .generate(greedy("Tell me a long story about dragons.", 400))
        .unwrap();
    // Wait until it is generating.
    assert!(matches!(first.next().await, Some(Event::Text(_))));
    let second = engine.generate(greedy("hello", 4)).unwrap();
    // One running, one waiting: the queue (1) is full.
    let third = engine.generate(greedy("again", 4));
    assert!(matches!(third, Err(SubmitError::QueueFull)), "{third:?}");
    drop(first);
    // The waiting request gets the freed slot and finishes well before the
    // 400 tokens of the dropped one could have.
    let done = tokio::time::timeout(Duration::from_secs(20), second.collect_text()).await;
    let (_, usage) = done
        .expect("the queued request ran after the cancel")
        .unwrap();
    assert_eq!(usage.completion_tokens, 4);
    assert_eq!(engine.metrics().queue_depth(), 0);
}

#[tokio::test]
async fn stop_texts_end_the_generation_and_are_not_returned() {
    let workers = [start_worker(&[])];
    let engine = load(&workers, 1, 4).await;
    let (full, _) = run(&engine, "The capital of France is", 24).await;
    // Stop at the second word of the greedy continuation.
    let word = full
        .split_whitespace()
        .nth(1)
        .expect("a few words")
        .to_string();
    let mut req = greedy("The capital of France is", 24);
    req.stop = vec![word.clone()];
    let (text, usage) = engine.generate(req).unwrap().collect_text().await.unwrap();
    assert!(
        !text.contains(&word),
        "{text:?} still contains the stop text {word:?}"
    );
    assert!(
        full.starts_with(&text),
        "{text:?} is not a prefix of {full:?}"
    );
    assert_eq!(usage.finish, shardline::engine::Finish::Stop);
}

#[tokio::test]
async fn builder_and_chat_render_the_template() {
    let workers = [start_worker(&[])];
    let engine = Engine::builder(model_path())
        .servers(workers.iter().map(|w| w.endpoint.to_string()))
        .ctx(512)
        .batch(128)
        .threads(1)
        .build()
        .await
        .unwrap();
    assert_eq!(engine.ctx_per_seq(), 512);
    let msgs = [shardline::chat::ChatMessage::new("user", "What is 2+2?")];
    let via_chat = engine
        .chat(&msgs, greedy("", 12))
        .unwrap()
        .collect_text()
        .await
        .unwrap()
        .0;
    let rendered = engine.render_chat(&msgs).unwrap();
    assert!(
        rendered.contains("What is 2+2?") && rendered.contains("<|im_start|>assistant"),
        "{rendered}"
    );
    let (direct, _) = run(&engine, &rendered, 12).await;
    assert_eq!(via_chat, direct);
}

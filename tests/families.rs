//! Every model family beyond llama, each on a small synthetic GGUF
//! (`common::families`): shardline's greedy tokens (and first logits) must
//! be llama.cpp's with all layers on one worker, split over two workers,
//! and with a layer on the coordinator; and through the whole engine.

mod common;

use common::families::*;
use common::start_worker;
use common::synth::{self, id_prompts, remote_stage};
use shardline::exec::local::LocalStage;
use shardline::exec::pipeline::{Pipeline, StageRunner};
use shardline::exec::Embedder;
use shardline::gguf::Gguf;
use shardline::model::LlamaConfig;

/// llama.cpp's output against shardline's in the three placements.
async fn matches_llama_cpp(f: Family) {
    matches_llama_cpp_with(f, "e2e", &Extra::default()).await;
}

/// [`matches_llama_cpp`] for the family's model with `extra` keys or
/// tensors; returns llama.cpp's greedy tokens.
async fn matches_llama_cpp_with(f: Family, name: &str, extra: &Extra) -> Vec<Vec<u32>> {
    let m = write_model(f, name, extra);
    let prompts = id_prompts(N_VOCAB, &[(1, 12), (2, 40)]);
    let want = synth::reference(&m.0, &prompts, N_CTX, N_GEN);
    let g = Gguf::open(&m.0).unwrap();
    // One sequence of N_CTX cells, as llama.cpp's context here.
    let cfg = LlamaConfig::from_gguf(&g).unwrap().for_seq_context(N_CTX);
    assert_eq!(cfg.arch.name, f.description());
    let workers = [start_worker(&[]), start_worker(&[])];
    let pipeline = |stages: Vec<StageRunner>| {
        Pipeline::new(cfg.clone(), Embedder::new(&g, &cfg).unwrap(), stages, N_CTX)
    };

    let all = remote_stage(&workers[0], &m.0, &g, &cfg, 0..N_LAYER, true, N_CTX).await;
    let mut p = pipeline(vec![StageRunner::Remote(all.into())]);
    synth::check_against(&mut p, &prompts, &want, &format!("{f:?}: one worker")).await;
    drop(p);

    let a = remote_stage(&workers[0], &m.0, &g, &cfg, 0..1, false, N_CTX).await;
    let b = remote_stage(&workers[1], &m.0, &g, &cfg, 1..N_LAYER, true, N_CTX).await;
    let mut p = pipeline(vec![
        StageRunner::Remote(a.into()),
        StageRunner::Remote(b.into()),
    ]);
    synth::check_against(&mut p, &prompts, &want, &format!("{f:?}: two workers")).await;
    drop(p);

    let local = LocalStage::new(&g, &cfg, 0..2, false, N_CTX, 1).unwrap();
    let b = remote_stage(&workers[1], &m.0, &g, &cfg, 2..N_LAYER, true, N_CTX).await;
    let mut p = pipeline(vec![
        StageRunner::Local(local),
        StageRunner::Remote(b.into()),
    ]);
    synth::check_against(&mut p, &prompts, &want, &format!("{f:?}: local layers")).await;
    want.into_iter().map(|(toks, _)| toks).collect()
}

#[tokio::test]
async fn qwen2_matches_llama_cpp() {
    matches_llama_cpp(Family::Qwen2).await;
}

#[tokio::test]
async fn qwen3_matches_llama_cpp() {
    matches_llama_cpp(Family::Qwen3).await;
}

#[tokio::test]
async fn phi3_matches_llama_cpp() {
    matches_llama_cpp(Family::Phi3).await;
}

/// YaRN (Qwen2.5's long-context scaling): a context factor of 4 over an
/// original context of 64.
#[tokio::test]
async fn qwen2_yarn_matches_llama_cpp() {
    let yarn = Extra {
        kv: vec![
            ("rope.scaling.type", "yarn".into()),
            ("rope.scaling.factor", 4.0f32.into()),
            ("rope.scaling.original_context_length", 64u32.into()),
        ],
        ..Extra::default()
    };
    let with = matches_llama_cpp_with(Family::Qwen2, "yarn", &yarn).await;
    // Without this, matching llama.cpp would say nothing about YaRN.
    let plain = write_model(Family::Qwen2, "no-yarn", &Extra::default());
    let prompts = id_prompts(N_VOCAB, &[(1, 12), (2, 40)]);
    let without: Vec<Vec<u32>> = synth::reference(&plain.0, &prompts, N_CTX, N_GEN)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_ne!(with, without, "YaRN changes llama.cpp's tokens");
}

/// LongRoPE (Phi-3's long-context models): the long factors when the
/// sequence's context (N_CTX) exceeds the original one, else the short.
#[tokio::test]
async fn phi3_long_rope_matches_llama_cpp() {
    let half = Family::Phi3.head_dim() / 2;
    let long_rope = |orig: u32| Extra {
        kv: vec![
            ("rope.scaling.attn_factor", 1.19f32.into()),
            ("rope.scaling.original_context_length", orig.into()),
        ],
        tensors: vec![
            ("rope_factors_long.weight", half),
            ("rope_factors_short.weight", half),
        ],
        ..Extra::default()
    };
    let long = matches_llama_cpp_with(Family::Phi3, "longrope-long", &long_rope(N_CTX / 2)).await;
    let short = matches_llama_cpp_with(Family::Phi3, "longrope-short", &long_rope(N_CTX)).await;
    assert_ne!(long, short, "the long factors change llama.cpp's tokens");
}

#[tokio::test]
async fn mixtral_matches_llama_cpp() {
    matches_llama_cpp(Family::Mixtral).await;
}

#[tokio::test]
async fn qwen3moe_matches_llama_cpp() {
    matches_llama_cpp(Family::Qwen3Moe).await;
}

#[tokio::test]
async fn gemma3_matches_llama_cpp() {
    matches_llama_cpp(Family::Gemma3).await;
}

#[test]
fn gemma3_window_matters() {
    let m = write_model(Family::Gemma3, "window", &Extra::default());
    let g = Gguf::open(&m.0).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let w = cfg.swa.as_ref().expect("windowed layers");
    assert_eq!(
        (w.window, w.layers.as_slice()),
        (WINDOW, &[true, false, true][..])
    );
    assert_eq!(cfg.rope_for(0).freq_base, 10_000.0);
    assert_eq!(cfg.rope_for(1).freq_base, 1_000_000.0);

    // Without this, matching llama.cpp would say nothing about the window.
    let wide = write_model(
        Family::Gemma3,
        "wide-window",
        &Extra {
            kv: vec![("attention.sliding_window", 4096u32.into())],
            ..Extra::default()
        },
    );
    let prompts = id_prompts(N_VOCAB, &[(2, 40)]);
    let narrow = synth::reference(&m.0, &prompts, N_CTX, N_GEN);
    let wide = synth::reference(&wide.0, &prompts, N_CTX, N_GEN);
    assert_ne!(
        narrow[0].0, wide[0].0,
        "the window changes llama.cpp's tokens"
    );
}

/// The whole engine (measure, plan, upload, scheduler, two workers it
/// starts itself, a layer on the coordinator) gives llama.cpp's tokens.
async fn engine_matches_llama_cpp(f: Family) {
    engine_matches_llama_cpp_with(f, "engine", Extra::default(), 1).await;
}

/// [`engine_matches_llama_cpp`] for the family's model with `extra` keys
/// or tensors, asking for `choices` answers to the one prompt at once
/// (each in a sequence slot of `N_CTX` cells; all but the first copy the
/// first one's prompt cells), each of which must be llama.cpp's.
async fn engine_matches_llama_cpp_with(f: Family, name: &str, extra: Extra, choices: usize) {
    use shardline::engine::{Engine, Event, GenerateRequest, Prompt};
    // The same weights without the vocabulary: llama.cpp's reference.
    let plain = write_model(f, &format!("{name}-ref"), &extra);
    let m = write_model(
        f,
        name,
        &Extra {
            vocab: true,
            ..extra
        },
    );
    let prompts = id_prompts(N_VOCAB, &[(2, 40)]);
    let want = synth::reference(&plain.0, &prompts, N_CTX, N_GEN);
    let engine = Engine::builder(&m.0)
        .worker_exe(env!("CARGO_BIN_EXE_shardline"))
        .ctx(N_CTX * choices as u32)
        .parallel(choices)
        .batch(32)
        .local_layers(1)
        .threads(1)
        .build()
        .await
        .unwrap_or_else(|e| panic!("{f:?}: {e}"));
    eprintln!("{f:?}:\n{}", engine.plan());
    let req = || GenerateRequest {
        max_tokens: N_GEN,
        stop_at_eog: false,
        ..GenerateRequest::new(Prompt::Tokens(prompts[0].clone()))
    };
    let reqs = (0..choices).map(|_| (req(), Default::default())).collect();
    let streams = engine.generate_many(reqs).unwrap();
    // The engine leaves end-of-generation tokens out of its list.
    let want: Vec<u32> = want[0].0.iter().copied().filter(|&t| t != 2).collect();
    for (i, mut stream) in streams.into_iter().enumerate() {
        while let Some(ev) = stream.next().await {
            if let Event::Error(e) = ev {
                panic!("{f:?}: {e}");
            }
        }
        assert_eq!(
            stream.token_ids(),
            want,
            "{f:?}: the engine's tokens, choice {i}"
        );
    }
    let read = engine.metrics().prompt_tokens();
    assert_eq!(
        read,
        prompts[0].len() as u64,
        "{f:?}: the prompt is read once"
    );
}

/// LongRoPE through the engine: its one sequence has `--ctx` cells, more
/// than the original context, so llama.cpp reads the long factors; the
/// engine must choose them from its own slot size
/// (`phi3_long_rope_matches_llama_cpp` shows the two sets give different
/// tokens).
#[tokio::test]
async fn engine_runs_phi3_long_rope_as_llama_cpp_does() {
    let half = Family::Phi3.head_dim() / 2;
    let long_rope = Extra {
        kv: vec![
            ("rope.scaling.attn_factor", 1.19f32.into()),
            ("rope.scaling.original_context_length", (N_CTX / 2).into()),
        ],
        tensors: vec![
            ("rope_factors_long.weight", half),
            ("rope_factors_short.weight", half),
        ],
        ..Extra::default()
    };
    engine_matches_llama_cpp_with(Family::Phi3, "engine-longrope", long_rope, 1).await;
}

/// Three answers to one prompt on Gemma 3: the two that copy the first
/// one's prompt cells (and, for its windowed layers, their positions) on
/// both workers and the coordinator answer as llama.cpp does.
#[tokio::test]
async fn engine_gemma3_choices_share_the_prompt() {
    engine_matches_llama_cpp_with(Family::Gemma3, "engine-choices", Extra::default(), 3).await;
}

#[tokio::test]
async fn engine_runs_qwen3moe_as_llama_cpp_does() {
    engine_matches_llama_cpp(Family::Qwen3Moe).await;
}

#[tokio::test]
async fn engine_runs_gemma3_as_llama_cpp_does() {
    engine_matches_llama_cpp(Family::Gemma3).await;
}

/// A mixture-of-experts model whose weights (experts included) do not fit
/// one worker's memory cap runs split over two such workers, with
/// llama.cpp's tokens. The cap comes from the plan's own figures for the
/// model on these workers: less than the weights of every layer and the
/// output, more than each of two devices needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moe_too_large_for_one_worker_runs_split() {
    use shardline::engine::{Engine, EngineError, EngineOptions, Event, GenerateRequest, Prompt};
    use shardline::memcap::{apply_caps, MemCap};
    use shardline::plan::{plan, PlanError, PlanOptions, Strategy};
    let f = Family::Qwen3Moe;
    let vocab = Extra {
        vocab: true,
        ..Extra::default()
    };
    let m = write_model(f, "too-large", &vocab);
    let plain = write_model(f, "too-large-ref", &Extra::default());
    let workers = [start_worker(&[]), start_worker(&[])];
    let endpoints: Vec<String> = workers.iter().map(|w| w.endpoint.to_string()).collect();
    let batch = 32;
    // The engine's planning options for these settings.
    let popts = PlanOptions {
        n_ctx: N_CTX,
        n_batch: batch,
        strategy: Strategy::Memory,
        ..PlanOptions::default()
    };
    let g = Gguf::open(&m.0).unwrap();
    let cost = shardline::graph::measure::measured_cost(&g, &popts).unwrap();
    let reports =
        shardline::cluster::probe_all(&endpoints, shardline::rpc::ClientOptions::default())
            .await
            .unwrap();
    let devices = shardline::cluster::devices_from_reports(&reports);
    let one = plan(&cost, &devices[..1], &popts).unwrap_or_else(|e| panic!("{e}"));
    let two = plan(&cost, &devices, &popts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(two.stages.len(), 2, "{two}");
    let all = one.stages[0].needed_bytes();
    let each = two.stages.iter().map(|s| s.needed_bytes()).max().unwrap();
    let weights: u64 = one.stages[0].weight_bytes + one.stages[0].output_bytes;
    eprintln!("one device needs {all} B (weights and output {weights} B), two need {each} B each");
    // Halfway between what each of two devices needs and the weights
    // alone (less than `all`): the cap is what the device has, the reserve
    // kept.
    assert!(each < weights, "{two}");
    let usable = each + (weights - each) / 2;
    let cap = MemCap {
        endpoint: None,
        bytes: usable + popts.reserve,
    };
    let mut capped = devices.clone();
    apply_caps(&mut capped, std::slice::from_ref(&cap));
    match plan(&cost, &capped[..1], &popts) {
        Err(PlanError::DoesNotFit { needed, .. }) => assert_eq!(needed, all),
        other => panic!("one capped worker: {other:?}"),
    }

    let load = |servers: Vec<String>| {
        Engine::load(EngineOptions {
            strategy: Strategy::Memory,
            model: m.0.clone(),
            servers,
            n_ctx: N_CTX,
            n_batch: batch,
            threads: 1,
            progress: false,
            mem_caps: vec![cap.clone()],
            ..EngineOptions::default()
        })
    };
    match load(endpoints[..1].to_vec()).await {
        Err(EngineError::Plan(PlanError::DoesNotFit { needed, .. })) => assert_eq!(needed, all),
        Err(e) => panic!("one capped worker: {e}"),
        Ok(e) => panic!("one capped worker took the model:\n{}", e.plan()),
    }
    let engine = load(endpoints.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let p = engine.plan().clone();
    eprintln!("{p}");
    assert_eq!(p.stages.len(), 2, "{p}");
    for (s, ep) in p.stages.iter().zip(&endpoints) {
        match &s.target {
            shardline::plan::Target::Remote { endpoint, .. } => assert_eq!(endpoint, ep, "{p}"),
            t => panic!("a stage on {t:?}: {p}"),
        }
        assert!(s.n_layers() > 0 && s.needed_bytes() <= usable, "{p}");
    }

    let prompts = id_prompts(N_VOCAB, &[(2, 40)]);
    let want = synth::reference(&plain.0, &prompts, N_CTX, N_GEN);
    let req = GenerateRequest {
        max_tokens: N_GEN,
        stop_at_eog: false,
        ..GenerateRequest::new(Prompt::Tokens(prompts[0].clone()))
    };
    let mut stream = engine.generate(req).unwrap();
    while let Some(ev) = stream.next().await {
        if let Event::Error(e) = ev {
            panic!("{e}");
        }
    }
    let want: Vec<u32> = want[0].0.iter().copied().filter(|&t| t != 2).collect();
    assert_eq!(stream.token_ids(), want, "the split MoE's tokens");
}

/// A copy of KV cells that overlaps its source, copies nothing, runs past
/// the cache or lands on taken cells is refused before any stage sees it;
/// a good one claims its destination cells and comes back with no logits.
#[tokio::test]
async fn bad_cell_copies_are_refused() {
    use shardline::exec::pipeline::DecodeError;
    use shardline::kv::Cell;
    let m = write_model(Family::Qwen2, "copies", &Extra::default());
    let g = Gguf::open(&m.0).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let size = 64usize;
    let mut p = Pipeline::new(
        cfg.clone(),
        Embedder::new(&g, &cfg).unwrap(),
        vec![],
        size as u32,
    );
    let cells =
        |seq: u32, n: usize| -> Vec<Cell> { (0..n as u32).map(|pos| Cell { seq, pos }).collect() };
    let bad = |r: Result<u64, DecodeError>| matches!(r, Err(DecodeError::BadBatch(_)));
    assert!(bad(p.submit_copy(0, &[(2, cells(1, 4))])), "overlap");
    assert!(bad(p.submit_copy(0, &[(8, Vec::new())])), "nothing");
    assert!(
        bad(p.submit_copy(size - 2, &[(0, cells(1, 4))])),
        "past the cache"
    );
    assert_eq!(p.kv().used(), 0, "a refused copy claims nothing");

    let tag = p
        .submit_copy(0, &[(16, cells(1, 4)), (32, cells(2, 4))])
        .unwrap();
    assert_eq!(p.kv().used(), 8);
    assert_eq!(p.kv().get(17), Some(Cell { seq: 1, pos: 1 }));
    let (done, out) = p.next_done().await.unwrap();
    assert_eq!((done, out.unwrap()), (tag, Vec::new()));
    let taken = p.submit_copy(0, &[(48, cells(3, 4)), (16, cells(1, 4))]);
    assert!(matches!(taken, Err(DecodeError::CacheFull(_))), "{taken:?}");
    assert_eq!(
        p.kv().used(),
        8,
        "the first half of a refused copy is released"
    );
}

//! Every model family beyond llama, each on a small synthetic GGUF written
//! with the project's writer: random weights in F32, F16 and Q8_0, the
//! family's real key and tensor names and shapes, three layers. shardline's
//! greedy tokens (and first logits) must be llama.cpp's with all layers on
//! one worker, split over two workers, and with a layer on the coordinator.
//! And every refusal names what it refuses, on one line.

mod common;

use common::start_worker;
use common::synth::{self, add, id_prompts, norm, normal, remote_stage, TempModel};
use shardline::exec::local::LocalStage;
use shardline::exec::pipeline::{Pipeline, StageRunner};
use shardline::exec::Embedder;
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::{GgmlType, Gguf, Value};
use shardline::model::{LlamaConfig, ModelError};

const N_LAYER: u32 = 3;
const N_EMBD: usize = 128;
const N_FF: usize = 256;
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
const N_VOCAB: usize = 256;
const N_CTX: u32 = 256;
const N_GEN: usize = 16;
/// Gemma 3's window: shorter than the 40-token prompt.
const WINDOW: u32 = 16;

/// A family under test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Family {
    /// Q/K/V biases.
    Qwen2,
    /// Per-head Q/K norms; heads wider than `n_embd / n_head`.
    Qwen3,
    /// Fused QKV and gate-up; queries scaled before attention.
    Phi3,
    /// A llama file with experts.
    Mixtral,
    /// Qwen3's attention with experts narrower than `feed_forward_length`.
    Qwen3Moe,
    /// Scaled embedding, pre- and post-norms, GELU, Q/K norms, windowed
    /// layers (0 and 2) with their own RoPE base between global ones.
    Gemma3,
}

impl Family {
    fn arch(self) -> &'static str {
        match self {
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Phi3 => "phi3",
            Family::Mixtral => "llama",
            Family::Qwen3Moe => "qwen3moe",
            Family::Gemma3 => "gemma3",
        }
    }

    fn head_dim(self) -> usize {
        match self {
            // Qwen3 sets `key_length` (e.g. 128 with a width of 1024 and 16
            // heads): a head wider than the width per head.
            Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3 => 64,
            _ => N_EMBD / N_HEAD,
        }
    }

    /// The name of its description in `shardline::arch`.
    fn description(self) -> &'static str {
        match self {
            Family::Mixtral => "mixtral",
            f => f.arch(),
        }
    }

    fn qk_norm(self) -> bool {
        matches!(self, Family::Qwen3 | Family::Qwen3Moe | Family::Gemma3)
    }

    /// Experts per layer and experts per token.
    fn experts(self) -> Option<(usize, usize)> {
        match self {
            Family::Mixtral => Some((4, 2)),
            Family::Qwen3Moe => Some((6, 3)),
            _ => None,
        }
    }

    /// Width of each expert's feed-forward layer.
    fn n_ff_exp(self) -> usize {
        match self {
            Family::Qwen3Moe => 128,
            _ => N_FF,
        }
    }
}

/// Extra keys or tensors a refusal test adds.
#[derive(Default)]
struct Extra {
    kv: Vec<(&'static str, Value)>,
    tensors: Vec<(&'static str, usize)>,
    skip: Option<&'static str>,
    /// A SentencePiece vocabulary of `N_VOCAB` tokens instead of none, for
    /// the engine, which needs a tokenizer even for token prompts.
    vocab: bool,
}

/// Writes the family's synthetic model.
fn write_model(f: Family, name: &str, extra: &Extra) -> TempModel {
    use GgmlType::{F16, F32, Q8_0};
    let a = f.arch();
    let key = |s: &str| format!("{a}.{s}");
    let hd = f.head_dim();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", a)
        .add_kv("general.name", format!("shardline synthetic {a}"))
        .add_kv(key("block_count"), N_LAYER)
        .add_kv(key("context_length"), 512u32)
        .add_kv(key("embedding_length"), N_EMBD as u32)
        .add_kv(key("feed_forward_length"), N_FF as u32)
        .add_kv(key("attention.head_count"), N_HEAD as u32)
        .add_kv(key("attention.head_count_kv"), N_HEAD_KV as u32)
        .add_kv(key("rope.freq_base"), 1_000_000f32)
        .add_kv(key("attention.layer_norm_rms_epsilon"), 1e-6f32)
        .add_kv(key("vocab_size"), N_VOCAB as u32)
        // No tokenizer: llama.cpp makes N_VOCAB dummy tokens; prompts are ids.
        .add_kv("tokenizer.ggml.model", "none");
    if f.qk_norm() {
        w.add_kv(key("attention.key_length"), hd as u32)
            .add_kv(key("attention.value_length"), hd as u32);
    }
    if f == Family::Gemma3 {
        // A window the longer prompt outgrows; a period of 2 makes layers
        // 0 and 2 windowed and layer 1 global.
        w.add_kv(key("attention.sliding_window"), WINDOW)
            .add_kv(key("attention.sliding_window_pattern"), 2u32)
            .add_kv(key("rope.freq_base_swa"), 10_000f32);
    }
    if let Some((n, used)) = f.experts() {
        w.add_kv(key("expert_count"), n as u32)
            .add_kv(key("expert_used_count"), used as u32);
        if f == Family::Qwen3Moe {
            w.add_kv(key("expert_feed_forward_length"), f.n_ff_exp() as u32);
        }
    }
    if extra.vocab {
        let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
        tokens.extend((3..N_VOCAB).map(|i| format!("t{i}")));
        let types: Vec<i32> = (0..N_VOCAB as i32)
            .map(|i| if i < 3 { 3 } else { 1 })
            .collect();
        w.add_kv("tokenizer.ggml.model", "llama")
            .add_kv(
                "tokenizer.ggml.tokens",
                tokens.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .add_kv("tokenizer.ggml.scores", vec![0f32; N_VOCAB])
            .add_kv("tokenizer.ggml.token_type", types);
    }
    for (k, v) in &extra.kv {
        w.add_kv(key(k), v.clone());
    }

    let (e, ff, v) = (N_EMBD, N_FF, N_VOCAB);
    let (q, kv) = (hd * N_HEAD, hd * N_HEAD_KV);
    let mut put = |name: &str, ty: GgmlType, dims: &[usize], values: Vec<f32>| {
        if extra.skip != Some(name) {
            add(&mut w, name, ty, dims, values);
        }
    };
    put(
        "token_embd.weight",
        Q8_0,
        &[e, v],
        normal("token_embd.weight", e * v, 1.0),
    );
    put(
        "output_norm.weight",
        F32,
        &[e],
        norm("output_norm.weight", e),
    );
    // A separate output matrix: tied to an embedding this large, the
    // logits would mostly repeat the input token (the SmolLM2 tests cover
    // tied outputs).
    put(
        "output.weight",
        Q8_0,
        &[e, v],
        normal("output.weight", e * v, 0.1),
    );
    // Matrices: (suffix, dims, sd). Types rotate over F16, Q8_0 and F32 by
    // layer and by matrix, so each layer mixes them.
    let mut mats: Vec<(&str, Vec<usize>, f32)> = match f {
        Family::Phi3 => vec![("attn_qkv", vec![e, q + 2 * kv], 0.12)],
        _ => vec![
            ("attn_q", vec![e, q], 0.12),
            ("attn_k", vec![e, kv], 0.12),
            ("attn_v", vec![e, kv], 0.1),
        ],
    };
    mats.push(("attn_output", vec![q, e], 0.1));
    match (f, f.experts()) {
        (Family::Phi3, _) => mats.push(("ffn_up", vec![e, 2 * ff], 0.1)),
        (_, Some((n, _))) => {
            let fe = f.n_ff_exp();
            mats.push(("ffn_gate_inp", vec![e, n], 0.3));
            mats.push(("ffn_gate_exps", vec![e, fe, n], 0.1));
            mats.push(("ffn_up_exps", vec![e, fe, n], 0.1));
            mats.push(("ffn_down_exps", vec![fe, e, n], 0.1));
        }
        _ => {
            mats.push(("ffn_gate", vec![e, ff], 0.1));
            mats.push(("ffn_up", vec![e, ff], 0.1));
        }
    }
    if f.experts().is_none() {
        mats.push(("ffn_down", vec![ff, e], 0.1));
    }
    let types = [F16, Q8_0, F32];
    for il in 0..N_LAYER as usize {
        let norms: &[&str] = match f {
            Family::Gemma3 => &[
                "attn_norm",
                "ffn_norm",
                "post_attention_norm",
                "post_ffw_norm",
            ],
            _ => &["attn_norm", "ffn_norm"],
        };
        for n in norms {
            let name = format!("blk.{il}.{n}.weight");
            put(&name, F32, &[e], norm(&name, e));
        }
        for (i, (m, dims, sd)) in mats.iter().enumerate() {
            let name = format!("blk.{il}.{m}.weight");
            let ty = types[(il + i) % types.len()];
            put(&name, ty, dims, normal(&name, dims.iter().product(), *sd));
        }
        match f {
            Family::Qwen2 => {
                for (m, n) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                    let name = format!("blk.{il}.{m}.bias");
                    put(&name, F32, &[n], normal(&name, n, 0.5));
                }
            }
            _ if f.qk_norm() => {
                for m in ["attn_q_norm", "attn_k_norm"] {
                    let name = format!("blk.{il}.{m}.weight");
                    put(&name, F32, &[hd], norm(&name, hd));
                }
            }
            _ => {}
        }
    }
    for (name, n) in &extra.tensors {
        put(name, F32, &[*n], normal(name, *n, 0.1));
    }
    TempModel::write(&mut w, &format!("{a}-{name}"))
}

/// llama.cpp's output against shardline's in the three placements.
async fn matches_llama_cpp(f: Family) {
    let m = write_model(f, "e2e", &Extra::default());
    let prompts = id_prompts(N_VOCAB, &[(1, 12), (2, 40)]);
    let want = synth::reference(&m.0, &prompts, N_CTX, N_GEN);
    let g = Gguf::open(&m.0).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
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
    use shardline::engine::{Engine, Event, GenerateRequest, Prompt};
    let m = write_model(
        f,
        "engine",
        &Extra {
            vocab: true,
            ..Extra::default()
        },
    );
    // The same weights without the vocabulary: llama.cpp's reference.
    let plain = write_model(f, "engine-ref", &Extra::default());
    let prompts = id_prompts(N_VOCAB, &[(2, 40)]);
    let want = synth::reference(&plain.0, &prompts, N_CTX, N_GEN);
    let engine = Engine::builder(&m.0)
        .worker_exe(env!("CARGO_BIN_EXE_shardline"))
        .ctx(N_CTX)
        .batch(32)
        .local_layers(1)
        .threads(1)
        .build()
        .await
        .unwrap_or_else(|e| panic!("{f:?}: {e}"));
    eprintln!("{f:?}:\n{}", engine.plan());
    let req = GenerateRequest {
        max_tokens: N_GEN,
        stop_at_eog: false,
        ..GenerateRequest::new(Prompt::Tokens(prompts[0].clone()))
    };
    let mut stream = engine.generate(req).unwrap();
    while let Some(ev) = stream.next().await {
        if let Event::Error(e) = ev {
            panic!("{f:?}: {e}");
        }
    }
    // The engine leaves end-of-generation tokens out of its list.
    let want: Vec<u32> = want[0].0.iter().copied().filter(|&t| t != 2).collect();
    assert_eq!(stream.token_ids(), want, "{f:?}: the engine's tokens");
}

#[tokio::test]
async fn engine_runs_qwen3moe_as_llama_cpp_does() {
    engine_matches_llama_cpp(Family::Qwen3Moe).await;
}

#[tokio::test]
async fn engine_runs_gemma3_as_llama_cpp_does() {
    engine_matches_llama_cpp(Family::Gemma3).await;
}

#[test]
fn every_family_measures_its_stage_graphs() {
    // The planner's compute figures come from the same graphs, built on
    // the coordinator without running them.
    for f in [
        Family::Qwen2,
        Family::Qwen3,
        Family::Phi3,
        Family::Mixtral,
        Family::Qwen3Moe,
        Family::Gemma3,
    ] {
        let m = write_model(f, "measure", &Extra::default());
        let g = Gguf::open(&m.0).unwrap();
        let cfg = LlamaConfig::from_gguf(&g).unwrap();
        let c = shardline::graph::measure::measure_model(&g, &cfg, N_CTX, 32, 2)
            .unwrap_or_else(|e| panic!("{f:?}: {e}"));
        eprintln!("{f:?}: {c:?}");
    }
}

#[test]
fn inspect_and_plan_show_family_facts() {
    use shardline::plan::{plan, DeviceSpec, ModelCost, PlanOptions, Strategy};
    let m = write_model(Family::Qwen3Moe, "facts", &Extra::default());
    let g = Gguf::open(&m.0).unwrap();
    let s = shardline::inspect::summarize(&g).unwrap();
    assert_eq!(s.family.as_deref(), Some("qwen3moe"));
    assert_eq!((s.n_expert, s.n_expert_used, s.n_ff_exp), (6, 3, Some(128)));
    let expert_bytes: u64 = g
        .tensors()
        .iter()
        .filter(|t| t.name().ends_with("_exps.weight"))
        .map(|t| t.n_bytes())
        .sum();
    assert_eq!(s.expert_bytes, expert_bytes);
    assert!(expert_bytes > 0);
    let text = s.to_string();
    assert!(text.contains("6 per layer, 3 used per token"), "{text}");

    // Every expert is counted with its layer, and shown.
    let opts = PlanOptions {
        n_ctx: N_CTX,
        strategy: Strategy::Even,
        ..PlanOptions::default()
    };
    let cost = ModelCost::from_gguf(&g, &opts).unwrap();
    assert_eq!(cost.cell_pos_bytes, 0);
    let device = |port: u16| DeviceSpec {
        endpoint: format!("127.0.0.1:{port}"),
        device: 0,
        free: 1 << 30,
        total: 1 << 30,
        alignment: 32,
        max_size: 0,
    };
    let p = plan(&cost, &[device(1), device(2)], &opts).unwrap();
    let planned: u64 = p.stages.iter().map(|s| s.expert_bytes).sum();
    assert!(planned >= expert_bytes, "{planned} < {expert_bytes}");
    for st in &p.stages {
        assert!(st.expert_bytes > 0 && st.expert_bytes < st.weight_bytes);
    }
    assert!(p.to_string().contains(" experts)"), "{p}");

    let m = write_model(Family::Gemma3, "facts", &Extra::default());
    let g = Gguf::open(&m.0).unwrap();
    let s = shardline::inspect::summarize(&g).unwrap();
    assert_eq!(s.sliding_window, Some(WINDOW));
    assert_eq!(s.layer_pattern.as_deref(), Some("wGw"));
    // Each stage keeps its cells' positions for the window.
    let cost = ModelCost::from_gguf(&g, &opts).unwrap();
    assert_eq!(cost.cell_pos_bytes, 4 * u64::from(N_CTX));
    let p = plan(&cost, &[device(1), device(2)], &opts).unwrap();
    for st in &p.stages {
        let kv = 2 * st.n_layers() as u64 * cost.kv_tensor_bytes;
        assert_eq!(st.kv_bytes, kv + 4 * u64::from(N_CTX), "{p}");
    }
    assert_eq!(s.n_expert, 0);
    assert!(s.to_string().contains("wGw"));
}

/// The error `from_gguf` gives for the family's model with `extra`.
fn refusal(f: Family, name: &str, extra: Extra) -> ModelError {
    let m = write_model(f, name, &extra);
    let g = Gguf::open(&m.0).unwrap();
    let err = LlamaConfig::from_gguf(&g).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    err
}

#[test]
fn refusals_name_what_they_refuse() {
    let msg = refusal(
        Family::Qwen2,
        "yarn",
        Extra {
            kv: vec![("rope.scaling.type", "yarn".into())],
            ..Extra::default()
        },
    )
    .to_string();
    assert!(
        msg.contains("qwen2.rope.scaling.type") && msg.contains("yarn"),
        "{msg}"
    );

    let msg = refusal(
        Family::Qwen3,
        "extra-bias",
        Extra {
            tensors: vec![("blk.1.attn_output.bias", N_EMBD)],
            ..Extra::default()
        },
    )
    .to_string();
    assert!(msg.contains("blk.1.attn_output.bias"), "{msg}");

    let msg = refusal(
        Family::Phi3,
        "long-rope",
        Extra {
            tensors: vec![("rope_factors_long.weight", 16)],
            ..Extra::default()
        },
    )
    .to_string();
    assert!(msg.contains("rope_factors_long.weight"), "{msg}");

    // Phi-3 files carry a sliding window that llama.cpp ignores: so does
    // shardline.
    let m = write_model(
        Family::Phi3,
        "phi3-window",
        &Extra {
            kv: vec![("attention.sliding_window", 8u32.into())],
            ..Extra::default()
        },
    );
    let g = Gguf::open(&m.0).unwrap();
    assert!(LlamaConfig::from_gguf(&g).unwrap().swa.is_none());

    let err = refusal(
        Family::Qwen2,
        "no-bias",
        Extra {
            skip: Some("blk.2.attn_k.bias"),
            ..Extra::default()
        },
    );
    assert!(
        matches!(&err, ModelError::MissingWeight(n) if n == "blk.2.attn_k.bias"),
        "{err}"
    );

    // Experts where the family has none, and more used than there are.
    let msg = refusal(
        Family::Qwen2,
        "experts",
        Extra {
            kv: vec![
                ("expert_count", 8u32.into()),
                ("expert_used_count", 2u32.into()),
            ],
            ..Extra::default()
        },
    )
    .to_string();
    assert!(msg.contains("qwen2.expert_count = 8"), "{msg}");
    let msg = refusal(
        Family::Qwen3Moe,
        "too-many-used",
        Extra {
            kv: vec![("expert_used_count", 7u32.into())],
            ..Extra::default()
        },
    )
    .to_string();
    assert!(
        msg.contains("qwen3moe.expert_used_count") && msg.contains('7'),
        "{msg}"
    );

    // An architecture no family covers, named with the supported ones.
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "gpt2")
        .add_kv("gpt2.block_count", 1u32);
    let m = TempModel::write(&mut w, "gpt2");
    let g = Gguf::open(&m.0).unwrap();
    let err = LlamaConfig::from_gguf(&g).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Architecture(ref a) if a == "gpt2"));
    assert!(
        msg.contains("general.architecture") && msg.contains("'gpt2'") && msg.contains("qwen2"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

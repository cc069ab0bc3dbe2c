//! What the families' descriptions feed besides the graph: the measured
//! stage graphs, `inspect`'s and `plan`'s facts, and every refusal, which
//! names the key or tensor it refuses on one line.

mod common;

use common::families::*;
use common::synth::TempModel;
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::Gguf;
use shardline::model::{LlamaConfig, ModelError};

#[test]
fn every_family_measures_its_stage_graphs() {
    // The planner's compute figures come from the same graphs, built on
    // the coordinator without running them.
    for f in BEYOND_LLAMA {
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
        "dynamic-rope",
        Extra {
            kv: vec![("rope.scaling.type", "dynamic".into())],
            ..Extra::default()
        },
    )
    .to_string();
    assert!(
        msg.contains("qwen2.rope.scaling.type") && msg.contains("dynamic"),
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

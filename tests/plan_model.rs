//! The planner on the real test model, SmolLM2-135M-Instruct Q4_1: 30 layers
//! of 2,216,448 bytes, a q8_0 token embedding of 30,081,024 bytes and no
//! `output.weight` (the output is tied to the embedding).
//!
//! The model is at `$SHARDLINE_TEST_MODEL`, or by default in
//! `~/.cache/shardline/models/`; `scripts/fetch-model.sh` puts it there.

mod common;

use common::model_path;

use shardline::gguf::Gguf;
use shardline::plan::{plan, DeviceSpec, ModelCost, PlanOptions, Strategy, Target};

const LAYER_BYTES: u64 = 2_216_448;
const TOKEN_EMBD_BYTES: u64 = 30_081_024;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn device(port: u16, free: u64, alignment: u64) -> DeviceSpec {
    DeviceSpec {
        endpoint: format!("127.0.0.1:{port}"),
        device: 0,
        free,
        total: free,
        alignment,
        max_size: u64::MAX,
    }
}

#[test]
fn cost_of_smollm2() {
    let gguf = Gguf::open(model_path()).unwrap();
    let opts = PlanOptions {
        n_ctx: 2048,
        n_batch: 512,
        ..PlanOptions::default()
    };
    let cost = ModelCost::from_gguf(&gguf, &opts).unwrap();
    let s = cost.shape;
    assert_eq!(
        (
            s.n_layer,
            s.n_embd,
            s.n_ff,
            s.n_head,
            s.n_head_kv,
            s.head_dim,
            s.n_vocab
        ),
        (30, 576, 1536, 9, 3, 64, 49_152)
    );
    for l in 0..30 {
        assert_eq!(cost.weights.layer_bytes(l), LAYER_BYTES, "layer {l}");
    }
    assert!(cost.weights.output_tied);
    assert_eq!(cost.weights.input_bytes, TOKEN_EMBD_BYTES);
    assert!(cost.weights.shared.is_empty(), "{:?}", cost.weights.shared);
    let output: Vec<(&str, u64)> = cost
        .weights
        .output
        .iter()
        .map(|t| (t.name.as_str(), t.bytes))
        .collect();
    assert_eq!(
        output,
        [
            ("output_norm.weight", 576 * 4),
            ("token_embd.weight", TOKEN_EMBD_BYTES)
        ]
    );

    // K or V of one layer: 2048 cells * 3 KV heads * 64 * 2 bytes.
    assert_eq!(cost.kv_tensor_bytes, 2048 * 3 * 64 * 2);
    assert_eq!(cost.logits_bytes, 49_152 * 512 * 4);
    let (b, c) = (512u64, 2048u64);
    let elements = b * 576 * 6 + b * 9 * 64 + b * 192 * 2 + b * 1536 * 3 + b * c * 9 * 2 + b * c;
    assert_eq!(cost.compute_bytes, elements * 4 + MIB);

    // Two equal devices: 15 layers each, the tied output on the second.
    let devices = [device(1, GIB, 1), device(2, GIB, 1)];
    let p = plan(&cost, &devices, &opts).unwrap();
    assert_eq!(p.stages.len(), 2);
    assert_eq!(
        (p.stages[0].layers.clone(), p.stages[1].layers.clone()),
        (0..15, 15..30)
    );
    assert_eq!(p.stages[0].weight_bytes, 15 * LAYER_BYTES);
    assert_eq!(p.stages[0].output_bytes, 0);
    let last = p.last_stage();
    assert!(matches!(last.target, Target::Remote { server: 1, .. }));
    assert_eq!(last.output_bytes, TOKEN_EMBD_BYTES + 576 * 4);
    assert_eq!(last.kv_bytes, 15 * 2 * 2048 * 3 * 64 * 2);
    assert_eq!(last.compute_bytes, cost.compute_bytes + cost.logits_bytes);
    assert_eq!(last.free_after, Some(GIB - last.needed_bytes()));

    // Aligned to 32 bytes, weights cost at least their size.
    let devices = [device(1, 8 * GIB, 32), device(2, 16 * GIB, 32)];
    let o = PlanOptions {
        local_layers: 3,
        ..opts.clone()
    };
    let p = plan(&cost, &devices, &o).unwrap();
    let counts: Vec<u32> = p.stages.iter().map(|s| s.n_layers()).collect();
    assert_eq!(counts, [3, 9, 18]);
    let weights: u64 = p.stages.iter().map(|s| s.weight_bytes).sum();
    assert!(weights >= 30 * LAYER_BYTES);
    let table = p.to_string();
    assert!(
        table.contains("local CPU") && table.contains("127.0.0.1:2/0"),
        "{table}"
    );
    println!("{table}");

    // Too small a device: the error names it and the shortfall.
    let o = PlanOptions {
        strategy: Strategy::Even,
        ..opts.clone()
    };
    let err = plan(&cost, &[device(1, GIB, 32), device(2, 300 * MIB, 32)], &o).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("127.0.0.1:2 device 0 is short by"), "{msg}");
}

/// The compute buffers measured on SmolLM2's stage graphs: no attention
/// score matrix (flash attention), but room for what one layer holds at
/// once: at the SwiGLU, its up and gate projections and its result
/// (`n_ff x n_batch` F32 each) and the residual stream.
#[test]
fn measured_compute_of_smollm2() {
    let gguf = Gguf::open(model_path()).unwrap();
    let opts = PlanOptions {
        n_ctx: 2048,
        n_batch: 512,
        ..PlanOptions::default()
    };
    let cost = shardline::graph::measure::measured_cost(&gguf, &opts).unwrap();
    let m = cost.measured.expect("measured");
    let (b, ff, embd) = (512u64, 1536u64, 576u64);
    let floor = 4 * b * (3 * ff + embd);
    for (what, c) in [("middle", m.stage), ("last", m.head)] {
        assert!(c.ggml_bytes >= floor, "{what}: {c:?} below {floor}");
        // Our placement needs no more than ggml's for these graphs.
        assert!(c.layout_bytes <= c.ggml_bytes, "{what}: {c:?}");
    }
    // The old formula counted the scores: 2 x 512 x 2048 x 9 heads in F32.
    assert!(
        m.stage.bytes() < cost.compute_bytes / 4,
        "{m:?} vs {}",
        cost.compute_bytes
    );
    // Planned per stage: the measure, plus the input buffer (mask F16
    // [2048, 512] and the small inputs), at the device's alignment.
    let devices = [device(1, GIB, 32), device(2, GIB, 32)];
    let p = plan(&cost, &devices, &opts).unwrap();
    let inputs = shardline::plan::InputLayout::new(2048, 512, 32).size;
    assert!(inputs >= 2048 * 512 * 2);
    assert_eq!(p.stages[0].compute_bytes, m.stage.bytes_at(32) + inputs);
    assert_eq!(p.stages[1].compute_bytes, m.head.bytes_at(32) + inputs);
}

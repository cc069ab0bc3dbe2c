//! Option errors, the KV cache and compute figures, alignment, parsing
//! strategies, and the plan as a table and as JSON.

use super::*;

#[test]
fn option_errors() {
    let err = ModelCost::from_parts(
        shape(2),
        weights(2, MIB),
        &PlanOptions { n_ctx: 0, ..opts() },
    )
    .unwrap_err();
    assert!(matches!(err, PlanError::ZeroContext), "{err}");
    let err = ModelCost::from_parts(
        shape(2),
        weights(2, MIB),
        &PlanOptions {
            n_batch: 0,
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(err, PlanError::ZeroBatch), "{err}");
    let err = ModelCost::from_parts(
        shape(2),
        weights(2, MIB),
        &PlanOptions {
            n_seq_max: 0,
            ..opts()
        },
    )
    .unwrap_err();
    assert!(matches!(err, PlanError::ZeroSequences), "{err}");
    let err = ModelCost::from_parts(shape(3), weights(2, MIB), &opts()).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::LayerCountMismatch {
                n_layer: 3,
                layers: 2
            }
        ),
        "{err}"
    );
    let cost = ModelCost::from_parts(shape(0), weights(0, MIB), &opts()).unwrap();
    assert!(matches!(
        plan(&cost, &[dev(1, GIB)], &opts()),
        Err(PlanError::NoLayers)
    ));
    let err = plan(&model(2, MIB), &[], &opts()).unwrap_err();
    assert!(matches!(err, PlanError::NoDevices { layers: 2 }), "{err}");
}

#[test]
fn kv_cache_is_unified_and_f16() {
    let s = shape(2);
    // n_ctx * n_head_kv * head_dim * 2 bytes, for each of K and V.
    assert_eq!(kv_tensor_bytes(&s, 1024), 1024 * 2 * 64 * 2);
    let one = ModelCost::from_parts(s, weights(2, MIB), &opts()).unwrap();
    let four = ModelCost::from_parts(
        s,
        weights(2, MIB),
        &PlanOptions {
            n_seq_max: 4,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(
        one.kv_tensor_bytes, four.kv_tensor_bytes,
        "sequences share the cells"
    );
    assert_eq!(one.kv_layer_bytes(), 2 * 1024 * 2 * 64 * 2);
    let p = plan(&one, &[dev(1, GIB)], &opts()).unwrap();
    assert_eq!(p.stages[0].kv_bytes, 2 * one.kv_layer_bytes());
}

#[test]
fn compute_estimate_formula() {
    let s = shape(2);
    let (b, c) = (256u64, 1024u64);
    let elements = b * 512 * 6 + b * 8 * 64 + b * 128 * 2 + b * 1536 * 3 + b * c * 8 * 2 + b * c;
    assert_eq!(
        compute_estimate(&s, 1024, 256),
        elements * 4 + cost::COMPUTE_SLACK
    );
    assert!(compute_estimate(&s, 2048, 256) > compute_estimate(&s, 1024, 256));
    assert!(compute_estimate(&s, 1024, 512) > compute_estimate(&s, 1024, 256));
    // The batch is at most the context.
    let cost = ModelCost::from_parts(
        s,
        weights(2, MIB),
        &PlanOptions {
            n_ctx: 64,
            n_batch: 512,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(cost.n_batch, 64);
    assert_eq!(cost.logits_bytes, 32_000 * 64 * 4);
    // Huge values saturate instead of overflowing.
    let huge = ModelShape {
        n_head: u32::MAX,
        n_embd: u32::MAX,
        ..s
    };
    assert_eq!(compute_estimate(&huge, u32::MAX, u32::MAX), u64::MAX);
}

#[test]
fn alignment_rounds_every_tensor_up() {
    let mut w = weights(2, 0);
    w.layers = vec![vec![1, 1, 1], vec![100]];
    w.shared = vec![TensorCost {
        name: "rope_freqs.weight".into(),
        bytes: 10,
    }];
    let cost = ModelCost::from_parts(shape(2), w, &opts()).unwrap();
    let mut d = dev(1, GIB);
    d.alignment = 64;
    let p = plan(&cost, &[d], &opts()).unwrap();
    // 3 * 64 + 128 for the layers, 64 for the shared tensor.
    assert_eq!(p.stages[0].weight_bytes, 3 * 64 + 128 + 64);
    assert_eq!(p.stages[0].output_bytes, 2048 + 64 * MIB);
}

#[test]
fn strategies_parse() {
    assert_eq!("memory".parse::<Strategy>().unwrap(), Strategy::Memory);
    assert_eq!(" even ".parse::<Strategy>().unwrap(), Strategy::Even);
    assert_eq!(
        "10,20".parse::<Strategy>().unwrap(),
        Strategy::Split(vec![10, 20])
    );
    assert_eq!(parse_split("10, 20 ,0").unwrap(), [10, 20, 0]);
    assert_eq!(parse_split("7").unwrap(), [7]);
    for bad in ["", "10,", "10,,20", "a,b", "-1,2", "10;20", "99999999999"] {
        assert!(
            matches!(parse_split(bad), Err(ParseStrategyError::BadCount { .. })),
            "{bad}"
        );
    }
    let err = "fastest".parse::<Strategy>().unwrap_err();
    assert_eq!(err, ParseStrategyError::Unknown("fastest".into()));
    assert!(err.to_string().contains("'memory', 'even'"));
    for s in [
        Strategy::Memory,
        Strategy::Even,
        Strategy::Split(vec![3, 0, 27]),
    ] {
        assert_eq!(s.to_string().parse::<Strategy>().unwrap(), s);
    }
}

#[test]
fn table_and_json() {
    let cost = model(30, 100 * MIB);
    let o = PlanOptions {
        local_layers: 2,
        local_free: Some(8 * GIB),
        ..with(Strategy::Split(vec![8, 20]))
    };
    let p = plan(&cost, &[dev(1, 8 * GIB), dev(2, 16 * GIB)], &o).unwrap();
    let text = p.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 1 + 3 + 1, "{text}");
    assert!(lines[0].starts_with("30 layers, context 1024"), "{text}");
    for h in crate::plan::display::HEADERS {
        assert!(lines[1].contains(h), "{text}");
    }
    assert!(
        lines[2].contains("local CPU") && lines[2].contains("0-1 (2)"),
        "{text}"
    );
    assert!(
        lines[3].contains("10.0.0.1:1/0")
            && lines[3].contains(" cpu ")
            && lines[3].contains("2-9 (8)"),
        "{text}"
    );
    assert!(
        lines[4].contains("10.0.0.1:2/0") && lines[4].contains("10-29 (20)"),
        "{text}"
    );
    assert!(lines[3].contains("800.0 MiB"), "{text}");
    assert!(lines[5].starts_with("total"), "{text}");
    assert!(
        text.lines().all(|l| l == l.trim_end()),
        "no trailing spaces"
    );

    let json: serde_json::Value = serde_json::to_value(&p).unwrap();
    assert_eq!(json["stages"][0]["target"]["kind"], "local");
    assert_eq!(json["stages"][1]["target"]["kind"], "remote");
    assert_eq!(json["stages"][1]["target"]["endpoint"], "10.0.0.1:1");
    assert_eq!(json["stages"][2]["layers"]["start"], 10);
    assert_eq!(json["stages"][2]["layers"]["end"], 30);
    assert_eq!(json["stages"][2]["holds_output"], true);
    assert_eq!(json["strategy"]["split"][1], 20);
}

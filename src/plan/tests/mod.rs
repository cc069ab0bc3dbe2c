use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn shape(n_layer: u32) -> ModelShape {
    ModelShape {
        n_layer,
        n_embd: 512,
        n_ff: 1536,
        n_head: 8,
        n_head_kv: 2,
        head_dim: 64,
        n_vocab: 32_000,
    }
}

/// `n_layer` layers of two tensors, `layer_bytes` in all; an untied output.
fn weights(n_layer: u32, layer_bytes: u64) -> ModelWeights {
    ModelWeights {
        layers: (0..n_layer)
            .map(|_| vec![layer_bytes / 2, layer_bytes - layer_bytes / 2])
            .collect(),
        experts: Vec::new(),
        shared: Vec::new(),
        output: vec![
            TensorCost {
                name: "output_norm.weight".into(),
                bytes: 2048,
            },
            TensorCost {
                name: "output.weight".into(),
                bytes: 64 * MIB,
            },
        ],
        output_tied: false,
        input_bytes: 64 * MIB,
    }
}

fn opts() -> PlanOptions {
    PlanOptions {
        n_ctx: 1024,
        n_batch: 256,
        ..PlanOptions::default()
    }
}

fn model(n_layer: u32, layer_bytes: u64) -> ModelCost {
    ModelCost::from_parts(shape(n_layer), weights(n_layer, layer_bytes), &opts()).unwrap()
}

fn dev(port: u16, free: u64) -> DeviceSpec {
    DeviceSpec {
        endpoint: format!("10.0.0.1:{port}"),
        device: 0,
        free,
        total: free,
        alignment: 32,
        max_size: u64::MAX,
    }
}

fn with(strategy: Strategy) -> PlanOptions {
    PlanOptions { strategy, ..opts() }
}

fn counts(p: &Plan) -> Vec<u32> {
    p.stages.iter().map(Stage::n_layers).collect()
}

/// Stages in order, non-empty, contiguous, covering every layer; only the
/// last holds the output.
fn assert_well_formed(p: &Plan) {
    assert!(!p.stages.is_empty());
    let mut at = 0;
    for (i, s) in p.stages.iter().enumerate() {
        assert_eq!(s.layers.start, at, "stage {i} starts where the last ended");
        assert!(s.n_layers() > 0, "stage {i} is empty");
        at = s.layers.end;
        let last = i + 1 == p.stages.len();
        assert_eq!(s.holds_output, last);
        assert_eq!(s.output_bytes > 0, last);
        assert!(!s.is_local() || i == 0, "the local stage comes first");
    }
    assert_eq!(at, p.n_layer);
    for l in 0..p.n_layer {
        assert!(p.stage_of_layer(l).is_some());
    }
    assert_eq!(p.stage_of_layer(p.n_layer), None);
}

#[test]
fn memory_strategy_is_proportional_to_free_memory() {
    let cost = model(30, 100 * MIB);
    let devices = [
        dev(1, 8 * GIB + DEFAULT_RESERVE),
        dev(2, 16 * GIB + DEFAULT_RESERVE),
    ];
    let p = plan(&cost, &devices, &with(Strategy::Memory)).unwrap();
    assert_well_formed(&p);
    assert_eq!(counts(&p), [10, 20]);
    assert_eq!(p.stages[1].layers, 10..30);
    assert!(
        matches!(&p.stages[0].target, Target::Remote { server: 0, endpoint, device: 0 } if endpoint == "10.0.0.1:1")
    );
    assert!(matches!(
        &p.stages[1].target,
        Target::Remote { server: 1, .. }
    ));
}

#[test]
fn memory_strategy_rounding_covers_every_layer() {
    let cost = model(10, MIB);
    for frees in [
        vec![GIB, GIB, GIB],
        vec![GIB, 2 * GIB, 3 * GIB],
        vec![5 * GIB, GIB, GIB, GIB],
    ] {
        let devices: Vec<_> = frees
            .iter()
            .enumerate()
            .map(|(i, &f)| dev(i as u16, f))
            .collect();
        let p = plan(&cost, &devices, &with(Strategy::Memory)).unwrap();
        assert_well_formed(&p);
    }
    // Three equal devices: 4 + 3 + 3, the extra layer to the first.
    let devices = [dev(1, GIB), dev(2, GIB), dev(3, GIB)];
    let p = plan(&cost, &devices, &with(Strategy::Memory)).unwrap();
    assert_eq!(counts(&p), [4, 3, 3]);
}

#[test]
fn proportional_by_largest_remainder() {
    assert_eq!(split::proportional(30, &[8, 16]), [10, 20]);
    assert_eq!(split::proportional(10, &[1, 1, 1]), [4, 3, 3]);
    assert_eq!(split::proportional(7, &[1, 0, 2]), [2, 0, 5]);
    assert_eq!(split::proportional(2, &[0, 0]), [1, 1]);
    assert_eq!(split::proportional(0, &[5]), [0]);
    assert_eq!(split::proportional(5, &[u64::MAX, u64::MAX]), [3, 2]);
}

#[test]
fn even_strategy() {
    let cost = model(30, MIB);
    let devices: Vec<_> = (0..4).map(|i| dev(i, 4 * GIB + i as u64 * GIB)).collect();
    let p = plan(&cost, &devices, &with(Strategy::Even)).unwrap();
    assert_well_formed(&p);
    assert_eq!(counts(&p), [8, 8, 7, 7]);
}

#[test]
fn explicit_split() {
    let cost = model(30, MIB);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    let p = plan(&cost, &devices, &with("10,20".parse().unwrap())).unwrap();
    assert_well_formed(&p);
    assert_eq!(counts(&p), [10, 20]);

    // A zero leaves the device out; the output goes to the last stage.
    let p = plan(&cost, &devices, &with(Strategy::Split(vec![30, 0]))).unwrap();
    assert_well_formed(&p);
    assert_eq!(p.stages.len(), 1);
    assert!(matches!(
        p.last_stage().target,
        Target::Remote { server: 0, .. }
    ));
}

#[test]
fn split_count_and_sum_must_match() {
    let cost = model(30, MIB);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    let err = plan(&cost, &devices, &with(Strategy::Split(vec![30]))).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::SplitCount {
                given: 1,
                devices: 2
            }
        ),
        "{err}"
    );
    let err = plan(&cost, &devices, &with(Strategy::Split(vec![10, 10]))).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::SplitSum {
                sum: 20,
                expected: 30,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("20 layers but 30"), "{err}");
    // With local layers the split covers the rest.
    let o = PlanOptions {
        local_layers: 5,
        ..with(Strategy::Split(vec![10, 20]))
    };
    let err = plan(&cost, &devices, &o).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::SplitSum {
                sum: 30,
                expected: 25,
                ..
            }
        ),
        "{err}"
    );
    let o = PlanOptions {
        local_layers: 5,
        ..with(Strategy::Split(vec![10, 15]))
    };
    assert_well_formed(&plan(&cost, &devices, &o).unwrap());
    // u32 counts that would overflow a u32 sum.
    let err = plan(&cost, &devices, &with(Strategy::Split(vec![u32::MAX, 2]))).unwrap_err();
    assert!(matches!(err, PlanError::SplitSum { .. }), "{err}");
}

#[test]
fn local_layers_come_first_and_cost_no_server() {
    let cost = model(30, 100 * MIB);
    let devices = [dev(1, 4 * GIB), dev(2, 4 * GIB)];
    let o = PlanOptions {
        local_layers: 6,
        ..with(Strategy::Even)
    };
    let p = plan(&cost, &devices, &o).unwrap();
    assert_well_formed(&p);
    assert_eq!(counts(&p), [6, 12, 12]);
    let local = p.local_stage().unwrap();
    assert_eq!(local.target, Target::Local);
    assert_eq!(local.layers, 0..6);
    assert_eq!(local.free_after, None, "unchecked without local_free");
    assert_eq!(p.remote_stages().count(), 2);
    assert_eq!(p.target_of_layer(5), Some(&Target::Local));
    assert_eq!(p.stage_of_layer(6), Some(1));

    // Everything local: no servers needed, the output is local too.
    let o = PlanOptions {
        local_layers: 30,
        ..opts()
    };
    let p = plan(&cost, &[], &o).unwrap();
    assert_well_formed(&p);
    assert_eq!(p.stages.len(), 1);
    assert!(p.last_stage().is_local() && p.last_stage().holds_output);

    let o = PlanOptions {
        local_layers: 31,
        ..opts()
    };
    assert!(matches!(
        plan(&cost, &devices, &o),
        Err(PlanError::TooManyLocalLayers {
            local_layers: 31,
            n_layer: 30
        })
    ));
}

#[test]
fn local_stage_is_checked_against_local_free() {
    let cost = model(30, 100 * MIB);
    let devices = [dev(1, 8 * GIB)];
    let o = PlanOptions {
        local_layers: 10,
        local_free: Some(DEFAULT_RESERVE + 500 * MIB),
        ..opts()
    };
    let err = plan(&cost, &devices, &o).unwrap_err();
    let PlanError::LocalDoesNotFit {
        layers,
        needed,
        available,
        short_by,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*layers, 0..10);
    assert_eq!(*available, 500 * MIB);
    assert_eq!(*short_by, needed - available);
    assert!(err.to_string().contains("coordinator"), "{err}");

    let o = PlanOptions {
        local_free: Some(4 * GIB),
        ..o
    };
    let p = plan(&cost, &devices, &o).unwrap();
    let local = p.local_stage().unwrap();
    assert_eq!(local.free_after, Some(4 * GIB - local.needed_bytes()));
}

#[test]
fn tied_output_goes_to_the_last_device() {
    let mut w = weights(12, 10 * MIB);
    w.output = vec![
        TensorCost {
            name: "output_norm.weight".into(),
            bytes: 2048,
        },
        TensorCost {
            name: "token_embd.weight".into(),
            bytes: 30 * MIB,
        },
    ];
    w.output_tied = true;
    w.input_bytes = 30 * MIB;
    let cost = ModelCost::from_parts(shape(12), w, &opts()).unwrap();
    let devices = [dev(1, 4 * GIB), dev(2, 4 * GIB), dev(3, 4 * GIB)];
    let p = plan(&cost, &devices, &with(Strategy::Even)).unwrap();
    assert_well_formed(&p);
    assert!(p.output_tied);
    let last = p.last_stage();
    assert!(matches!(last.target, Target::Remote { server: 2, .. }));
    assert_eq!(last.output_bytes, 2048 + 30 * MIB);
    assert_eq!(last.compute_bytes, cost.compute_bytes + cost.logits_bytes);
    for s in &p.stages[..2] {
        assert_eq!(s.output_bytes, 0);
        assert_eq!(s.compute_bytes, cost.compute_bytes);
    }
    // Only the output pays for the tied matrix: the input costs nothing.
    assert_eq!(p.stages[0].weight_bytes, 4 * 10 * MIB);
    assert!(p.to_string().contains("output tied"));
}

#[test]
fn does_not_fit_names_the_short_device_and_the_shortfall() {
    let cost = model(20, 100 * MIB);
    // Even: 10 layers each, about 1 GiB of weights; the second is short.
    let devices = [dev(1, 8 * GIB), dev(2, GIB)];
    let err = plan(&cost, &devices, &with(Strategy::Even)).unwrap_err();
    let PlanError::DoesNotFit {
        endpoint,
        device,
        layers,
        needed,
        available,
        short_by,
        reserve,
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(endpoint, "10.0.0.1:2");
    assert_eq!(*device, 0);
    assert_eq!(*layers, 10..20);
    assert_eq!(*reserve, DEFAULT_RESERVE);
    assert_eq!(*available, GIB - DEFAULT_RESERVE);
    let expected_need = 10 * 100 * MIB
        + 10 * 2 * cost.kv_tensor_bytes
        + (cost.compute_bytes + cost.logits_bytes).next_multiple_of(32)
        + 2048
        + 64 * MIB;
    assert_eq!(*needed, expected_need);
    assert_eq!(*short_by, expected_need - available);
    let msg = err.to_string();
    assert!(msg.contains("10.0.0.1:2 device 0 is short by"), "{msg}");
    assert!(msg.contains("10-19 (10)"), "{msg}");

    // The memory strategy moves layers to the device with room.
    let p = plan(&cost, &devices, &with(Strategy::Memory)).unwrap();
    assert_well_formed(&p);
    assert!(p
        .stages
        .iter()
        .all(|s| s.free_after.unwrap() >= DEFAULT_RESERVE));

    // Nothing helps when the cluster is too small in total.
    let devices = [dev(1, GIB), dev(2, GIB)];
    let err = plan(&cost, &devices, &with(Strategy::Memory)).unwrap_err();
    assert!(matches!(err, PlanError::DoesNotFit { .. }), "{err}");
}

#[test]
fn memory_strategy_makes_room_for_the_output() {
    // Free memory almost equal: the proportional split is 10 + 10, which
    // leaves the last device short by the output and the logits (about
    // 95 MiB); the first has room for one more layer (about 100 MiB).
    let cost = model(20, 100 * MIB);
    let stage_10 =
        10 * 100 * MIB + 10 * 2 * cost.kv_tensor_bytes + cost.compute_bytes.next_multiple_of(32);
    let devices = [
        dev(1, DEFAULT_RESERVE + stage_10 + 150 * MIB),
        dev(2, DEFAULT_RESERVE + stage_10 + 50 * MIB),
    ];
    assert_eq!(
        split::proportional(20, &[stage_10 + 150 * MIB, stage_10 + 50 * MIB]),
        [10, 10]
    );
    let err = plan(&cost, &devices, &with(Strategy::Even)).unwrap_err();
    assert!(
        matches!(&err, PlanError::DoesNotFit { endpoint, .. } if endpoint == "10.0.0.1:2"),
        "{err}"
    );
    let p = plan(&cost, &devices, &with(Strategy::Memory)).unwrap();
    assert_well_formed(&p);
    assert_eq!(counts(&p), [11, 9]);
    assert!(
        p.stages
            .iter()
            .all(|s| s.free_after.unwrap() >= DEFAULT_RESERVE),
        "{p}"
    );

    // A last device with no room for the output at all is left out.
    let devices = [
        dev(1, 8 * GIB),
        dev(2, 8 * GIB),
        dev(3, DEFAULT_RESERVE + 400 * MIB),
    ];
    let p = plan(&cost, &devices, &with(Strategy::Memory)).unwrap();
    assert_well_formed(&p);
    assert!(
        matches!(p.last_stage().target, Target::Remote { server: 1, .. }),
        "{p}"
    );
}

#[test]
fn a_device_too_small_for_one_layer() {
    let cost = model(8, 100 * MIB);
    let devices = [
        dev(1, 4 * GIB),
        dev(2, DEFAULT_RESERVE + 50 * MIB),
        dev(3, 4 * GIB),
    ];
    let p = plan(&cost, &devices, &with(Strategy::Memory)).unwrap();
    assert_well_formed(&p);
    assert!(
        p.stages
            .iter()
            .all(|s| !matches!(s.target, Target::Remote { server: 1, .. })),
        "{p}"
    );

    let err = plan(&cost, &devices, &with(Strategy::Even)).unwrap_err();
    assert!(
        matches!(&err, PlanError::DoesNotFit { endpoint, .. } if endpoint == "10.0.0.1:2"),
        "{err}"
    );

    // Less free than the reserve: nothing available at all.
    let devices = [dev(1, MIB)];
    let err = plan(&cost, &devices, &with(Strategy::Memory)).unwrap_err();
    assert!(
        matches!(err, PlanError::DoesNotFit { available: 0, .. }),
        "{err}"
    );
}

#[test]
fn a_layer_larger_than_the_largest_buffer() {
    let cost = model(4, 100 * MIB);
    let mut small = dev(2, 8 * GIB);
    small.max_size = 64 * MIB;
    let err = plan(
        &cost,
        &[dev(1, 8 * GIB), small.clone()],
        &with(Strategy::Even),
    )
    .unwrap_err();
    let PlanError::BufferTooLarge {
        endpoint,
        what,
        bytes,
        max_size,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(endpoint, "10.0.0.1:2");
    assert_eq!(what, "the weights of layer 2");
    assert_eq!((*bytes, *max_size), (100 * MIB, 64 * MIB));
    assert!(
        err.to_string().contains("largest buffer is 64.0 MiB"),
        "{err}"
    );

    // The memory strategy leaves such a device out.
    let p = plan(
        &cost,
        &[dev(1, 8 * GIB), small.clone()],
        &with(Strategy::Memory),
    )
    .unwrap();
    assert_eq!(counts(&p), [4]);
    // ... unless it is the only one.
    let err = plan(&cost, &[small], &with(Strategy::Memory)).unwrap_err();
    assert!(matches!(err, PlanError::BufferTooLarge { .. }), "{err}");

    // max_size 0 means no limit.
    let mut unlimited = dev(3, 8 * GIB);
    unlimited.max_size = 0;
    assert!(plan(&cost, &[unlimited], &opts()).is_ok());
}

#[test]
fn tiny_clusters_and_more_devices_than_layers() {
    let cost = model(1, MIB);
    let p = plan(&cost, &[dev(1, GIB)], &opts()).unwrap();
    assert_well_formed(&p);
    assert_eq!(p.stages.len(), 1);

    let cost = model(3, MIB);
    let devices: Vec<_> = (0..5).map(|i| dev(i, GIB)).collect();
    for strategy in [
        Strategy::Memory,
        Strategy::Even,
        Strategy::Split(vec![0, 1, 0, 2, 0]),
    ] {
        let p = plan(&cost, &devices, &with(strategy.clone())).unwrap();
        assert_well_formed(&p);
        assert!(p.stages.len() <= 3, "{strategy}: {p}");
    }
    let p = plan(&cost, &devices, &with(Strategy::Even)).unwrap();
    assert_eq!(counts(&p), [1, 1, 1]);
}

#[test]
fn well_formed_whenever_it_fits() {
    for n_layer in [1u32, 2, 5, 16, 33] {
        let cost = model(n_layer, 30 * MIB);
        for n_dev in 1..6u16 {
            for skew in [1u64, 3, 10] {
                let devices: Vec<_> = (0..n_dev)
                    .map(|i| dev(i, 512 * MIB + u64::from(i) * skew * 100 * MIB))
                    .collect();
                for strategy in [Strategy::Memory, Strategy::Even] {
                    for local_layers in [0, n_layer / 2] {
                        let o = PlanOptions {
                            local_layers,
                            ..with(strategy.clone())
                        };
                        match plan(&cost, &devices, &o) {
                            Ok(p) => {
                                assert_well_formed(&p);
                                for s in p.remote_stages() {
                                    assert!(s.free_after.unwrap() >= DEFAULT_RESERVE, "{p}");
                                }
                            }
                            Err(PlanError::DoesNotFit {
                                short_by,
                                needed,
                                available,
                                ..
                            }) => {
                                assert!(short_by > 0 && needed == available + short_by);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }
        }
    }
}

mod options_and_output;

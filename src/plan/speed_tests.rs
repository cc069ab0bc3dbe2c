//! The throughput strategy's dynamic programme and the cost model.

use super::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn model(n_layer: u32) -> ModelCost {
    let shape = ModelShape {
        n_layer,
        n_embd: 512,
        n_ff: 1536,
        n_head: 8,
        n_head_kv: 2,
        head_dim: 64,
        n_vocab: 32_000,
    };
    let weights = ModelWeights {
        layers: (0..n_layer).map(|_| vec![8 * MIB, 8 * MIB]).collect(),
        experts: Vec::new(),
        shared: Vec::new(),
        output: vec![TensorCost {
            name: "output.weight".into(),
            bytes: 32 * MIB,
        }],
        output_tied: false,
        input_bytes: 32 * MIB,
    };
    let opts = PlanOptions {
        n_ctx: 1024,
        n_batch: 256,
        ..PlanOptions::default()
    };
    ModelCost::from_parts(shape, weights, &opts).unwrap()
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

/// A device whose layer takes `layer_ms` for one token (and 4x that for
/// eight), the head twice a layer, behind a link of `rtt_ms`.
fn speed(layer_ms: f64, rtt_ms: f64) -> DeviceSpeed {
    let l = layer_ms / 1e3;
    DeviceSpeed {
        layer: Curve(vec![(1, l), (8, 4.0 * l)]),
        head: Curve(vec![(1, 2.0 * l), (8, 8.0 * l)]),
        overhead_s: 0.0,
        rtt_s: rtt_ms / 1e3,
        bandwidth: 10e9,
    }
}

fn throughput(
    cost: &ModelCost,
    devices: &[DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
) -> Vec<u32> {
    let opts = PlanOptions {
        strategy: Strategy::Throughput,
        ..PlanOptions::default()
    };
    let p = plan_with_speeds(cost, devices, speeds, &opts).unwrap();
    let mut counts = vec![0; devices.len()];
    for s in &p.stages {
        if let Target::Remote { server, .. } = s.target {
            counts[server] = s.n_layers();
        }
    }
    counts
}

#[test]
fn strategy_parses_and_prints() {
    assert_eq!(
        "throughput".parse::<Strategy>().unwrap(),
        Strategy::Throughput
    );
    assert_eq!(Strategy::Throughput.to_string(), "throughput");
    let e = "fast".parse::<Strategy>().unwrap_err().to_string();
    assert!(e.contains("throughput"), "{e}");
}

#[test]
fn curve_is_linear_between_points_and_proportional_past_them() {
    let c = Curve(vec![(1, 1.0), (9, 5.0)]);
    assert_eq!(c.at(0), 1.0);
    assert_eq!(c.at(1), 1.0);
    assert!((c.at(5) - 3.0).abs() < 1e-12);
    assert!((c.at(18) - 10.0).abs() < 1e-12);
    assert_eq!(Curve(vec![]).at(3), 0.0);
}

#[test]
fn equal_devices_on_fast_links_share_the_layers() {
    let cost = model(30);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    let s = Some(speed(1.0, 0.05));
    let c = throughput(&cost, &devices, &[s.clone(), s]);
    assert_eq!(c.iter().sum::<u32>(), 30);
    assert!(c[0] > 0 && c[1] > 0, "{c:?}");
    // The head costs two layers: the last stage takes about that many fewer.
    assert!(c[0] >= c[1] && c[0] - c[1] <= 3, "{c:?}");
}

#[test]
fn a_device_behind_a_slow_link_is_left_out() {
    let cost = model(30);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    let c = throughput(
        &cost,
        &devices,
        &[Some(speed(1.0, 0.05)), Some(speed(1.0, 20.0))],
    );
    assert_eq!(c, vec![30, 0]);
    // Whichever side it is on.
    let c = throughput(
        &cost,
        &devices,
        &[Some(speed(1.0, 20.0)), Some(speed(1.0, 0.05))],
    );
    assert_eq!(c, vec![0, 30]);
}

#[test]
fn a_four_times_slower_device_gets_nothing_when_the_fast_one_has_room() {
    let cost = model(30);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    let c = throughput(
        &cost,
        &devices,
        &[Some(speed(4.0, 0.05)), Some(speed(1.0, 0.05))],
    );
    assert_eq!(c, vec![0, 30]);
}

#[test]
fn memory_limits_the_fast_device_and_the_slow_one_takes_the_rest() {
    let cost = model(30);
    // Room for about ten 16 MiB layers (plus KV and compute) on the fast one.
    let devices = [dev(1, 256 * MIB + 180 * MIB), dev(2, 8 * GIB)];
    let c = throughput(
        &cost,
        &devices,
        &[Some(speed(1.0, 0.05)), Some(speed(1.0, 20.0))],
    );
    assert_eq!(c.iter().sum::<u32>(), 30);
    assert!(c[0] > 0 && c[0] < 15 && c[1] > 15, "{c:?}");
    // The plan is memory-valid: planning the same counts as a split works.
    let split = PlanOptions {
        strategy: Strategy::Split(c.clone()),
        ..PlanOptions::default()
    };
    plan(&cost, &devices, &split).unwrap();
    // And the fast device is full: one more layer there does not fit.
    let more = PlanOptions {
        strategy: Strategy::Split(vec![c[0] + 1, c[1] - 1]),
        ..PlanOptions::default()
    };
    assert!(plan(&cost, &devices, &more).is_err());
}

#[test]
fn missing_speeds_fall_back_to_memory() {
    let cost = model(30);
    let devices = [dev(1, 4 * GIB), dev(2, 8 * GIB)];
    let mem = plan(
        &cost,
        &devices,
        &PlanOptions {
            strategy: Strategy::Memory,
            ..PlanOptions::default()
        },
    )
    .unwrap();
    let c = throughput(&cost, &devices, &[Some(speed(1.0, 0.05)), None]);
    let m: Vec<u32> = mem.stages.iter().map(Stage::n_layers).collect();
    assert_eq!(c, m);
    assert_eq!(throughput(&cost, &devices, &[]), m);
}

#[test]
fn prediction_names_the_left_out_device_and_adds_up() {
    let cost = model(30);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    let speeds = [Some(speed(1.0, 0.05)), Some(speed(1.0, 20.0))];
    let opts = PlanOptions {
        strategy: Strategy::Throughput,
        ..PlanOptions::default()
    };
    let p = plan_with_speeds(&cost, &devices, &speeds, &opts).unwrap();
    let pr = predict(&p, &cost, &devices, &speeds, 8, 64);
    assert_eq!(pr.left_out.len(), 1);
    assert_eq!(pr.left_out[0].endpoint, "10.0.0.1:2");
    assert!(
        pr.left_out[0].reason.contains("round trip 20.00 ms"),
        "{}",
        pr.left_out[0].reason
    );
    let st = pr.stages[0].as_ref().unwrap();
    // 30 layers + a head of two layers' worth + the link, for one token.
    assert!(st.decode_ms > 32.0 && st.decode_ms < 33.0, "{st:?}");
    assert!((pr.decode_tok_s - 1e3 / st.decode_ms).abs() < 1e-9);
    // A memory plan over both pays the slow link every token.
    let mem = plan(&cost, &devices, &PlanOptions::default()).unwrap();
    let pm = predict(&mem, &cost, &devices, &speeds, 8, 64);
    assert!(pm.left_out.is_empty());
    assert!(pr.decode_tok_s > 1.3 * pm.decode_tok_s, "{pr:?} {pm:?}");
}

#[test]
fn roofline_devices_are_slower_with_less_bandwidth() {
    let cost = model(30);
    let fast = DeviceSpeed::roofline(&cost, 100.0, 1000.0, 0.0001, 1e9);
    let slow = DeviceSpeed::roofline(&cost, 25.0, 250.0, 0.0001, 1e9);
    let a = fast.stage_s(&cost, 10, 1, 1, false);
    let b = slow.stage_s(&cost, 10, 1, 1, false);
    assert!(b > 3.5 * a && b < 4.5 * a, "{a} {b}");
    // A big batch is bound by arithmetic: more tokens, more time.
    assert!(fast.layer.at(512) > fast.layer.at(1));
}

#[test]
fn concurrent_streams_split_what_one_stream_keeps_together() {
    // An extra hop costs more than it saves one stream, but under load two
    // stages computing at once nearly halve the slowest stage.
    let cost = model(30);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    let s = Some(speed(1.0, 3.0));
    let speeds = [s.clone(), s];
    let counts = |n_seq_max: u32| {
        let opts = PlanOptions {
            strategy: Strategy::Throughput,
            n_seq_max,
            ..PlanOptions::default()
        };
        let p = plan_with_speeds(&cost, &devices, &speeds, &opts).unwrap();
        p.stages.iter().map(Stage::n_layers).collect::<Vec<_>>()
    };
    assert_eq!(counts(1), vec![30], "one stream: no extra hop");
    let c = counts(8);
    assert_eq!(
        c.len(),
        2,
        "eight streams: both devices compute at once: {c:?}"
    );
    assert!(c.iter().all(|&n| n >= 12), "{c:?}");
}

/// A plan of `split` layers on the devices, with the head split as `mode`.
fn with_head(
    cost: &ModelCost,
    devices: &[DeviceSpec],
    speeds: &[Option<DeviceSpeed>],
    split: Vec<u32>,
    mode: HeadSplit,
) -> Plan {
    let opts = PlanOptions {
        strategy: Strategy::Split(split),
        head_split: mode,
        ..PlanOptions::default()
    };
    plan_with_speeds(cost, devices, speeds, &opts).unwrap()
}

#[test]
fn head_splits_when_the_links_are_fast_and_not_when_slow() {
    let cost = model(8);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    // A head of twice a layer (2 ms), a round trip of 0.1 ms: two halves
    // at once save about 1 ms a token.
    let fast = [Some(speed(1.0, 0.1)), Some(speed(1.0, 0.1))];
    let whole = with_head(&cost, &devices, &fast, vec![4, 4], HeadSplit::Off);
    let split = with_head(&cost, &devices, &fast, vec![4, 4], HeadSplit::Auto);
    assert!(whole.head_shares.is_empty());
    let rows: Vec<_> = split.head_shares.iter().map(|h| h.rows.clone()).collect();
    assert_eq!(
        rows,
        [0..16_000, 16_000..32_000],
        "equal speeds, equal halves"
    );
    let before = predict(&whole, &cost, &devices, &fast, 1, 64);
    let after = predict(&split, &cost, &devices, &fast, 1, 64);
    assert!(after.head.is_some() && before.head.is_none());
    assert!(
        after.decode_tok_s > before.decode_tok_s * 1.05,
        "{} vs {}",
        after.decode_tok_s,
        before.decode_tok_s
    );
    // The matrix (32 MiB) left the last stage; each share holds half.
    let out = |p: &Plan| p.stages.iter().map(|s| s.output_bytes).collect::<Vec<_>>();
    assert_eq!(out(&whole), [0, 32 * MIB]);
    let shared = out(&split);
    assert!(shared[0] > 16 * MIB && shared[0] < 17 * MIB, "{shared:?}");
    assert!(shared[1] > 16 * MIB && shared[1] < 17 * MIB, "{shared:?}");
    assert!(split
        .to_string()
        .contains("output head split by vocabulary rows"));

    // Behind a 5 ms round trip a second round trip costs more than half
    // the head saves.
    let far = [Some(speed(1.0, 0.1)), Some(speed(1.0, 5.0))];
    let p = with_head(&cost, &devices, &far, vec![4, 4], HeadSplit::Auto);
    assert!(p.head_shares.is_empty());
    // Asked for, it splits anyway, in proportion to each device's head.
    let slow_head = [Some(speed(1.0, 0.1)), Some(speed(3.0, 0.1))];
    let p = with_head(&cost, &devices, &slow_head, vec![4, 4], HeadSplit::On);
    let rows: Vec<u32> = p
        .head_shares
        .iter()
        .map(|h| h.rows.end - h.rows.start)
        .collect();
    assert_eq!(rows.iter().sum::<u32>(), 32_000);
    assert_eq!(rows[0] % head::ROW_QUANTUM, 0);
    assert!(rows[0] > 2 * rows[1], "{rows:?}");
}

#[test]
fn head_stays_whole_without_speeds_room_or_a_second_device() {
    let cost = model(8);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    // Auto needs speeds; on does not (equal shares).
    let p = with_head(&cost, &devices, &[], vec![4, 4], HeadSplit::Auto);
    assert!(p.head_shares.is_empty());
    let p = with_head(&cost, &devices, &[], vec![4, 4], HeadSplit::On);
    assert_eq!(p.head_shares.len(), 2);
    // Every layer on one device: nobody to share with.
    let p = with_head(&cost, &devices, &[], vec![8, 0], HeadSplit::On);
    assert!(p.head_shares.is_empty());
    // A first device with no room for its share keeps the head whole.
    let tight = [dev(1, 4 * 8 * MIB * 2 + 300 * MIB), dev(2, 8 * GIB)];
    let whole = with_head(&cost, &tight, &[], vec![4, 4], HeadSplit::Off);
    let room = whole.stages[0].free_after.unwrap() - whole.reserve;
    assert!(
        room < 16 * MIB,
        "the fixture must leave less than a share: {room}"
    );
    let p = with_head(&cost, &tight, &[], vec![4, 4], HeadSplit::On);
    assert!(p.head_shares.is_empty());
}

#[test]
fn throughput_uses_a_second_device_when_sharing_the_head_pays() {
    let cost = model(8);
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    // A 0.5 ms round trip: a second stage costs 3% of a token, so with the
    // head whole one device is fastest; sharing the head (6 ms) saves more.
    let big_head = || {
        let mut s = speed(1.0, 0.5);
        s.head = Curve(vec![(1, 6e-3), (8, 24e-3)]);
        Some(s)
    };
    let speeds = [big_head(), big_head()];
    let plan = |mode| {
        let opts = PlanOptions {
            strategy: Strategy::Throughput,
            head_split: mode,
            ..PlanOptions::default()
        };
        plan_with_speeds(&cost, &devices, &speeds, &opts).unwrap()
    };
    let counts = |p: &Plan| p.stages.iter().map(Stage::n_layers).collect::<Vec<_>>();
    let whole = plan(HeadSplit::Off);
    assert_eq!(counts(&whole), [8]);
    let shared = plan(HeadSplit::Auto);
    assert_eq!(counts(&shared), [4, 4]);
    assert_eq!(shared.head_shares.len(), 2);
    let (a, b) = (
        predict(&whole, &cost, &devices, &speeds, 1, 64),
        predict(&shared, &cost, &devices, &speeds, 1, 64),
    );
    assert!(b.decode_tok_s > a.decode_tok_s * 1.02);
}

#[test]
fn auto_keeps_the_head_whole_for_an_engine_of_several_streams() {
    let mut cost = model(8);
    cost.n_seq_max = 8;
    let devices = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    let fast = [Some(speed(1.0, 0.1)), Some(speed(1.0, 0.1))];
    let p = with_head(&cost, &devices, &fast, vec![4, 4], HeadSplit::Auto);
    assert!(p.head_shares.is_empty());
    let p = with_head(&cost, &devices, &fast, vec![4, 4], HeadSplit::On);
    assert_eq!(p.head_shares.len(), 2);
}

#[test]
fn a_spare_graph_slot_takes_the_share_of_the_head_and_no_layers() {
    let cost = model(8);
    let spare = |port, device| DeviceSpec {
        device,
        ..dev(port, 8 * GIB)
    };
    // Two servers, each serving its CPU twice.
    let devices = [spare(1, 0), spare(1, 1), spare(2, 0), spare(2, 1)];
    let fast = Some(speed(1.0, 0.1));
    let speeds = vec![fast.clone(); 4];
    let plan = |strategy, mode| {
        let opts = PlanOptions {
            strategy,
            head_split: mode,
            ..PlanOptions::default()
        };
        plan_with_speeds(&cost, &devices, &speeds, &opts).unwrap()
    };
    let servers = |targets: Vec<&Target>| {
        targets
            .into_iter()
            .map(|t| match t {
                Target::Remote { server, .. } => *server,
                Target::Local => usize::MAX,
            })
            .collect::<Vec<_>>()
    };
    for strategy in [Strategy::Even, Strategy::Memory, Strategy::Throughput] {
        let p = plan(strategy.clone(), HeadSplit::On);
        let stages = servers(p.stages.iter().map(|s| &s.target).collect());
        assert!(
            !stages.contains(&1) && !stages.contains(&3),
            "{strategy}: {stages:?}"
        );
        assert_eq!(p.excluded.len(), 2, "{strategy}");
        assert!(p.excluded[0].reason.contains("second graph slot"));
    }
    let p = plan(Strategy::Even, HeadSplit::On);
    assert_eq!(
        servers(p.stages.iter().map(|s| &s.target).collect()),
        [0, 2]
    );
    assert_eq!(
        servers(p.head_shares.iter().map(|h| &h.target).collect()),
        [1, 3]
    );
    assert_eq!(
        p.head_shares.iter().map(|h| h.stage).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(
        p.stages.iter().map(|s| s.spare_slot).collect::<Vec<_>>(),
        [Some(1), Some(1)]
    );
    assert!(
        p.to_string().contains(
            "spare graph slots (prompt chunks, shares of the head): 10.0.0.1:1/1 for 10.0.0.1:1/0"
        ),
        "{p}"
    );
    // A split that names the slots gives them layers or not, as told.
    let s = plan(Strategy::Split(vec![4, 0, 4, 0]), HeadSplit::On);
    assert_eq!(s.stages, p.stages);
    assert_eq!(s.head_shares, p.head_shares);
    assert!(s.excluded.is_empty());
    let taken = plan(Strategy::Split(vec![4, 4, 0, 0]), HeadSplit::On);
    assert_eq!(
        servers(taken.head_shares.iter().map(|h| &h.target).collect()),
        [0, 1],
        "the slot of device 0 runs a stage: each share stays on its stage's device"
    );
    assert!(taken.stages.iter().all(|s| s.spare_slot.is_none()));

    // Neither graph is sent again per step: the same plan on servers with
    // one slot each decodes slower by the cost model.
    let plain = [dev(1, 8 * GIB), dev(2, 8 * GIB)];
    let plain_speeds = vec![fast.clone(); 2];
    let opts = PlanOptions {
        strategy: Strategy::Even,
        head_split: HeadSplit::On,
        ..PlanOptions::default()
    };
    let q = plan_with_speeds(&cost, &plain, &plain_speeds, &opts).unwrap();
    let with_slots = predict(&p, &cost, &devices, &speeds, 1, 64);
    let without = predict(&q, &cost, &plain, &plain_speeds, 1, 64);
    let (a, b) = (with_slots.head.unwrap(), without.head.unwrap());
    assert!(
        a.decode_ms < b.decode_ms,
        "{} vs {}",
        a.decode_ms,
        b.decode_ms
    );
    assert!(with_slots.decode_tok_s > without.decode_tok_s);
    assert!(with_slots
        .left_out
        .iter()
        .all(|l| l.reason.contains("share of the output head")));
}

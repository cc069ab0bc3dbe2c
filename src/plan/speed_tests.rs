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

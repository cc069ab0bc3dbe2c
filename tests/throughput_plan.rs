//! The throughput strategy on real workers, one behind a slow emulated
//! link: it measures both, then leaves the far one out (or gives it few
//! layers), where the memory strategy splits the layers evenly between two
//! equal machines. Checked through `shardline plan` and through the engine.

mod common;

use std::process::{Command, Output, Stdio};

use common::{model_path, start_worker};
use shardline::engine::{Engine, EngineOptions, GenerateRequest, Prompt};
use shardline::plan::{Plan, Strategy, Target};
use shardline::relay::{LinkSpec, Relay};
use shardline::sample::SamplerConfig;

/// 50 ms each way: a far machine. A tenth of a second a token is several
/// times what this model's 30 layers cost on either worker, even on a busy
/// test machine.
const SLOW: &str = "delay=50ms";

fn shardline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run shardline")
}

fn layers_on(p: &Plan, endpoint: &str) -> u32 {
    p.stages
        .iter()
        .filter(|s| matches!(&s.target, Target::Remote { endpoint: e, .. } if e == endpoint))
        .map(|s| s.n_layers())
        .sum()
}

/// Layers on `endpoint` in the JSON of a plan's stages.
fn json_layers_on(stages: &serde_json::Value, endpoint: &str) -> u64 {
    stages
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["target"]["endpoint"] == endpoint)
        .map(|s| s["layers"]["end"].as_u64().unwrap() - s["layers"]["start"].as_u64().unwrap())
        .sum()
}

#[test]
fn plan_leaves_out_the_worker_behind_a_slow_link() {
    let (near, far) = (start_worker(&[]), start_worker(&[]));
    let relay = Relay::start(far.endpoint, LinkSpec::parse(SLOW).unwrap()).unwrap();
    let slow = relay.addr().to_string();
    let model = model_path();
    // The slow one first: in order, it is where the first layers would go.
    let rpc = format!("{slow},{}", near.endpoint);
    let args = |strategy: &'static str, json: bool| {
        let mut a = vec![
            "plan".to_string(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--rpc".into(),
            rpc.clone(),
            "--ctx".into(),
            "512".into(),
            "--strategy".into(),
            strategy.into(),
        ];
        if json {
            a.push("--json".into());
        }
        a
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = shardline(&refs);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    // By memory, two equal machines share the layers.
    let mem: serde_json::Value = serde_json::from_str(&run(args("memory", true))).unwrap();
    assert!(json_layers_on(&mem["stages"], &slow) >= 10, "{mem}");

    let text = run(args("throughput", false));
    assert!(text.contains("strategy throughput"), "{text}");
    assert!(
        text.contains("decode ms") && text.contains("predicted: decode"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&run(args("throughput", true))).unwrap();
    let on_slow = json_layers_on(&v["plan"]["stages"], &slow);
    assert!(on_slow <= 3, "the slow worker got {on_slow} layers: {v}");
    // The measured round trip shows the link: 100 ms there, far less here.
    let rtt = |i: usize| v["speeds"][i]["rtt_s"].as_f64().unwrap();
    assert!(rtt(0) >= 0.09 && rtt(1) < 0.02, "{v}");
    if on_slow == 0 {
        assert!(text.contains(&format!("left out: {slow}/0")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_plans_by_throughput_and_generates() {
    let (near, far) = (start_worker(&[]), start_worker(&[]));
    let relay = Relay::start(far.endpoint, LinkSpec::parse(SLOW).unwrap()).unwrap();
    let slow = relay.addr().to_string();
    let engine = Engine::load(EngineOptions {
        model: model_path(),
        servers: vec![slow.clone(), near.endpoint.to_string()],
        n_ctx: 512,
        n_batch: 64,
        strategy: Strategy::Throughput,
        hash_memo: shardline::engine::HashMemo::Off,
        ..EngineOptions::default()
    })
    .await
    .expect("load");
    let p = engine.current_plan();
    assert_eq!(p.strategy, Strategy::Throughput);
    assert!(layers_on(&p, &slow) <= 3, "{p}");
    let predicted = engine.prediction().expect("a throughput plan is predicted");
    assert!(predicted.decode_tok_s > 0.0, "{predicted:?}");
    let (text, usage) = engine
        .generate(GenerateRequest {
            prompt: Prompt::Text("The capital of France is".into()),
            max_tokens: 4,
            sampler: SamplerConfig::greedy(),
            stop: Vec::new(),
            stop_at_eog: false,
        })
        .expect("generate")
        .collect_text()
        .await
        .expect("text");
    assert_eq!(usage.completion_tokens, 4, "{text:?}");
}

#[test]
fn simulate_from_a_gguf_header_alone() {
    let model = std::fs::read(model_path()).unwrap();
    let dir = std::env::temp_dir().join(format!("shardline-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The header and tensor infos, none of the data.
    let header = dir.join("header.gguf");
    std::fs::write(&header, &model[..4 << 20]).unwrap();
    let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cluster-example.json");
    let out = shardline(&[
        "bench",
        "--model",
        header.to_str().unwrap(),
        "--simulate",
        cluster,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for layout in ["memory", "even", "throughput"] {
        assert!(
            text.lines().any(|l| l.starts_with(layout)),
            "{layout}: {text}"
        );
    }
    // The model fits the fast GPU: the CPU box only slows it down.
    assert!(text.contains("left out cpu64/0"), "{text}");

    // A description with a zero bandwidth is refused with its name.
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"devices":[{"name":"x","memory_gib":1,"mem_gbps":0,"gflops":1,"rtt_ms":1,"link_gbit":1}]}"#,
    )
    .unwrap();
    let out = shardline(&[
        "bench",
        "--model",
        header.to_str().unwrap(),
        "--simulate",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("mem_gbps") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A server's second CPU device is a spare graph slot of the first: it is
/// not measured again but takes the first's speed, and the throughput
/// plan gives it no layers but the stage's prompt chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_slot_takes_its_devices_speed_and_no_layers() {
    let w = start_worker(&["--device", "CPU,CPU"]);
    let endpoint = w.endpoint.to_string();
    let reports = shardline::cluster::probe_all(
        std::slice::from_ref(&endpoint),
        shardline::rpc::ClientOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(reports[0].devices.len(), 2);
    let g = shardline::gguf::Gguf::open(model_path()).unwrap();
    let speeds = shardline::measure::measure_model(&model_path(), &g, &reports, 32, 1)
        .await
        .unwrap();
    assert_eq!(speeds.len(), 2);
    assert!(speeds[0].is_some(), "{speeds:?}");
    // Measured twice, two devices would not time to the same nanosecond.
    assert_eq!(speeds[1], speeds[0]);

    let engine = Engine::load(EngineOptions {
        model: model_path(),
        servers: vec![endpoint.clone()],
        n_ctx: 512,
        n_batch: 64,
        strategy: Strategy::Throughput,
        hash_memo: shardline::engine::HashMemo::Off,
        ..EngineOptions::default()
    })
    .await
    .expect("load");
    let p = engine.current_plan();
    assert_eq!(p.stages.len(), 1, "{p}");
    assert_eq!(p.stages[0].spare_slot, Some(1), "{p}");
    assert_eq!(p.excluded.len(), 1, "{p}");
    let left = engine.prediction().expect("predicted").left_out.clone();
    assert!(
        left.iter()
            .any(|l| l.device == 1 && l.reason.contains("graph slot")),
        "{left:?}"
    );
}

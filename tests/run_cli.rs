//! `shardline run` and `shardline plan` as a user runs them.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::llama_ref::LlamaRef;
use common::{model_path, rpc, start_worker};
use shardline::engine::{Engine, EngineOptions, Event, GenerateRequest, Prompt};
use shardline::plan::Strategy;
use shardline::sample::SamplerConfig;

fn shardline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run shardline")
}

#[test]
fn run_prints_llama_cpp_greedy_text_and_stats() {
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let model = model_path();
    let prompt = "The capital of France is";
    let mut reference = LlamaRef::load(&model, &[], 256);
    let toks = reference.tokenize(prompt, true);
    let want: Vec<u8> = reference
        .greedy(&toks, 32)
        .into_iter()
        .flat_map(|t| reference.piece(t))
        .collect();
    drop(reference);

    let out = shardline(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--rpc",
        &rpc(&[&w1, &w2]),
        "--prompt",
        prompt,
        "--temperature",
        "0",
        "--max-tokens",
        "32",
        "--ctx",
        "256",
        "--stats",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&want)
    );

    let line = stderr.lines().last().expect("a stats line");
    let stats: serde_json::Value = serde_json::from_str(line).expect("stats are one JSON line");
    for key in [
        "load_s",
        "prompt_tokens",
        "prompt_tok_s",
        "gen_tokens",
        "gen_tok_s",
    ] {
        assert!(stats[key].is_number(), "{key} missing in {line}");
    }
    assert_eq!(stats["gen_tokens"], 32);
    assert_eq!(stats["prompt_tokens"], toks.len());
}

#[test]
fn run_chat_without_servers_starts_local_workers() {
    let model = model_path();
    let out = shardline(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--chat",
        "--prompt",
        "What is 2+2?",
        "--temperature",
        "0",
        "--max-tokens",
        "24",
        "--ctx",
        "512",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains('4'), "{stdout:?}");
    assert!(
        !stdout.contains("<|im_end|>"),
        "generation stops at the end-of-turn token: {stdout:?}"
    );
}

#[test]
fn plan_too_big_fails_before_upload_naming_the_short_device() {
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let model = model_path();
    let started = Instant::now();
    let out = shardline(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--rpc",
        &rpc(&[&w1, &w2]),
        "--prompt",
        "hi",
        "--ctx",
        "4000000000",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("short by"), "{err}");
    assert!(
        err.contains(&w1.endpoint.to_string()) || err.contains(&w2.endpoint.to_string()),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn plan_prints_the_split_it_was_given() {
    let ws = [start_worker(&[]), start_worker(&[]), start_worker(&[])];
    let model = model_path();
    let out = shardline(&[
        "plan",
        "--model",
        model.to_str().unwrap(),
        "--rpc",
        &rpc(&[&ws[0], &ws[1], &ws[2]]),
        "--split",
        "5,20,5",
        "--ctx",
        "1024",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (w, layers) in ws.iter().zip(["0-4 (5)", "5-24 (20)", "25-29 (5)"]) {
        let row = text
            .lines()
            .find(|l| l.contains(&w.endpoint.to_string()))
            .unwrap_or_else(|| panic!("no row for {}: {text}", w.endpoint));
        assert!(row.contains(layers), "{row}");
    }
    let bad = shardline(&[
        "plan",
        "--model",
        model.to_str().unwrap(),
        "--rpc",
        &rpc(&[&ws[0], &ws[1]]),
        "--split",
        "5,20",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("30"),
        "names the layer count"
    );
}

#[tokio::test]
async fn server_dying_mid_generation_is_a_clear_error() {
    let w1 = start_worker(&[]);
    let mut w2 = start_worker(&[]);
    let victim = w2.endpoint.to_string();
    let e = Engine::load(EngineOptions {
        strategy: Strategy::Memory,
        model: model_path(),
        servers: vec![w1.endpoint.to_string(), victim.clone()],
        n_ctx: 256,
        n_batch: 64,
        threads: 1,
        progress: false,
        ..EngineOptions::default()
    })
    .await
    .unwrap();
    let req = GenerateRequest {
        prompt: Prompt::Text("Once upon a time".into()),
        max_tokens: 200,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        stop_at_eog: false,
    };
    let started = Instant::now();
    let mut stream = e.generate(req).unwrap();
    let mut pieces = 0;
    let mut error = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Event::Text(_) => {
                pieces += 1;
                if pieces == 3 {
                    w2.kill();
                }
            }
            Event::Done(u) => panic!("generation must fail once a server is gone, got {u:?}"),
            Event::Error(err) => error = Some(err),
        }
    }
    let msg = error.expect("an error event");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(msg.contains(&victim), "error names the server: {msg}");
    // The engine is recovering (new work waits rather than failing) and
    // reports the lost server.
    let h = e.health();
    assert_eq!(h.status, shardline::engine::Status::Recovering, "{h:?}");
    let lost = h.servers.iter().find(|s| s.endpoint == victim).unwrap();
    assert!(
        !lost.ok && lost.error.as_deref().unwrap_or("").contains(&victim),
        "{h:?}"
    );
}

#[test]
fn local_workers_exit_with_their_parent() {
    let exe = env!("CARGO_BIN_EXE_shardline");
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("{exe} worker --port 0 --exit-with-parent >/dev/null 2>&1 & echo $!; sleep 1"),
        ])
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.split_whitespace().nth(2) == Some("Z"),
    };
    let started = Instant::now();
    while !gone() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "worker {pid} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bench_reports_speeds_as_json() {
    let w = start_worker(&[]);
    let model = model_path();
    let out = shardline(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--rpc",
        &rpc(&[&w]),
        "--ctx",
        "512",
        "--prompt-tokens",
        "16",
        "--gen-tokens",
        "4",
        "--rounds",
        "1",
        "--concurrency",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["prompt_tokens"], 16);
    assert_eq!(v["concurrency"], 2);
    for key in ["load_s", "prompt_tok_s", "gen_tok_s", "total_gen_tok_s"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
}

#[test]
fn errors_are_one_clear_line_without_backtrace() {
    let bad = std::env::temp_dir().join(format!("shardline-not-gguf-{}.gguf", std::process::id()));
    std::fs::write(&bad, b"this is not a model").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["run", "--model", bad.to_str().unwrap(), "--prompt", "x"])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.starts_with("error: loading the model: "), "{err}");
    assert!(err.contains("not a GGUF file"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert_eq!(
        err.matches("not a GGUF file").count(),
        1,
        "causes are not repeated: {err}"
    );
}

#[test]
fn cluster_reports_each_server() {
    let w = start_worker(&[]);
    let out = shardline(&["cluster", "--rpc", &rpc(&[&w]), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["endpoint"], w.endpoint.to_string());
    assert_eq!(v[0]["protocol"], "7.0.0");
    assert_eq!(v[0]["devices"].as_array().unwrap().len(), 1);
    assert!(v[0]["devices"][0]["total"].as_u64().unwrap() > 0);

    // Without --rpc it starts two local workers: a header and two rows.
    let out = shardline(&["cluster"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains("127.0.0.1:")).count(),
        2,
        "{text}"
    );

    let out = shardline(&["cluster", "--rpc", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("probing 127.0.0.1:1"));
}

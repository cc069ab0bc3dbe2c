//! Loading through workers' caches: seeded caches serve the weights, damaged
//! cache files are caught when a worker starts and sent again, tensor hashes
//! are computed once per model file, and per-tensor questions are batched.

mod common;

use std::path::{Path, PathBuf};

use common::llama_ref::LlamaRef;
use common::{model_path, start_worker, Worker};
use shardline::cache::{cache_name, BAD_DIR};
use shardline::engine::{Engine, EngineOptions, Event, GenerateRequest, HashMemo, Prompt};
use shardline::gguf::Gguf;
use shardline::plan::Strategy;
use shardline::sample::SamplerConfig;

const N_CTX: u32 = 256;
const N_GEN: usize = 16;
const PROMPT: &str = "The capital of France is";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardline-cacheload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// llama.cpp's greedy continuation of [`PROMPT`] on the coordinator's CPU.
fn expected() -> Vec<i32> {
    let mut reference = LlamaRef::load(&model_path(), &[], N_CTX);
    let toks = reference.tokenize(PROMPT, true);
    reference.greedy(&toks, N_GEN)
}

async fn load(workers: &[Worker], memo: &Path) -> Engine {
    Engine::load(EngineOptions {
        model: model_path(),
        servers: workers.iter().map(|w| w.endpoint.to_string()).collect(),
        n_ctx: N_CTX,
        n_batch: N_CTX,
        strategy: Strategy::Even,
        threads: 2,
        progress: false,
        hash_memo: HashMemo::Dir(memo.to_path_buf()),
        ..EngineOptions::default()
    })
    .await
    .expect("load")
}

async fn greedy(e: &Engine) -> Vec<i32> {
    let toks = e.tokenizer().encode(PROMPT, true, true);
    let mut stream = e
        .generate(GenerateRequest {
            prompt: Prompt::Tokens(toks),
            max_tokens: N_GEN,
            sampler: SamplerConfig::greedy(),
            stop: Vec::new(),
            stop_at_eog: false,
        })
        .unwrap();
    while let Some(ev) = stream.next().await {
        if let Event::Error(err) = ev {
            panic!("{err}");
        }
    }
    stream.token_ids().into_iter().map(|t| t as i32).collect()
}

/// Runs the shardline binary with `args` and its user cache folder in
/// `cache_dir`; it must succeed.
fn shardline(args: &[&str], cache_dir: &Path) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(args)
        .env("SHARDLINE_CACHE_DIR", cache_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The cache file name of tensor `name` of the test model.
fn file_of(g: &Gguf, name: &str) -> String {
    cache_name(shardline_protocol::fnv1a_64(g.tensor_bytes(name).unwrap()))
}

#[tokio::test]
async fn seeded_workers_serve_the_weights_and_output_equals_llama_cpp() {
    let dir = tmp("seeded");
    let model = model_path();
    let want = expected();
    let caches = [dir.join("a"), dir.join("b")];
    let workers: Vec<Worker> = caches
        .iter()
        .map(|c| {
            start_worker(&[
                "--cache",
                c.to_str().unwrap(),
                "--seed",
                model.to_str().unwrap(),
            ])
        })
        .collect();
    let e = load(&workers, &dir.join("memo")).await;
    let st = e.load_stats().clone();
    assert!(st.weight_bytes > 0);
    assert_eq!(st.sent_bytes, 0, "{st:?}");
    assert_eq!(st.cached_bytes, st.weight_bytes, "{st:?}");
    let file_bytes = std::fs::metadata(&model).unwrap().len();
    let on_wire: u64 = st.servers.iter().map(|s| s.wire_bytes_sent).sum();
    assert!(
        on_wire * 100 < file_bytes,
        "{on_wire} bytes crossed the sockets, 1% of the model is {}",
        file_bytes / 100
    );
    for s in &st.servers {
        assert!(s.round_trips <= 30, "{s:?}");
    }
    assert_eq!(greedy(&e).await, want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn damaged_cache_files_are_caught_at_start_and_sent_again() {
    let dir = tmp("damaged");
    let model = model_path();
    let g = Gguf::open(&model).unwrap();
    let want = expected();
    let cache = dir.join("cache");
    // Seed with the CLI (the path for llama.cpp's own rpc-server).
    shardline(
        &[
            "seed",
            "--cache",
            cache.to_str().unwrap(),
            model.to_str().unwrap(),
        ],
        &dir,
    );
    let (a, b) = ("blk.3.attn_q.weight", "blk.7.ffn_down.weight");
    let (fa, fb) = (file_of(&g, a), file_of(&g, b));
    // Truncate one file; flip one byte in the other.
    let len = std::fs::metadata(cache.join(&fa)).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(cache.join(&fa))
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let mut bytes = std::fs::read(cache.join(&fb)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(cache.join(&fb), bytes).unwrap();

    let worker = start_worker(&["--cache", cache.to_str().unwrap()]);
    assert!(
        cache.join(BAD_DIR).join(&fa).is_file(),
        "truncated file not moved aside"
    );
    assert!(
        cache.join(BAD_DIR).join(&fb).is_file(),
        "changed file not moved aside"
    );

    let e = load(std::slice::from_ref(&worker), &dir.join("memo")).await;
    let st = e.load_stats().clone();
    let resent = g.tensor(a).unwrap().n_bytes() + g.tensor(b).unwrap().n_bytes();
    assert_eq!(
        st.sent_bytes, resent,
        "only the damaged tensors are sent: {st:?}"
    );
    assert_eq!(st.cached_bytes + st.sent_bytes, st.weight_bytes);
    assert_eq!(greedy(&e).await, want);
    // The server kept the resent tensors in its cache again, intact.
    assert_eq!(
        std::fs::read(cache.join(&fa)).unwrap(),
        g.tensor_bytes(a).unwrap()
    );
    drop(e);
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_cold_load_fills_the_cache_for_the_next() {
    let dir = tmp("fill");
    let cache = dir.join("cache");
    let worker = start_worker(&["--cache", cache.to_str().unwrap()]);
    let first = load(std::slice::from_ref(&worker), &dir.join("memo")).await;
    let st = first.load_stats().clone();
    assert_eq!(st.cached_bytes, 0, "{st:?}");
    assert_eq!(st.sent_bytes, st.weight_bytes);
    drop(first);
    // A new connection (the server serves one client at a time).
    let second = load(std::slice::from_ref(&worker), &dir.join("memo")).await;
    let st = second.load_stats().clone();
    assert_eq!(st.sent_bytes, 0, "{st:?}");
    assert_eq!(st.cached_bytes, st.weight_bytes);
    assert!(st.hashes_from_memo);
    assert_eq!(st.hashed_bytes, 0);
    drop(second);
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run --stats` twice on the same file: the second load hashes nothing.
#[test]
fn a_second_run_hashes_nothing() {
    let dir = tmp("run");
    let run = || {
        let m = model_path();
        let out = shardline(
            &[
                "run",
                "--model",
                m.to_str().unwrap(),
                "--prompt",
                "Hi",
                "--max-tokens",
                "2",
                "--ctx",
                "256",
                "--stats",
                "--local-workers",
                "1",
                // Measuring (the throughput strategy) would hash the file
                // before the load does, leaving the load nothing to hash.
                "--strategy",
                "memory",
            ],
            &dir,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().rev().find(|l| l.starts_with('{')).unwrap();
        serde_json::from_str::<serde_json::Value>(line).unwrap()
    };
    let first = run();
    assert!(first["hashed_bytes"].as_u64().unwrap() > 0, "{first}");
    assert!(first["sent_bytes"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["cached_bytes"].as_u64(), Some(0), "{first}");
    let second = run();
    assert_eq!(second["hashed_bytes"].as_u64(), Some(0), "{second}");
    assert!(dir.join("hashes").read_dir().unwrap().count() == 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cold load over an emulated 10 ms link: the client counts at most a few
/// dozen round trips per server (per-tensor questions go in batches), and
/// the output is still llama.cpp's.
#[tokio::test]
async fn a_load_over_a_far_link_takes_a_few_round_trips() {
    use shardline::relay::{LinkSpec, Relay};
    let dir = tmp("far");
    let want = expected();
    let workers = [start_worker(&[]), start_worker(&[])];
    let spec = LinkSpec::parse("delay=10ms").unwrap();
    let relays: Vec<Relay> = workers
        .iter()
        .map(|w| Relay::start(w.endpoint, spec).unwrap())
        .collect();
    let e = Engine::load(EngineOptions {
        model: model_path(),
        servers: relays.iter().map(|r| r.addr().to_string()).collect(),
        n_ctx: N_CTX,
        n_batch: N_CTX,
        strategy: Strategy::Even,
        threads: 2,
        progress: false,
        hash_memo: HashMemo::Dir(dir.join("memo")),
        ..EngineOptions::default()
    })
    .await
    .expect("load");
    let st = e.load_stats().clone();
    assert_eq!(st.servers.len(), 2);
    for s in &st.servers {
        assert!(s.round_trips <= 30, "{s:?}");
    }
    // The relays saw the weights go through them.
    let through: u64 = relays.iter().map(|r| r.stats().client_to_server).sum();
    assert!(through >= st.sent_bytes, "{through} < {}", st.sent_bytes);
    assert_eq!(greedy(&e).await, want);
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad input to the cache commands: one line on stderr, exit 1.
#[test]
fn cache_commands_refuse_bad_input_with_one_line() {
    let dir = tmp("bad");
    let not_gguf = dir.join("not.gguf");
    std::fs::write(&not_gguf, b"hello").unwrap();
    let exe = env!("CARGO_BIN_EXE_shardline");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "worker".into(),
                "--port".into(),
                "0".into(),
                "--seed".into(),
                model_path().display().to_string(),
            ],
            "--seed needs --cache",
        ),
        (
            vec![
                "seed".into(),
                "--cache".into(),
                dir.join("c").display().to_string(),
                not_gguf.display().to_string(),
            ],
            "not.gguf",
        ),
        (
            vec![
                "worker".into(),
                "--port".into(),
                "0".into(),
                "--cache".into(),
                dir.join("c").display().to_string(),
                "--seed".into(),
                not_gguf.display().to_string(),
            ],
            "not.gguf",
        ),
    ];
    for (args, says) in cases {
        let out = std::process::Command::new(exe)
            .args(&args)
            .env("SHARDLINE_LOG", "off")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = std::process::Command::new(exe)
        .args(["worker", "--cache", "x", "--verify-cache", "fast"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown cache check 'fast'"));
    let _ = std::fs::remove_dir_all(&dir);
}

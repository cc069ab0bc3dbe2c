//! `shardline serve` through the official `openai` Python package
//! (tests/openai_client.py): chat, streamed chat, text completion, usage,
//! eight concurrent streams, /metrics with prometheus_client's parser.
//! The Python comes from `$SHARDLINE_TEST_PYTHON` (scripts/test.sh).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::Serve;
use common::{model_path, rpc, start_worker};

const PROMPT: &str = "What is the capital of France? Answer in one sentence.";
const MAX_TOKENS: usize = 24;
/// Context of one sequence: `run` gets it whole, `serve` splits 8 times as
/// much between `--parallel 8`, so both decode over the same KV length.
const SEQ_CTX: u32 = 512;

/// Prompt tokens of `PROMPT` in the model's chat template, counted with the
/// library's tokenizer.
fn chat_prompt_tokens(model: &std::path::Path) -> usize {
    let gguf = shardline::gguf::Gguf::open(model).expect("open the model");
    let tok = shardline::tokenizer::Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let tmpl = shardline::chat::ChatTemplate::from_gguf(&gguf).expect("chat template");
    let text = tmpl
        .render(&[shardline::chat::ChatMessage::new("user", PROMPT)], true)
        .expect("render");
    tok.encode(&text, true, true).len()
}

#[test]
fn official_openai_client() {
    let model = model_path();
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let rpc = rpc(&[&w1, &w2]);

    // The reference first: an rpc-server serves one client at a time.
    let max = MAX_TOKENS.to_string();
    let ctx = SEQ_CTX.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--rpc",
            &rpc,
            "--chat",
            "--prompt",
            PROMPT,
        ])
        .args([
            "--temperature",
            "0",
            "--max-tokens",
            &max,
            "--ctx",
            &ctx,
            "--stats",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run shardline run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "shardline run failed: {stderr}");
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert!(!text.is_empty());
    let stats: serde_json::Value =
        serde_json::from_str(stderr.lines().last().expect("a stats line")).expect("stats JSON");
    let prompt_tokens = chat_prompt_tokens(&model);
    assert_eq!(stats["prompt_tokens"], prompt_tokens, "{stats}");

    let total_ctx = (SEQ_CTX * 8).to_string();
    let serve = Serve::start(&[
        "--model",
        model.to_str().unwrap(),
        "--rpc",
        &rpc,
        "--parallel",
        "8",
        "--ctx",
        &total_ctx,
    ]);
    serve.wait_ready(Duration::from_secs(120));

    let expect = serde_json::json!({
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "text": text,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": stats["gen_tokens"],
    });
    common::python_checks(
        "openai_client.py",
        &[&format!("http://{}/v1", serve.addr), &expect.to_string()],
        || serve.stderr(),
    );
}

//! Structured output, tools and log-probabilities through the official
//! `openai` Python package (tests/openai_structured.py), against a real
//! `shardline serve` over two real workers: JSON-schema answers validated
//! with the `jsonschema` package, a tool call round trip, log-probability
//! consistency, n > 1, penalties and bias, and a 400 naming an unsupported
//! field. The Python comes from `$SHARDLINE_TEST_PYTHON` (scripts/test.sh).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::Serve;
use common::{model_path, start_worker};

#[test]
fn structured_output_tools_and_logprobs() {
    let python = std::env::var("SHARDLINE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("SHARDLINE_TEST_PYTHON is not set: run scripts/test.sh (it makes a venv with openai and jsonschema)")
    });
    let model = model_path();
    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let rpc = format!("{},{}", w1.endpoint, w2.endpoint);
    let serve = Serve::start(&[
        "--model",
        model.to_str().unwrap(),
        "--rpc",
        &rpc,
        "--parallel",
        "4",
        "--ctx",
        "4096",
    ]);
    serve.wait_ready(Duration::from_secs(120));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_structured.py");
    let out = Command::new(&python)
        .args([script, &format!("http://{}/v1", serve.addr)])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai_structured.py failed:\n{stdout}\n{stderr}\nserve stderr:\n{}",
        serve.stderr()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    eprintln!("{stdout}");
}

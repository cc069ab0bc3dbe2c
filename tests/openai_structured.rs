//! Structured output, tools and log-probabilities through the official
//! `openai` Python package (tests/openai_structured.py), against a real
//! `shardline serve` over two real workers: JSON-schema answers validated
//! with the `jsonschema` package, a tool call round trip, log-probability
//! consistency, n > 1, penalties and bias, and a 400 naming an unsupported
//! field. The Python comes from `$SHARDLINE_TEST_PYTHON` (scripts/test.sh).

mod common;

use std::time::Duration;

use common::http::Serve;
use common::{model_path, start_worker};

#[test]
fn structured_output_tools_and_logprobs() {
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
    common::python_checks(
        "openai_structured.py",
        &[&format!("http://{}/v1", serve.addr)],
        || serve.stderr(),
    );
}

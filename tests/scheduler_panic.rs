//! A scheduler that panics (injected in test builds) leaves the engine
//! unavailable, saying so, instead of healthy and silent. Its own test
//! binary: the injection is a process-wide environment variable.

mod common;

use std::time::{Duration, Instant};

use common::{model_path, start_worker};
use shardline::engine::{Engine, EngineOptions, GenerateRequest, Prompt, Status, SubmitError};

#[tokio::test]
async fn a_scheduler_panic_marks_the_engine_unavailable() {
    let w = start_worker(&[]);
    std::env::set_var("SHARDLINE_TEST_SCHEDULER_PANIC", "1");
    let e = Engine::load(EngineOptions {
        model: model_path(),
        servers: vec![w.endpoint.to_string()],
        n_ctx: 256,
        n_batch: 256,
        threads: 1,
        progress: false,
        ..EngineOptions::default()
    })
    .await
    .expect("load");
    let start = Instant::now();
    while e.health().status != Status::Unavailable {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            e.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = e.health();
    assert!(!h.ok);
    assert!(h.error.unwrap().contains("panicked"));
    let refused = e
        .generate(GenerateRequest::new(Prompt::Text("hi".into())))
        .unwrap_err();
    assert!(matches!(refused, SubmitError::Unavailable(_)), "{refused}");
}

//! A worker that dies, hangs or goes quiet: the engine notices within
//! seconds, ends what was in flight with a clear error, reconnects and
//! reloads when the worker is back, and serves again without a restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::llama_ref::LlamaRef;
use common::model_path;
use shardline::engine::{Engine, EngineOptions, Event, GenerateRequest, HashMemo, Prompt, Status};
use shardline::plan::Strategy;
use shardline::sample::SamplerConfig;

const N_CTX: u32 = 256;
const PROMPT: &str = "The capital of France is";

/// A `shardline worker` on a port of our choosing, so it can come back on
/// the same one. Killed by pid on drop.
struct PortWorker {
    child: Child,
    port: u16,
}

impl PortWorker {
    fn start(port: u16) -> PortWorker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(["worker", "--host", "127.0.0.1", "--threads", "1"])
            .args(["--port", &port.to_string()])
            .env("SHARDLINE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("shardline worker ready") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("worker ready");
        PortWorker { child, port }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PortWorker {
    fn drop(&mut self) {
        // A stopped process must be continued to die cleanly.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn expected(n: usize) -> Vec<i32> {
    let mut reference = LlamaRef::load(&model_path(), &[], N_CTX);
    let toks = reference.tokenize(PROMPT, true);
    reference.greedy(&toks, n)
}

async fn engine(workers: &[&PortWorker]) -> Engine {
    engine_with(workers, Duration::from_secs(10)).await
}

async fn engine_with(workers: &[&PortWorker], replan_after: Duration) -> Engine {
    let memo = std::env::temp_dir().join(format!("shardline-recovery-{}", std::process::id()));
    Engine::load(EngineOptions {
        model: model_path(),
        servers: workers.iter().map(|w| w.endpoint()).collect(),
        n_ctx: N_CTX,
        n_batch: N_CTX,
        strategy: Strategy::Even,
        threads: 1,
        progress: false,
        hash_memo: HashMemo::Dir(memo),
        replan_after,
        ..EngineOptions::default()
    })
    .await
    .expect("load")
}

fn request(max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text(PROMPT.into()),
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        stop_at_eog: false,
    }
}

/// Streams a long request and does `act` after the third piece of text;
/// returns the error the stream ended with and how long after `act` it came.
async fn fail_midstream(e: &Engine, act: impl FnOnce()) -> (String, Duration) {
    let mut stream = e.generate(request(200)).unwrap();
    let mut pieces = 0;
    let mut act = Some(act);
    let mut acted = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Event::Text(_) => {
                pieces += 1;
                if pieces == 3 {
                    if let Some(a) = act.take() {
                        a();
                        acted = Some(Instant::now());
                    }
                }
            }
            Event::Done(u) => panic!("generation must fail, got {u:?}"),
            Event::Error(err) => {
                return (err, acted.expect("failed after acting").elapsed());
            }
        }
    }
    panic!("the stream ended without an error event");
}

async fn wait_status(e: &Engine, want: Status, within: Duration) {
    let start = Instant::now();
    loop {
        let h = e.health();
        if h.status == want {
            return;
        }
        assert!(start.elapsed() < within, "still {h:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn greedy(e: &Engine, n: usize) -> Vec<i32> {
    let mut stream = e.generate(request(n)).unwrap();
    while let Some(ev) = stream.next().await {
        if let Event::Error(err) = ev {
            panic!("{err}");
        }
    }
    stream.token_ids().into_iter().map(|t| t as i32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_back_on_its_port_is_reloaded_and_serves_again() {
    let want = expected(12);
    let w1 = PortWorker::start(free_port());
    let mut w2 = PortWorker::start(free_port());
    let e = engine(&[&w1, &w2]).await;
    let victim = w2.endpoint();

    let (err, after) = fail_midstream(&e, || w2.kill()).await;
    assert!(after < Duration::from_secs(2), "error after {after:?}");
    assert!(err.contains(&victim), "the error names the server: {err}");
    wait_status(&e, Status::Recovering, Duration::from_secs(5)).await;
    let h = e.health();
    let lost = h.servers.iter().find(|s| s.endpoint == victim).unwrap();
    assert!(!lost.ok, "{h:?}");
    // A request made while recovering waits, then is served.
    let waiting = e.generate(request(12)).unwrap();

    let port = w2.port;
    drop(w2);
    let _back = PortWorker::start(port);
    wait_status(&e, Status::Ok, Duration::from_secs(30)).await;
    let (text, usage) = waiting.collect_text().await.expect("served after recovery");
    assert!(!text.is_empty() && usage.completion_tokens == 12);
    assert_eq!(greedy(&e, 12).await, want);
    assert_eq!(e.metrics().recoveries(), 1);
    assert!(e.health().servers.iter().all(|s| s.ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_worker_is_detected_in_seconds_and_serving_resumes() {
    let want = expected(12);
    let w1 = PortWorker::start(free_port());
    let w2 = PortWorker::start(free_port());
    let e = engine(&[&w1, &w2]).await;
    // Warm the step clock: a few steps of each size.
    for _ in 0..2 {
        greedy(&e, 4).await;
    }
    let (err, after) = fail_midstream(&e, || w2.signal("-STOP")).await;
    assert!(
        after < Duration::from_secs(5),
        "hang noticed after {after:?}"
    );
    assert!(err.contains(&w2.endpoint()), "{err}");
    wait_status(&e, Status::Recovering, Duration::from_secs(5)).await;
    w2.signal("-CONT");
    wait_status(&e, Status::Ok, Duration::from_secs(30)).await;
    assert_eq!(greedy(&e, 12).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_that_dies_shows_in_health() {
    let w1 = PortWorker::start(free_port());
    let mut w2 = PortWorker::start(free_port());
    let e = engine(&[&w1, &w2]).await;
    assert!(e.health().ok);
    w2.kill();
    // Keepalive probes run every 2 s on an idle engine.
    wait_status(&e, Status::Recovering, Duration::from_secs(10)).await;
    let h = e.health();
    assert!(h.recovery.is_some(), "{h:?}");
    let dead = h
        .servers
        .iter()
        .find(|s| s.endpoint == w2.endpoint())
        .unwrap();
    assert!(!dead.ok, "{h:?}");
    assert!(
        h.servers.iter().any(|s| s.ok),
        "the other server is fine: {h:?}"
    );
}

/// Three workers where two suffice: one dies for good, and serving goes on
/// over the other two after the model is planned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_is_planned_around_when_the_others_suffice() {
    let want = expected(12);
    let w1 = PortWorker::start(free_port());
    let mut w2 = PortWorker::start(free_port());
    let w3 = PortWorker::start(free_port());
    let e = engine_with(&[&w1, &w2, &w3], Duration::from_secs(1)).await;
    assert_eq!(e.current_plan().stages.len(), 3);
    let victim = w2.endpoint();
    let (err, _) = fail_midstream(&e, || w2.kill()).await;
    assert!(err.contains(&victim), "{err}");
    wait_status(&e, Status::Degraded, Duration::from_secs(30)).await;
    let h = e.health();
    assert!(h.ok, "a degraded engine serves: {h:?}");
    let lost = h.servers.iter().find(|s| s.endpoint == victim).unwrap();
    assert!(!lost.ok, "{h:?}");
    let plan = e.current_plan();
    assert_eq!(plan.stages.len(), 2, "{plan}");
    assert!(!plan.to_string().contains(&victim), "{plan}");
    assert_eq!(
        plan.stages.iter().map(|s| s.layers.len()).sum::<usize>(),
        30
    );
    assert_eq!(greedy(&e, 12).await, want);
}

//! Greedy output of the sharded engine equals llama.cpp's, token for token,
//! for several prompts (one through the chat template) and several layouts of
//! the model over real workers.

mod common;

use common::llama_ref::LlamaRef;
use common::{model_path, start_worker, Worker};
use shardline::chat::{ChatMessage, ChatTemplate};
use shardline::engine::{Engine, EngineOptions, Event, GenerateRequest, Prompt};
use shardline::plan::{HeadSplit, Strategy};
use shardline::sample::SamplerConfig;

const N_CTX: u32 = 256;
const N_GEN: usize = 32;

struct Case {
    name: &'static str,
    workers: usize,
    strategy: Strategy,
    local_layers: u32,
    head_split: HeadSplit,
}

fn prompts() -> Vec<String> {
    let g = shardline::gguf::Gguf::open(model_path()).unwrap();
    let chat = ChatTemplate::from_gguf(&g)
        .unwrap()
        .render(&[ChatMessage::new("user", "Name three colors.")], true)
        .unwrap();
    vec![
        "The capital of France is".to_string(),
        "def fibonacci(n):\n    ".to_string(),
        chat,
    ]
}

async fn engine(workers: &[Worker], case: &Case) -> Engine {
    Engine::load(EngineOptions {
        model: model_path(),
        servers: workers.iter().map(|w| w.endpoint.to_string()).collect(),
        n_ctx: N_CTX,
        n_batch: N_CTX,
        strategy: case.strategy.clone(),
        local_layers: case.local_layers,
        head_split: case.head_split,
        threads: 1,
        progress: false,
        ..EngineOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{}: load failed: {e}", case.name))
}

/// Greedy tokens of `e` for the first `n` of [`prompts`] equal llama.cpp's.
async fn first_prompts_equal_llama_cpp(e: &Engine, n: usize) {
    let mut reference = LlamaRef::load(&model_path(), &[], N_CTX);
    for prompt in prompts().iter().take(n) {
        let toks = reference.tokenize(prompt, true);
        let want = reference.greedy(&toks, N_GEN);
        let req = GenerateRequest {
            prompt: Prompt::Tokens(toks.iter().map(|&t| t as u32).collect()),
            max_tokens: N_GEN,
            sampler: SamplerConfig::greedy(),
            stop: Vec::new(),
            stop_at_eog: false,
        };
        let mut stream = e.generate(req).unwrap();
        while let Some(ev) = stream.next().await {
            if let Event::Error(err) = ev {
                panic!("{err}");
            }
        }
        let got: Vec<i32> = stream.token_ids().into_iter().map(|t| t as i32).collect();
        assert_eq!(got, want, "prompt {prompt:?}");
    }
}

#[tokio::test]
async fn greedy_tokens_equal_llama_cpp_on_every_layout() {
    let cases = [
        Case {
            name: "1 server",
            workers: 1,
            strategy: Strategy::Even,
            local_layers: 0,
            head_split: HeadSplit::Off,
        },
        Case {
            name: "2 servers even",
            workers: 2,
            strategy: Strategy::Even,
            local_layers: 0,
            head_split: HeadSplit::Off,
        },
        Case {
            name: "3 servers 5,20,5",
            workers: 3,
            strategy: Strategy::Split(vec![5, 20, 5]),
            local_layers: 0,
            head_split: HeadSplit::Off,
        },
        Case {
            name: "local layers + 2 servers",
            workers: 2,
            strategy: Strategy::Even,
            local_layers: 6,
            head_split: HeadSplit::Off,
        },
        // The output matrix split by rows over every server with layers,
        // each share computed at the same time as the others.
        Case {
            name: "2 servers even, head split",
            workers: 2,
            strategy: Strategy::Even,
            local_layers: 0,
            head_split: HeadSplit::On,
        },
        Case {
            name: "3 servers 5,20,5, head split",
            workers: 3,
            strategy: Strategy::Split(vec![5, 20, 5]),
            local_layers: 0,
            head_split: HeadSplit::On,
        },
        Case {
            name: "local layers + 2 servers, head split",
            workers: 2,
            strategy: Strategy::Even,
            local_layers: 6,
            head_split: HeadSplit::On,
        },
    ];
    let mut reference = LlamaRef::load(&model_path(), &[], N_CTX);
    let expected: Vec<(Vec<i32>, Vec<i32>)> = prompts()
        .iter()
        .map(|p| {
            let toks = reference.tokenize(p, true);
            let want = reference.greedy(&toks, N_GEN);
            (toks, want)
        })
        .collect();
    drop(reference);

    for case in &cases {
        let workers: Vec<Worker> = (0..case.workers).map(|_| start_worker(&[])).collect();
        let e = engine(&workers, case).await;
        assert_eq!(
            e.plan().stages.len(),
            case.workers + usize::from(case.local_layers > 0),
            "{}",
            case.name
        );
        let shares = if case.head_split == HeadSplit::On {
            case.workers
        } else {
            0
        };
        assert_eq!(e.plan().head_shares.len(), shares, "{}", case.name);
        for (prompt, (ref_toks, want)) in prompts().iter().zip(&expected) {
            let toks = e.tokenizer().encode(prompt, true, true);
            let ours: Vec<i32> = toks.iter().map(|&t| t as i32).collect();
            assert_eq!(&ours, ref_toks, "{}: tokenization of {prompt:?}", case.name);
            let req = GenerateRequest {
                prompt: Prompt::Tokens(toks),
                max_tokens: N_GEN,
                sampler: SamplerConfig::greedy(),
                stop: Vec::new(),
                stop_at_eog: false,
            };
            let mut stream = e.generate(req).unwrap();
            let mut usage = None;
            while let Some(ev) = stream.next().await {
                match ev {
                    Event::Done(u) => usage = Some(u),
                    Event::Error(err) => panic!("{}: {err}", case.name),
                    Event::Text(_) => {}
                }
            }
            let got: Vec<i32> = stream.token_ids().into_iter().map(|t| t as i32).collect();
            assert_eq!(&got, want, "{}: prompt {prompt:?}", case.name);
            assert_eq!(usage.unwrap().completion_tokens, N_GEN);
        }
        if case.local_layers > 0 {
            // The coordinator's stage builds a graph per step shape once and
            // runs it again after that.
            let text = e.metrics_text();
            let local = |name: &str| -> f64 {
                text.lines()
                    .find(|l| l.starts_with(name) && l.contains("server=\"local\""))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} for local in {text}"))
            };
            let steps = local("shardline_stage_steps_total");
            let built = local("shardline_graphs_sent_total");
            assert!(steps >= 90.0, "{}: {steps} local steps", case.name);
            assert!(
                (1.0..=8.0).contains(&built),
                "{}: {built} local graphs built",
                case.name
            );
        }
    }
}

/// A server with two devices gets a stage on each, over one connection,
/// and a share of the split output head on each.
#[tokio::test]
async fn two_devices_of_one_server_share_its_connection() {
    let worker = start_worker(&["--device", "CPU,CPU"]);
    let case = Case {
        name: "1 server, 2 devices",
        workers: 1,
        strategy: Strategy::Split(vec![12, 18]),
        local_layers: 0,
        head_split: HeadSplit::On,
    };
    let e = engine(std::slice::from_ref(&worker), &case).await;
    let devices: Vec<u32> = e
        .plan()
        .stages
        .iter()
        .map(|s| match &s.target {
            shardline::plan::Target::Remote { device, .. } => *device,
            shardline::plan::Target::Local => panic!("no local stage"),
        })
        .collect();
    assert_eq!(devices, [0, 1]);
    // Each device also computes a share of the output head, taking turns
    // with its stage in the device's graph slot.
    assert_eq!(e.plan().head_shares.len(), 2);

    first_prompts_equal_llama_cpp(&e, 2).await;
}

/// Servers that list their CPU twice offer a spare graph slot: the plan
/// gives it no layers and runs the server's share of the split head there,
/// so neither the share nor the stage evicts the other's stored graph.
/// Tokens still equal llama.cpp's, and no server is sent a graph per step
/// (with the share in the stage's own slot, both graphs go out every step).
#[tokio::test]
async fn spare_graph_slots_keep_every_stage_graph_stored() {
    let workers: Vec<Worker> = (0..2)
        .map(|_| start_worker(&["--device", "CPU,CPU"]))
        .collect();
    let case = Case {
        name: "2 servers with spare slots, head split",
        workers: 2,
        strategy: Strategy::Even,
        local_layers: 0,
        head_split: HeadSplit::On,
    };
    let e = engine(&workers, &case).await;
    let plan = e.plan();
    let at = |t: &shardline::plan::Target| match t {
        shardline::plan::Target::Remote {
            endpoint, device, ..
        } => (endpoint.clone(), *device),
        shardline::plan::Target::Local => panic!("no local stage"),
    };
    let eps: Vec<String> = workers.iter().map(|w| w.endpoint.to_string()).collect();
    let stages: Vec<_> = plan.stages.iter().map(|s| at(&s.target)).collect();
    assert_eq!(stages, [(eps[0].clone(), 0), (eps[1].clone(), 0)]);
    let shares: Vec<_> = plan.head_shares.iter().map(|h| at(&h.target)).collect();
    assert_eq!(shares, [(eps[0].clone(), 1), (eps[1].clone(), 1)]);
    assert_eq!(
        plan.head_shares.iter().map(|h| h.stage).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(plan.excluded.len(), 2, "{:?}", plan.excluded);
    assert!(plan.to_string().contains("second graph slot"), "{plan}");

    first_prompts_equal_llama_cpp(&e, 2).await;
    let text = e.metrics_text();
    let value = |name: &str, ep: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("server=\"{ep}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for {ep} in\n{text}"))
    };
    for ep in &eps {
        let steps = value("shardline_stage_steps_total", ep);
        let sent = value("shardline_graphs_sent_total", ep);
        assert!(steps >= 2.0 * N_GEN as f64, "{ep}: {steps} steps");
        // A graph per step shape (prompt, decode) and slot, per prompt at most.
        assert!(sent <= 8.0, "{ep}: {sent} graphs sent in {steps} steps");
    }
}

/// Two stages on one server share its connection: when the later stage grows
/// its compute buffer (FREE_BUFFER), the server forgets the earlier stage's
/// stored graph, which must then be sent again rather than re-run. A prompt
/// in equal chunks after a short one makes exactly that happen; the tokens
/// must equal those of the same chunking on two separate servers.
#[tokio::test]
async fn graphs_dropped_by_another_stage_are_sent_again() {
    async fn tokens(servers: Vec<String>, split: Vec<u32>) -> Vec<Vec<u32>> {
        let e = Engine::load(EngineOptions {
            model: model_path(),
            servers,
            n_ctx: N_CTX,
            n_batch: 32,
            strategy: Strategy::Split(split),
            threads: 1,
            progress: false,
            ..EngineOptions::default()
        })
        .await
        .unwrap();
        assert!(
            e.model_name().starts_with("SmolLM2-135M-Instruct"),
            "{}",
            e.model_name()
        );
        let long = "Tell me everything about the history of printing, ".repeat(8);
        let mut out = Vec::new();
        for prompt in ["Hi", long.as_str()] {
            let req = GenerateRequest {
                prompt: Prompt::Text(prompt.to_string()),
                max_tokens: 8,
                sampler: SamplerConfig::greedy(),
                stop: Vec::new(),
                stop_at_eog: false,
            };
            let mut s = e.generate(req).unwrap();
            while let Some(ev) = s.next().await {
                if let Event::Error(err) = ev {
                    panic!("{err}");
                }
            }
            out.push(s.token_ids());
        }
        out
    }
    let one = start_worker(&["--device", "CPU,CPU"]);
    let shared = tokens(vec![one.endpoint.to_string()], vec![12, 18]).await;
    let (a, b) = (start_worker(&[]), start_worker(&[]));
    let separate = tokens(
        vec![a.endpoint.to_string(), b.endpoint.to_string()],
        vec![12, 18],
    )
    .await;
    assert_eq!(shared, separate);
}

/// A share of the head with rows the output matrix does not have is a
/// clear error before anything is sent.
#[tokio::test]
async fn a_head_share_outside_the_vocabulary_is_refused() {
    use shardline::exec::head::HeadShard;
    use shardline::load::UploadError;
    let worker = start_worker(&[]);
    let g = shardline::gguf::Gguf::open(model_path()).unwrap();
    let cfg = shardline::model::LlamaConfig::from_gguf(&g).unwrap();
    let client = shardline::rpc::RpcClient::connect(
        &worker.endpoint.to_string(),
        shardline::rpc::ClientOptions::default(),
    )
    .await
    .unwrap();
    let shared = std::sync::Arc::new(tokio::sync::Mutex::new(client));
    let n_vocab = cfg.hp.n_vocab;
    for rows in [n_vocab - 10..n_vocab + 10, 5..5] {
        let err = HeadShard::load(shared.clone(), 0, &g, &cfg, rows.clone(), 1, &|_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::BadShare(_)), "{rows:?}: {err}");
        assert!(err.to_string().contains("output head"), "{err}");
    }
    // The connection is still good.
    shared.lock().await.sync().await.unwrap();
}

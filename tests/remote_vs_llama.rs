//! Stages on real workers give llama.cpp's greedy tokens.

mod common;

use common::llama_ref::LlamaRef;
use common::pipeline::greedy;
use common::{model_path, start_worker};
use shardline::exec::local::LocalStage;
use shardline::exec::pipeline::{Pipeline, StageRunner};
use shardline::exec::remote::RemoteStage;
use shardline::exec::Embedder;
use shardline::gguf::Gguf;
use shardline::model::LlamaConfig;
use shardline::rpc::{ClientOptions, RpcClient};

#[tokio::test]
async fn split_on_workers_matches_llama_cpp() {
    let g = Gguf::open(model_path()).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let workers = [start_worker(&[]), start_worker(&[])];
    let mut stages = Vec::new();
    stages.push(StageRunner::Local(
        LocalStage::new(&g, &cfg, 0..4, false, 256, 1).unwrap(),
    ));
    for (w, (layers, head)) in workers.iter().zip([(4..20, false), (20..30, true)]) {
        let c = RpcClient::connect(&w.endpoint.to_string(), ClientOptions::default())
            .await
            .unwrap();
        let s = RemoteStage::load(
            std::sync::Arc::new(tokio::sync::Mutex::new(c)),
            0,
            &g,
            &cfg,
            layers,
            head,
            256,
            256,
            &shardline::load::TensorHashes::start(&g, &model_path(), None, &[], 1),
            &|_, _| {},
        )
        .await
        .unwrap();
        stages.push(StageRunner::Remote(Box::new(s)));
    }
    let embedder = Embedder::new(&g, &cfg).unwrap();
    let mut p = Pipeline::new(cfg, embedder, stages, 256);
    let mut reference = LlamaRef::load(&model_path(), &[], 256);
    for prompt in ["The capital of France is", "def fibonacci(n):"] {
        let toks = reference.tokenize(prompt, true);
        let want = reference.greedy(&toks, 32);
        let toks_u: Vec<u32> = toks.iter().map(|&t| t as u32).collect();
        let got: Vec<i32> = greedy(&mut p, &toks_u, 32)
            .await
            .into_iter()
            .map(|t| t as i32)
            .collect();
        assert_eq!(got, want, "prompt {prompt:?}");
    }
}

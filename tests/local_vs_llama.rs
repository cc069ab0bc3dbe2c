//! The forward graph on the coordinator's CPU alone gives llama.cpp's greedy
//! tokens (checks the graph before any server is involved).

mod common;

use common::llama_ref::LlamaRef;
use common::model_path;
use common::pipeline::greedy;
use shardline::exec::local::LocalStage;
use shardline::exec::pipeline::{Pipeline, StageRunner};
use shardline::exec::Embedder;
use shardline::gguf::Gguf;
use shardline::model::LlamaConfig;

#[tokio::test]
async fn all_layers_on_the_coordinator_match_llama_cpp() {
    let g = Gguf::open(model_path()).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let n_layer = cfg.hp.n_layer;
    let stage = LocalStage::new(&g, &cfg, 0..n_layer, true, 256, 2).unwrap();
    let embedder = Embedder::new(&g, &cfg).unwrap();
    let mut p = Pipeline::new(cfg, embedder, vec![StageRunner::Local(stage)], 256);

    let mut reference = LlamaRef::load(&model_path(), &[], 256);
    for prompt in [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a land far",
    ] {
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

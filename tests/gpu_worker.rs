//! A GPU rpc-server against llama.cpp on the CPU, for the device check
//! (`scripts/gpu-check.sh`): each family whose heads ggml's GPU attention
//! kernels take (64 wide) runs with every layer on the GPU server, then
//! split between it and a CPU `shardline worker`; greedy tokens and first
//! logits are compared with llama.cpp's CPU run of the same file.
//!
//! Runs only where `SHARDLINE_GPU_RPC=host:port` names a GPU server (a GPU
//! build of `shardline worker`, or ggml's own server built for one); CI has
//! no GPU, so there the test says it skipped and passes.

mod common;

use common::families::*;
use common::start_worker;
use common::synth::{self, id_prompts, max_abs_diff, remote_stage, remote_stage_at};
use shardline::exec::pipeline::{Pipeline, StageRunner};
use shardline::exec::Embedder;
use shardline::gguf::Gguf;
use shardline::model::LlamaConfig;

/// GPU arithmetic (other kernels, other summation orders, activations
/// rounded to 8 bits for quantized weights in another block order) is not
/// the CPU's bit for bit: first logits may differ by this fraction of the
/// largest one.
const LOGIT_TOLERANCE: f32 = 2e-2;

#[tokio::test]
async fn gpu_server_matches_llama_cpp_on_the_cpu() {
    let Ok(gpu) = std::env::var("SHARDLINE_GPU_RPC") else {
        eprintln!("SKIP: SHARDLINE_GPU_RPC is not set (no GPU server to check)");
        return;
    };
    // What the server says about itself, and the kind read from it.
    let reports = shardline::cluster::probe_all(std::slice::from_ref(&gpu), Default::default())
        .await
        .unwrap_or_else(|(ep, e)| panic!("probing {ep}: {e}"));
    println!("{}", serde_json::to_string_pretty(&reports).unwrap());
    print!("{}", shardline::cluster::ClusterTable(&reports));
    let kind = reports[0].devices[0].kind();
    assert!(
        kind.is_gpu(),
        "{gpu}: device 0 reads as {kind:?}, not a GPU"
    );
    if let Ok(want) = std::env::var("SHARDLINE_GPU_KIND") {
        assert_eq!(kind.short(), want, "{gpu}: device kind");
    }

    let cpu = start_worker(&[]);
    let mut failures = Vec::new();
    for f in [Family::Qwen3, Family::Qwen3Moe, Family::Gemma3] {
        let m = write_model(f, "gpu", &Extra::default());
        let prompts = id_prompts(N_VOCAB, &[(1, 12), (2, 40)]);
        let want = synth::reference(&m.0, &prompts, N_CTX, N_GEN);
        let g = Gguf::open(&m.0).unwrap();
        let cfg = LlamaConfig::from_gguf(&g).unwrap();
        let pipeline = |stages: Vec<StageRunner>| {
            Pipeline::new(cfg.clone(), Embedder::new(&g, &cfg).unwrap(), stages, N_CTX)
        };
        let all = remote_stage_at(&gpu, &m.0, &g, &cfg, 0..N_LAYER, true, N_CTX).await;
        let mut p = pipeline(vec![StageRunner::Remote(all.into())]);
        compare(
            &mut p,
            &prompts,
            &want,
            &format!("{f:?}: all on the GPU"),
            &mut failures,
        )
        .await;
        drop(p);

        let a = remote_stage_at(&gpu, &m.0, &g, &cfg, 0..1, false, N_CTX).await;
        let b = remote_stage(&cpu, &m.0, &g, &cfg, 1..N_LAYER, true, N_CTX).await;
        let mut p = pipeline(vec![
            StageRunner::Remote(a.into()),
            StageRunner::Remote(b.into()),
        ]);
        let what = format!("{f:?}: GPU then CPU worker");
        compare(&mut p, &prompts, &want, &what, &mut failures).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs the prompts through `p`; records where tokens or logits differ
/// from llama.cpp's instead of stopping, so one run shows every case.
async fn compare(
    p: &mut Pipeline,
    prompts: &[Vec<u32>],
    want: &[(Vec<u32>, Vec<f32>)],
    what: &str,
    failures: &mut Vec<String>,
) {
    for (prompt, (want_toks, want_logits)) in prompts.iter().zip(want) {
        let (got, logits) = common::pipeline::greedy_with_logits(p, prompt, want_toks.len()).await;
        let diff = max_abs_diff(&logits, want_logits);
        let scale = want_logits
            .iter()
            .fold(0f32, |m, x| m.max(x.abs()))
            .max(1.0);
        let same = got
            .iter()
            .zip(want_toks)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "{what}: prompt of {}: logits max |diff| {diff:.2e} ({:.2e} of max |logit| {scale:.2}); \
             {same} of {} greedy tokens as llama.cpp's CPU run",
            prompt.len(),
            diff / scale,
            want_toks.len()
        );
        if logits.iter().any(|x| !x.is_finite()) {
            failures.push(format!(
                "{what}: prompt of {}: logits not finite",
                prompt.len()
            ));
        } else if diff > LOGIT_TOLERANCE * scale {
            failures.push(format!(
                "{what}: prompt of {}: logits differ by {diff:e}",
                prompt.len()
            ));
        }
        if got[0] != want_toks[0] {
            failures.push(format!(
                "{what}: prompt of {}: first token {} where llama.cpp picks {}",
                prompt.len(),
                got[0],
                want_toks[0]
            ));
        }
    }
}

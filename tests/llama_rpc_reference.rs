//! llama.cpp's own RPC client loads and runs the test model on two
//! `shardline worker`s: the workers are wire-compatible with llama.cpp.

mod common;

use common::llama_ref::{rpc_devices, LlamaRef};
use common::{model_path, start_worker};

#[test]
fn llama_cpp_rpc_client_runs_smollm2_on_two_workers() {
    let w1 = start_worker(&[]);
    let w2 = start_worker(&[]);
    let devices = rpc_devices(&[w1.endpoint, w2.endpoint]);
    assert_eq!(devices.len(), 2, "one device per worker");

    let mut remote = LlamaRef::load(&model_path(), &devices, 256);
    let prompt = remote.tokenize("The capital of France is", true);
    let got = remote.greedy(&prompt, 12);
    let text: Vec<u8> = got.iter().flat_map(|&t| remote.piece(t)).collect();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("Paris"), "unexpected continuation: {text:?}");

    // The same model computed by llama.cpp on the local CPU gives the same tokens.
    let mut local = LlamaRef::load(&model_path(), &[], 256);
    assert_eq!(
        local.greedy(&prompt, 12),
        got,
        "remote and local greedy tokens differ"
    );
}

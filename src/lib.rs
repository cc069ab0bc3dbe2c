//! shardline: run one llama-family model across several llama.cpp `rpc-server`s
//! from a native Rust coordinator.
//!
//! Data flows one way: [`gguf`] (read the model) → plan → upload → graph → exec
//! → engine → server. [`rpc`] is the client side of ggml's RPC wire protocol and
//! depends only on `shardline-protocol`.
// The one exception is the read-only mmap of a model file in `gguf::mmap`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod arch;
pub mod cache;
pub mod chat;
pub mod cluster;
pub mod constrain;
pub mod discover;
pub mod engine;
pub mod exec;
pub mod gguf;
pub mod graph;
pub mod inspect;
pub mod kv;
pub mod layouts;
pub mod load;
pub mod measure;
pub mod memcap;
pub mod model;
pub mod ollama;
pub mod plan;
pub mod progress;
pub mod relay;
pub mod rpc;
pub mod sample;
#[cfg(feature = "server")]
pub mod server;
pub mod tokenizer;
pub mod worker;

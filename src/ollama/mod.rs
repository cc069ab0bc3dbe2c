//! Models pulled with Ollama, used in place: `--model llama3.1:70b`.
//!
//! [`store`] reads Ollama's on-disk store (manifests and sha256-named blobs)
//! and finds the GGUF file behind a name, with the template, system prompt
//! and parameters layers beside it. It only reads files; nothing here talks
//! to an Ollama server or a registry.

pub mod store;

pub use store::{
    default_roots, resolve_model_arg, ModelName, ModelSource, NotFound, OllamaModel, Params, Store,
    StoreError,
};

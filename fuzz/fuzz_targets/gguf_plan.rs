//! Fuzz the whole path from a model file to a placement: arbitrary bytes →
//! GGUF → llama hyperparameters, bounded and cross-checked against the
//! tensors → memory cost → plan on a fixed fake cluster. Every input must
//! give plans or a typed error: no panic, no abort, no huge allocation.
//!
//! The `gguf` and `plan` modules are compiled in directly, as in
//! `gguf_parse.rs`, so the fuzz build does not need ggml; `plan` reaches the
//! rest of the crate only through `crate::gguf`. A crash found here becomes a
//! file in `tests/data/hostile/`, which `tests/hostile_gguf.rs` replays.
#![no_main]

// The family descriptions: the GGUF checks read per-layer shapes from them.
#[path = "../../src/arch/mod.rs"]
#[allow(dead_code, unused_imports)]
mod arch;

#[path = "../../src/gguf/mod.rs"]
#[allow(dead_code, unused_imports)]
mod gguf;

#[path = "../../src/plan/mod.rs"]
#[allow(dead_code, unused_imports)]
mod plan;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = plan::fuzz::plan_bytes(data);
});

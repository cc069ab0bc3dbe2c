//! Fuzz the GGUF parser: arbitrary bytes must give a parsed file or a typed
//! error, never a panic, an abort or an out-of-bounds read.
#![no_main]

// The family descriptions: the GGUF checks read per-layer shapes from them.
#[path = "../../src/arch/mod.rs"]
#[allow(dead_code, unused_imports)]
mod arch;

#[path = "../../src/gguf/mod.rs"]
#[allow(dead_code, unused_imports)]
mod gguf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The header-only parse (for planning from a header saved on its own)
    // must not panic either; its tensors may lie past the input.
    if let Ok(h) = gguf::GgufContent::parse_header(data) {
        for info in h.tensors() {
            std::hint::black_box(h.tensor_data(data, info).map(<[u8]>::len));
        }
    }
    let Ok(content) = gguf::GgufContent::parse(data) else {
        return;
    };
    // Touch every tensor's bytes: each slice must lie inside the input.
    let mut sum = 0u8;
    for info in content.tensors() {
        let bytes = content
            .tensor_data(data, info)
            .expect("a parsed tensor lies inside the file");
        assert_eq!(bytes.len() as u64, info.n_bytes());
        sum = bytes.iter().fold(sum, |a, &b| a.wrapping_add(b));
    }
    std::hint::black_box(sum);
    // Metadata is fully materialized: walk it too.
    for (key, value) in content.metadata().iter() {
        std::hint::black_box((key.len(), value.to_string()));
    }
});

//! candle (an independent GGUF reader and dequantiser) as the reference for
//! ours: the tensor table (names, shapes, types, offsets) of the test model
//! and of a file our writer made, and every tensor's values, decoded by
//! candle from its own reading of the file and by ggml's conversion from
//! the bytes our reader points at.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use shardline::gguf::Gguf;

/// Checks the tables agree; returns how many tensors' values were compared.
fn agree_with_candle(path: &Path) -> usize {
    let ours = Gguf::open(path).unwrap();
    let mut file = std::fs::File::open(path).unwrap();
    let theirs = gguf_file::Content::read(&mut file).unwrap();
    assert_eq!(
        ours.data_offset(),
        theirs.tensor_data_offset,
        "{}: start of the tensor data",
        path.display()
    );
    let names: Vec<&str> = ours.tensors().iter().map(|t| t.name()).collect();
    let their_names: BTreeMap<&str, _> = theirs
        .tensor_infos
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    assert_eq!(
        names.len(),
        their_names.len(),
        "{}: tensor count",
        path.display()
    );
    let mut compared = 0;
    for t in ours.tensors() {
        let c = their_names
            .get(t.name())
            .unwrap_or_else(|| panic!("candle has no tensor {}", t.name()));
        // candle lists dimensions outermost first, GGUF innermost first.
        let dims: Vec<usize> = t.dims().iter().rev().map(|&d| d as usize).collect();
        assert_eq!(c.shape.dims(), dims.as_slice(), "{}: shape", t.name());
        // candle names its types as ggml does, in capitals (Q4_1, F16).
        let their_type = format!("{:?}", c.ggml_dtype).to_lowercase();
        assert_eq!(their_type, t.ty().name(), "{}: type", t.name());
        assert_eq!(c.offset, t.offset(), "{}: offset", t.name());

        let want: Vec<f32> = c
            .read(&mut file, theirs.tensor_data_offset, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let bytes = ours.tensor_bytes(t.name()).unwrap();
        let mut got = vec![0f32; t.n_elements() as usize];
        ggml_sys::to_f32(t.ty().id(), bytes, &mut got).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0f32, f32::max);
        // Both decode the same blocks: scale × quant (+ min) in f32, so
        // only the order of operations may differ.
        assert!(
            worst <= 1e-5,
            "{}: values differ by up to {worst:e} (relative)",
            t.name()
        );
        compared += 1;
    }
    compared
}

#[test]
fn reader_and_dequantisation_agree_with_candle_on_the_test_model() {
    let n = agree_with_candle(&common::model_path());
    assert!(n > 200, "only {n} tensors");
}

#[test]
fn candle_reads_what_our_writer_wrote() {
    use common::families::{write_model, Extra, Family};
    // F32, F16 and Q8_0 tensors, with expert tensors of three dimensions.
    let m = write_model(Family::Qwen3Moe, "candle", &Extra::default());
    assert!(agree_with_candle(&m.0) > 10);
}

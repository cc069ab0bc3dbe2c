//! The GGUF reader on the real test model, SmolLM2-135M-Instruct Q4_1, and on
//! corrupted copies of it.
//!
//! The model is at `$SHARDLINE_TEST_MODEL`, or by default in
//! `~/.cache/shardline/models/`; `scripts/fetch-model.sh` puts it there.

mod common;

use common::model_path;
use std::sync::OnceLock;

use shardline::gguf::llama::{keys, FileType, LlamaHparams};
use shardline::gguf::writer::{GgufWriter, Layout, KV_COUNT_AT, TENSOR_COUNT_AT};
use shardline::gguf::{Gguf, GgufContent, GgufError};
use shardline::inspect::summarize;

fn model() -> &'static Gguf {
    static MODEL: OnceLock<Gguf> = OnceLock::new();
    MODEL.get_or_init(|| Gguf::open(model_path()).expect("the test model parses"))
}

/// The model's bytes, with the layout of every field in them: the model
/// written again by our writer comes out byte for byte identical, so the
/// writer's layout describes the original file.
fn bytes_and_layout() -> &'static (Vec<u8>, Layout) {
    static COPY: OnceLock<(Vec<u8>, Layout)> = OnceLock::new();
    COPY.get_or_init(|| {
        let g = model();
        let mut w = GgufWriter::new();
        w.set_version(g.version());
        w.add_metadata(g.metadata_map());
        for t in g.tensors() {
            w.add_tensor(t.name(), t.ty(), t.dims(), g.tensor_data(t))
                .unwrap();
        }
        let (mut bytes, layout) = w.to_bytes().unwrap();
        // The original ends right after the last tensor's data, without padding.
        bytes.truncate(g.bytes().len());
        assert!(bytes == g.bytes(), "rewriting the model changed its bytes");
        (bytes, layout)
    })
}

fn parse_err(bytes: &[u8], what: &str) -> GgufError {
    match GgufContent::parse(bytes) {
        Ok(_) => panic!("{what}: the corrupted model was accepted"),
        Err(e) => e,
    }
}

fn with_u64(at: usize, v: u64) -> Vec<u8> {
    let mut b = bytes_and_layout().0.clone();
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn summary_of_smollm2() {
    let g = model();
    let s = summarize(g).unwrap();
    assert_eq!(s.architecture, "llama");
    assert_eq!(s.n_layer, 30);
    assert_eq!(s.n_embd, 576);
    assert_eq!(s.n_head, 9);
    assert_eq!(s.n_head_kv, 3);
    assert_eq!(s.n_vocab, 49152);
    assert_eq!(s.head_dim, 64);
    assert_eq!(s.n_ff, 1536);
    assert_eq!(s.n_ctx_train, 8192);
    assert_eq!(
        s.file_type.as_ref().and_then(|f| f.name.as_deref()),
        Some("MOSTLY_Q4_1")
    );
    assert_eq!(s.tokenizer_model.as_deref(), Some("gpt2"));
    assert!(
        s.output_tied,
        "SmolLM2 reuses token_embd.weight as the output projection"
    );
    assert_eq!(s.tensor_count, 272);
    assert_eq!(s.layer_bytes.len(), 30);
    assert!(
        s.layer_bytes.iter().all(|&b| b == s.layer_bytes[0]),
        "all layers are alike"
    );
    assert_eq!(
        s.tensor_bytes,
        s.non_layer_bytes + s.layer_bytes.iter().sum::<u64>()
    );

    let text = s.to_string();
    assert!(text.contains("MOSTLY_Q4_1"), "{text}");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["n_vocab"], 49152);
}

#[test]
fn hyperparameters_and_metadata() {
    let g = model();
    let hp = LlamaHparams::from_metadata(g.metadata_map()).unwrap();
    assert_eq!(hp.rope_freq_base, 100_000.0);
    assert_eq!(hp.rms_eps, 1e-5);
    assert_eq!(hp.n_rot, 64);
    assert_eq!(
        g.get_u32(keys::FILE_TYPE).map(FileType).unwrap().name(),
        Some("MOSTLY_Q4_1")
    );
    assert_eq!(g.get_str(keys::TOKENIZER_PRE).unwrap(), "smollm");
    assert_eq!(g.get_str_array(keys::TOKENS).unwrap().len(), 49152);
    assert_eq!(g.get_i32_array(keys::TOKEN_TYPE).unwrap().len(), 49152);
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims(), [576, 49152]);
    assert_eq!(embd.ty().name(), "q8_0");
    assert!(g.tensor("output.weight").is_none());
}

#[test]
fn every_tensor_lies_inside_the_file() {
    let g = model();
    let bytes = g.bytes();
    let file = bytes.as_ptr_range();
    let mut ranges = Vec::new();
    for t in g.tensors() {
        let data = g.tensor_data(t);
        assert_eq!(data.len() as u64, t.n_bytes(), "{}", t.name());
        let r = data.as_ptr_range();
        assert!(
            file.start <= r.start && r.end <= file.end,
            "{} lies outside the file",
            t.name()
        );
        assert!(t.file_offset() >= g.data_offset());
        assert_eq!(t.file_offset() % u64::from(g.alignment()), 0);
        ranges.push(t.data_range());
    }
    ranges.sort_by_key(|r| r.start);
    assert!(
        ranges.windows(2).all(|w| w[0].end <= w[1].start),
        "tensors overlap"
    );
    assert_eq!(
        ranges.last().unwrap().end,
        bytes.len(),
        "data runs to the end of the file"
    );
}

#[test]
fn truncated_copies_are_rejected() {
    let (bytes, layout) = bytes_and_layout();
    let data = layout.data_offset;
    let tokens_at = layout.kv(keys::TOKENS).unwrap().value_at;
    let cuts = [
        0,
        3,
        7,
        15,
        23,
        100,
        tokens_at + 1000,
        data - 40,
        data - 1,
        data,
        data + 1000,
        bytes.len() / 2,
        bytes.len() - 1,
    ];
    for len in cuts {
        let err = parse_err(&bytes[..len], &format!("cut to {len} bytes"));
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. }
                    | GgufError::CountPastEnd { .. }
                    | GgufError::DataPastEnd { .. }
                    | GgufError::TensorPastEnd { .. }
            ),
            "cut to {len} bytes: {err}"
        );
    }
}

#[test]
fn corrupted_counts_are_rejected() {
    let (_, layout) = bytes_and_layout();
    let n_tensors = layout.tensors.len() as u64;
    let n_kv = layout.kvs.len() as u64;
    // Off by one: the parser reads tensor data as a tensor info, a tensor info
    // as a key-value pair, or a key-value pair as a tensor info, and finds
    // nonsense there. (A tensor count one lower can go unnoticed: the last
    // info then reads as padding and every tensor still lies in the file.)
    for (what, at, v) in [
        ("tensor count + 1", TENSOR_COUNT_AT, n_tensors + 1),
        ("kv count + 1", KV_COUNT_AT, n_kv + 1),
        ("kv count - 1", KV_COUNT_AT, n_kv - 1),
    ] {
        parse_err(&with_u64(at, v), what);
    }
    for (what, at, v) in [
        (
            "tensor count high bit",
            TENSOR_COUNT_AT,
            n_tensors | 1 << 40,
        ),
        ("tensor count max", TENSOR_COUNT_AT, u64::MAX),
        ("kv count high bit", KV_COUNT_AT, n_kv | 1 << 33),
        ("kv count max", KV_COUNT_AT, u64::MAX),
    ] {
        let err = parse_err(&with_u64(at, v), what);
        assert!(
            matches!(err, GgufError::CountOverLimit { .. }),
            "{what}: {err}"
        );
    }
    // At the cap: the infos could fit in the file's 98 MB, but tensor data is
    // no tensor info.
    parse_err(&with_u64(TENSOR_COUNT_AT, 1 << 20), "tensor count 2^20");
}

#[test]
fn corrupted_fields_are_rejected() {
    let (_, layout) = bytes_and_layout();
    let q = layout.tensor("blk.7.attn_q.weight").unwrap();
    let offset = u64::from_le_bytes(
        bytes_and_layout().0[q.offset_at..q.offset_at + 8]
            .try_into()
            .unwrap(),
    );

    let err = parse_err(&with_u64(q.offset_at, offset + 1), "misaligned offset");
    assert!(
        matches!(&err, GgufError::MisalignedTensor { tensor, .. } if tensor == "blk.7.attn_q.weight"),
        "{err}"
    );
    let err = parse_err(&with_u64(q.offset_at, 1 << 40), "offset past the end");
    assert!(
        matches!(&err, GgufError::TensorPastEnd { tensor, .. } if tensor == "blk.7.attn_q.weight"),
        "{err}"
    );
    let err = parse_err(&with_u64(q.offset_at, !31u64), "offset overflowing");
    assert!(matches!(&err, GgufError::TensorPastEnd { .. }), "{err}");
    let err = parse_err(&with_u64(q.offset_at, offset + 64), "overlapping offset");
    assert!(matches!(&err, GgufError::TensorOverlap { .. }), "{err}");

    let err = parse_err(&with_u64(q.dims_at, 577), "dim not a multiple of the block");
    assert!(
        matches!(&err, GgufError::BadShape { tensor, .. } if tensor == "blk.7.attn_q.weight"),
        "{err}"
    );

    let arch = layout.kv(keys::ARCHITECTURE).unwrap();
    let err = parse_err(
        &with_u64(arch.value_at, u64::MAX),
        "architecture string length",
    );
    assert!(
        matches!(
            &err,
            GgufError::CountOverLimit {
                what: "string length",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(keys::ARCHITECTURE), "{err}");
    let err = parse_err(
        &with_u64(arch.value_at, 1 << 20),
        "architecture string length",
    );
    assert!(err.to_string().contains(keys::ARCHITECTURE), "{err}");

    // The first token's length: an array value is element type (4 bytes),
    // count (8), then the strings.
    let tokens = layout.kv(keys::TOKENS).unwrap();
    let err = parse_err(
        &with_u64(tokens.value_at + 12, 1 << 40),
        "token string length",
    );
    assert!(err.to_string().contains(keys::TOKENS), "{err}");
    let err = parse_err(&with_u64(tokens.value_at + 4, 1 << 27), "token count");
    assert!(
        matches!(
            &err,
            GgufError::CountPastEnd {
                what: "array length",
                ..
            }
        ),
        "{err}"
    );

    let mut b = bytes_and_layout().0.clone();
    b[q.type_at..q.type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    let err = parse_err(&b, "unknown tensor type");
    assert!(
        matches!(&err, GgufError::UnknownTensorType { type_id: 77, .. }),
        "{err}"
    );

    let mut b = bytes_and_layout().0.clone();
    b[0] = b'X';
    assert!(matches!(parse_err(&b, "magic"), GgufError::BadMagic { .. }));
}

//! Unit tests: the type table; files built with the writer (every value type,
//! nested arrays, v2 and v3, alignments) read back; then malformed files, one
//! defect each, every one rejected with the error that names it.

use super::writer::{
    put_str, put_u32, put_u64, GgufWriter, Layout, TensorData, KV_COUNT_AT, TENSOR_COUNT_AT,
    VERSION_AT,
};
use super::*;

// ---------------------------------------------------------------------------
// Helpers

fn parse(bytes: &[u8]) -> Result<GgufContent, GgufError> {
    GgufContent::parse(bytes)
}

fn parse_err(bytes: &[u8]) -> GgufError {
    match parse(bytes) {
        Ok(_) => panic!("malformed file was accepted"),
        Err(e) => e,
    }
}

fn patch_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn patch_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Deterministic bytes for tensor data.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// One value of every scalar type, a string, arrays of every element type,
/// and nested arrays.
fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60_000)),
        ("t.i16", Value::I16(-30_000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(1.5e-5)),
        ("t.bool.true", Value::Bool(true)),
        ("t.bool.false", Value::Bool(false)),
        ("t.string", Value::from("héllo, wörld")),
        ("t.string.empty", Value::from("")),
        ("t.u64", Value::U64(u64::MAX - 1)),
        ("t.i64", Value::I64(i64::MIN + 1)),
        ("t.f64", Value::F64(-2.5e300)),
        ("a.u8", Value::from(vec![1u8, 2, 255])),
        ("a.i8", Value::from(vec![-1i8, 0, 127])),
        ("a.u16", Value::from(vec![1u16, 65535])),
        ("a.i16", Value::from(vec![-32768i16, 7])),
        ("a.u32", Value::from(vec![0u32, u32::MAX])),
        ("a.i32", Value::from(vec![i32::MIN, -1, 3])),
        ("a.f32", Value::from(vec![0.0f32, -1.25, f32::INFINITY])),
        ("a.bool", Value::from(vec![true, false, true])),
        ("a.string", Value::from(vec!["a", "", "ünïcode"])),
        ("a.u64", Value::from(vec![u64::MAX])),
        ("a.i64", Value::from(vec![i64::MIN, i64::MAX])),
        ("a.f64", Value::from(vec![1e-300f64, 2.0])),
        ("a.empty", Value::from(Vec::<u32>::new())),
        (
            "a.nested",
            Value::from(vec![
                Array::U32(vec![1, 2, 3]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::F64(vec![0.5]), Array::Bool(vec![])]),
                Array::I8(vec![]),
            ]),
        ),
    ]
}

/// A small valid file: metadata of every type and three tensors.
fn sample_writer() -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama");
    for (k, v) in every_value() {
        w.add_kv(k, v);
    }
    w.add_tensor("a.f32", GgmlType::F32, &[3, 2], pattern(24, 1))
        .unwrap();
    w.add_tensor("b.q4_1", GgmlType::Q4_1, &[64, 2], pattern(4 * 20, 2))
        .unwrap();
    w.add_tensor("c.scalar", GgmlType::I32, &[], pattern(4, 3))
        .unwrap();
    w
}

fn sample() -> (Vec<u8>, Layout) {
    sample_writer().to_bytes().unwrap()
}

/// A file with one key-value pair whose type and value bytes are given raw.
fn raw_kv_file(key: &str, type_id: u32, value: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    put_u32(&mut b, 3);
    put_u64(&mut b, 0);
    put_u64(&mut b, 1);
    put_str(&mut b, key);
    put_u32(&mut b, type_id);
    b.extend_from_slice(value);
    b
}

/// A file with one tensor whose info fields are given raw, followed by `data_len` bytes of data.
fn raw_tensor_file(
    name: &str,
    dims: &[u64],
    type_id: u32,
    offset: u64,
    data_len: usize,
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    put_u32(&mut b, 3);
    put_u64(&mut b, 1);
    put_u64(&mut b, 0);
    put_str(&mut b, name);
    put_u32(&mut b, dims.len() as u32);
    for &d in dims {
        put_u64(&mut b, d);
    }
    put_u32(&mut b, type_id);
    put_u64(&mut b, offset);
    b.resize(b.len().div_ceil(32) * 32 + data_len, 0);
    b
}

// ---------------------------------------------------------------------------
// Type table

#[test]
fn every_type_id_is_known_or_removed() {
    for id in 0..GGML_TYPE_COUNT {
        match GgmlType::from_id(id) {
            TypeLookup::Known(t) => assert_eq!(t.id(), id),
            TypeLookup::Removed(r) => assert_eq!(r.id, id),
            TypeLookup::Unknown(_) => panic!("type id {id} is in neither table"),
        }
    }
    assert_eq!(
        GgmlType::ALL.len() + REMOVED_TYPES.len(),
        GGML_TYPE_COUNT as usize
    );
    for id in [GGML_TYPE_COUNT, 1000, u32::MAX] {
        assert_eq!(GgmlType::from_id(id), TypeLookup::Unknown(id));
    }
}

#[test]
fn type_table_is_ordered_and_sane() {
    for pair in GgmlType::ALL.windows(2) {
        assert!(
            pair[0].id() < pair[1].id(),
            "{} before {}",
            pair[0],
            pair[1]
        );
    }
    for t in GgmlType::ALL {
        assert!(t.block_size() > 0 && t.type_size() > 0, "{t}");
        assert_eq!(t.is_quantized(), t.block_size() > 1, "{t}");
    }
}

#[test]
fn type_facts() {
    let facts = [
        (GgmlType::F32, "f32", 1, 4),
        (GgmlType::F16, "f16", 1, 2),
        (GgmlType::BF16, "bf16", 1, 2),
        (GgmlType::Q4_0, "q4_0", 32, 18),
        (GgmlType::Q4_1, "q4_1", 32, 20),
        (GgmlType::Q8_0, "q8_0", 32, 34),
        (GgmlType::Q4_K, "q4_K", 256, 144),
        (GgmlType::Q6_K, "q6_K", 256, 210),
        (GgmlType::IQ4_NL, "iq4_nl", 32, 18),
        (GgmlType::TQ1_0, "tq1_0", 256, 54),
        (GgmlType::MXFP4, "mxfp4", 32, 17),
        (GgmlType::NVFP4, "nvfp4", 64, 36),
        (GgmlType::Q1_0, "q1_0", 128, 18),
        (GgmlType::I64, "i64", 1, 8),
    ];
    for (t, name, block, size) in facts {
        assert_eq!(
            (t.name(), t.block_size(), t.type_size()),
            (name, block, size)
        );
    }
}

#[test]
fn row_and_byte_sizes() {
    assert_eq!(GgmlType::Q4_1.row_size(576), Ok(18 * 20));
    assert_eq!(GgmlType::Q4_1.byte_size(&[576, 1536]), Ok(18 * 20 * 1536));
    assert_eq!(GgmlType::F32.byte_size(&[]), Ok(4));
    assert_eq!(GgmlType::F32.byte_size(&[7, 0, 3]), Ok(0));
    assert_eq!(
        GgmlType::Q4_1.row_size(33),
        Err(SizeError::NotBlockMultiple {
            ne0: 33,
            block_size: 32
        })
    );
    assert_eq!(
        GgmlType::F32.byte_size(&[1 << 40, 1 << 40]),
        Err(SizeError::Overflow)
    );
    // Elements fit in i64 but bytes do not fit in u64.
    assert_eq!(GgmlType::F32.byte_size(&[1 << 30, 1 << 30]), Ok(1 << 62));
    assert_eq!(
        GgmlType::F64.byte_size(&[1 << 31, 1 << 31]),
        Err(SizeError::Overflow)
    );
    assert_eq!(element_count(&[1 << 62, 2]), Err(SizeError::Overflow));
    assert_eq!(element_count(&[1 << 62, 0]), Ok(0));
}

// ---------------------------------------------------------------------------
// Round trips

#[test]
fn every_value_type_round_trips() {
    let (bytes, _) = sample();
    let c = parse(&bytes).unwrap();
    assert_eq!(c.version(), 3);
    assert_eq!(c.metadata().len(), every_value().len() + 1);
    for (key, value) in every_value() {
        assert_eq!(c.metadata().get(key), Some(&value), "{key}");
    }
    let keys: Vec<&str> = c.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(keys[0], "general.architecture");
    assert_eq!(keys[1], "t.u8", "file order is kept");
}

#[test]
fn tensors_round_trip_with_data() {
    let (bytes, layout) = sample();
    let g = Gguf::from_bytes(bytes.clone()).unwrap();
    assert_eq!(g.tensors().len(), 3);
    assert_eq!(g.data_offset() as usize, layout.data_offset);
    assert_eq!(g.data_offset() % 32, 0);
    let expect = [
        ("a.f32", GgmlType::F32, vec![3, 2], pattern(24, 1)),
        ("b.q4_1", GgmlType::Q4_1, vec![64, 2], pattern(80, 2)),
        ("c.scalar", GgmlType::I32, vec![], pattern(4, 3)),
    ];
    for (name, ty, dims, data) in expect {
        let t = g.tensor(name).unwrap();
        assert_eq!((t.ty(), t.dims()), (ty, dims.as_slice()));
        assert_eq!(t.n_bytes(), data.len() as u64);
        assert_eq!(t.offset() % 32, 0);
        assert_eq!(t.file_offset(), g.data_offset() + t.offset());
        assert_eq!(g.tensor_data(t), data.as_slice());
        assert_eq!(g.tensor_bytes(name).unwrap(), data.as_slice());
        assert_eq!(
            t.file_offset() as usize,
            layout.tensor(name).unwrap().data_at
        );
    }
    assert_eq!(g.tensor("b.q4_1").unwrap().row_bytes(), 40);
    assert_eq!(g.tensor("b.q4_1").unwrap().n_elements(), 128);
    assert!(
        matches!(g.tensor_bytes("nope"), Err(GgufError::NoSuchTensor { name }) if name == "nope")
    );
}

#[test]
fn version_2_reads_like_version_3() {
    let mut w = sample_writer();
    w.set_version(2);
    let (bytes, _) = w.to_bytes().unwrap();
    let v2 = parse(&bytes).unwrap();
    let (bytes3, _) = sample();
    let v3 = parse(&bytes3).unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.metadata(), v3.metadata());
    assert_eq!(v2.tensors(), v3.tensors());
}

#[test]
fn alignments() {
    for alignment in [1u32, 8, 32, 64, 4096] {
        let mut w = sample_writer();
        w.set_alignment(alignment).unwrap();
        let (bytes, _) = w.to_bytes().unwrap();
        let g = Gguf::from_bytes(bytes).unwrap();
        assert_eq!(g.alignment(), alignment);
        assert_eq!(g.get_u32(ALIGNMENT_KEY).unwrap(), alignment);
        assert_eq!(g.data_offset() % u64::from(alignment), 0);
        for t in g.tensors() {
            assert_eq!(
                t.file_offset() % u64::from(alignment),
                0,
                "{} at {alignment}",
                t.name()
            );
        }
        assert_eq!(g.tensor_bytes("b.q4_1").unwrap(), pattern(80, 2).as_slice());
    }
}

#[test]
fn writer_takes_alignment_from_copied_metadata() {
    let mut md = Metadata::new();
    md.insert(ALIGNMENT_KEY, 128u32);
    let mut w = GgufWriter::new();
    w.add_metadata(&md);
    w.add_tensor("x", GgmlType::F16, &[3], pattern(6, 0))
        .unwrap();
    w.add_tensor("y", GgmlType::F16, &[3], pattern(6, 9))
        .unwrap();
    let g = Gguf::from_bytes(w.to_bytes().unwrap().0).unwrap();
    assert_eq!(g.tensor("y").unwrap().offset(), 128);
}

#[test]
fn file_without_tensors_has_no_padding() {
    let mut w = GgufWriter::new();
    w.add_kv("k", "v");
    let (bytes, layout) = w.to_bytes().unwrap();
    let c = parse(&bytes).unwrap();
    assert_eq!(c.data_offset(), bytes.len() as u64);
    assert_eq!(layout.len, bytes.len());
    assert!(c.tensors().is_empty());

    let (empty, _) = GgufWriter::new().to_bytes().unwrap();
    assert_eq!(empty.len(), 24);
    assert!(parse(&empty).unwrap().metadata().is_empty());
}

#[test]
fn generated_tensor_data() {
    let mut w = GgufWriter::new();
    let n = 3 * (1 << 20) + 40; // more than one chunk
    let fill = |offset: u64, chunk: &mut [u8]| {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = ((offset + i as u64) % 251) as u8;
        }
    };
    w.add_tensor(
        "big",
        GgmlType::I8,
        &[n as u64],
        TensorData::Generate(Box::new(fill)),
    )
    .unwrap();
    let g = Gguf::from_bytes(w.to_bytes().unwrap().0).unwrap();
    let data = g.tensor_bytes("big").unwrap();
    assert_eq!(data.len(), n);
    assert!(data.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    assert!(matches!(
        w.set_alignment(48),
        Err(writer::WriteError::BadAlignment(48))
    ));
    assert!(matches!(
        w.add_tensor("short", GgmlType::F32, &[4], vec![0u8; 15]),
        Err(writer::WriteError::DataSize {
            expected: 16,
            got: 15,
            ..
        })
    ));
    assert!(matches!(
        w.add_tensor("odd", GgmlType::Q8_0, &[33], vec![]),
        Err(writer::WriteError::BadShape { .. })
    ));
    w.add_tensor("t", GgmlType::F32, &[1], vec![0u8; 4])
        .unwrap();
    assert!(matches!(
        w.add_tensor("t", GgmlType::F32, &[1], vec![0u8; 4]),
        Err(writer::WriteError::DuplicateTensor(_))
    ));
}

#[test]
fn open_maps_a_file() {
    let dir = std::env::temp_dir().join(format!("shardline-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.gguf");
    sample_writer().write_file(&path).unwrap();
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.tensor_bytes("a.f32").unwrap(), pattern(24, 1).as_slice());

    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        Gguf::open(&empty),
        Err(GgufError::Truncated { offset: 0, .. })
    ));
    let missing = dir.join("missing.gguf");
    let err = Gguf::open(&missing).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("missing.gguf"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// Typed getters

#[test]
fn typed_getters() {
    let g = Gguf::from_bytes(sample().0).unwrap();
    assert_eq!(g.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_i32("t.i32").unwrap(), -2_000_000_000);
    assert_eq!(g.get_u64("t.u64").unwrap(), u64::MAX - 1);
    assert_eq!(g.get_f32("t.f32").unwrap(), 1.5e-5);
    assert!(g.get_bool("t.bool.true").unwrap());
    assert_eq!(g.get_str("t.string").unwrap(), "héllo, wörld");
    assert_eq!(g.get_str_array("a.string").unwrap(), ["a", "", "ünïcode"]);
    assert_eq!(g.get_u32_array("a.u32").unwrap(), [0, u32::MAX]);
    assert_eq!(g.get_i32_array("a.i32").unwrap(), [i32::MIN, -1, 3]);
    assert_eq!(g.get_f32_array("a.f32").unwrap()[1], -1.25);
    assert_eq!(g.get_array("a.nested").unwrap().len(), 4);
    assert_eq!(g.get::<i16>("t.i16").unwrap(), -30_000);
    assert_eq!(g.get::<&[f64]>("a.f64").unwrap(), [1e-300, 2.0]);
    assert_eq!(g.get_opt::<u32>("absent").unwrap(), None);
    assert_eq!(g.metadata("t.u8"), Some(&Value::U8(200)));
    assert_eq!(g.metadata_map().get_unsigned("t.u8").unwrap(), 200);
    assert_eq!(
        g.metadata_map().get_unsigned("t.u64").unwrap(),
        u64::MAX - 1
    );
}

#[test]
fn getter_errors_name_the_key() {
    let g = Gguf::from_bytes(sample().0).unwrap();
    let err = g.get_u32("t.u64").unwrap_err();
    assert!(
        matches!(&err, GgufError::WrongType { key, expected: "u32", found } if key == "t.u64" && found == "u64")
    );
    assert!(err.to_string().contains("'t.u64'"), "{err}");

    let err = g.get_str_array("a.u32").unwrap_err();
    assert!(err.to_string().contains("array of u32"), "{err}");
    assert!(matches!(
        g.get_opt::<&str>("t.u8"),
        Err(GgufError::WrongType { .. })
    ));

    let err = g.get_f32("no.such.key").unwrap_err();
    assert!(matches!(&err, GgufError::MissingKey { key } if key == "no.such.key"));

    assert!(matches!(
        g.metadata_map().get_unsigned("t.i8"),
        Err(GgufError::OutOfRange { .. })
    ));
    assert!(matches!(
        g.metadata_map().get_unsigned("t.f32"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        g.metadata_map().get_unsigned_u32("t.u64"),
        Err(GgufError::OutOfRange { target: "u32", .. })
    ));
}

/// A sparse file holds the bytes a plain write does (zeros read back as
/// zeros), with the data of zero tensors left as holes.
#[test]
fn sparse_file_matches_plain_bytes() {
    let build = || {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "llama");
        w.add_tensor("zeros", GgmlType::F32, &[1 << 20], TensorData::Zeros)
            .unwrap();
        w.add_tensor("data", GgmlType::F32, &[5], pattern(20, 3))
            .unwrap();
        w.add_tensor("tail", GgmlType::F16, &[3], TensorData::Zeros)
            .unwrap();
        w
    };
    let (plain, layout) = build().to_bytes().unwrap();
    let dir = std::env::temp_dir().join(format!("shardline-gguf-sparse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sparse.gguf");
    let sparse_layout = build().write_file_sparse(&path).unwrap();
    let sparse = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(sparse_layout.len, layout.len);
    assert_eq!(sparse.len(), plain.len(), "the trailing hole counts");
    assert!(sparse == plain, "sparse and plain files differ");
    let g = Gguf::from_bytes(sparse).unwrap();
    assert_eq!(g.tensor_bytes("data").unwrap(), pattern(20, 3).as_slice());
    assert!(g.tensor_bytes("zeros").unwrap().iter().all(|&b| b == 0));
}

#[test]
fn a_header_on_its_own_parses_for_planning_only() {
    let (bytes, _) = sample();
    let content = parse(&bytes).unwrap();
    let header = &bytes[..content.data_offset() as usize];
    // The whole parse wants the data; the header parse does not.
    assert!(matches!(
        parse_err(header),
        GgufError::TensorPastEnd { .. } | GgufError::DataPastEnd { .. }
    ));
    let h = GgufContent::parse_header(header).unwrap();
    assert_eq!(h.tensors().len(), content.tensors().len());
    for (a, b) in h.tensors().iter().zip(content.tensors()) {
        assert_eq!((a.name(), a.n_bytes()), (b.name(), b.n_bytes()));
        // No data to hand out: none is pretended.
        assert!(h.tensor_data(header, a).is_none());
    }
    // Everything else is still checked: a cut inside the tensor infos fails.
    assert!(GgufContent::parse_header(&header[..header.len() / 2]).is_err());
}

mod malformed;

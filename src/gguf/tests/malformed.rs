//! Malformed and hostile files: each is rejected with the error that names
//! what is wrong, never a panic or an allocation the file cannot back.

use super::*;

// ---------------------------------------------------------------------------
// Malformed files

#[test]
fn every_prefix_is_rejected() {
    let (bytes, layout) = sample();
    assert!(parse(&bytes).is_ok());
    // Past the end of the last tensor's data there is only padding, which a
    // file may leave out.
    let last = layout.tensors.last().unwrap();
    let data_end = last.data_at + last.n_bytes as usize;
    assert!(data_end < bytes.len());
    for len in data_end..bytes.len() {
        assert!(parse(&bytes[..len]).is_ok(), "prefix of {len} bytes");
    }
    for len in 0..data_end {
        match parse(&bytes[..len]) {
            Err(
                GgufError::Truncated { .. }
                | GgufError::CountPastEnd { .. }
                | GgufError::DataPastEnd { .. }
                | GgufError::TensorPastEnd { .. },
            ) => {}
            Err(other) => panic!("prefix of {len} bytes: unexpected error {other}"),
            Ok(_) => panic!("prefix of {len} bytes was accepted"),
        }
    }
}

#[test]
fn random_corruption_never_panics() {
    let (bytes, _) = sample();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            b[at] = next() as u8;
        }
        let _ = parse(&b);
    }
}

#[test]
fn bad_magic() {
    let (mut bytes, _) = sample();
    bytes[..4].copy_from_slice(b"GGML");
    let err = parse_err(&bytes);
    assert!(matches!(err, GgufError::BadMagic { found } if &found == b"GGML"));
    assert!(matches!(
        parse_err(b"GGU"),
        GgufError::Truncated {
            offset: 0,
            needed: 4,
            remaining: 3,
            ..
        }
    ));
}

#[test]
fn bad_versions() {
    for (version, hint) in [
        (0, "does not exist"),
        (1, "v1"),
        (4, "newer"),
        (0x0300_0000, "byte-swapped"),
    ] {
        let (mut bytes, _) = sample();
        patch_u32(&mut bytes, VERSION_AT, version);
        let err = parse_err(&bytes);
        assert!(matches!(err, GgufError::UnsupportedVersion { version: v, .. } if v == version));
        assert!(err.to_string().contains(hint), "{err}");
    }
}

#[test]
fn huge_tensor_count() {
    for count in [u64::MAX, MAX_TENSOR_COUNT + 1] {
        let (mut bytes, _) = sample();
        patch_u64(&mut bytes, TENSOR_COUNT_AT, count);
        let err = parse_err(&bytes);
        assert!(
            matches!(
                err,
                GgufError::CountOverLimit {
                    what: "tensor count",
                    offset: 8,
                    ..
                }
            ),
            "{err}"
        );
    }
    // Under the cap, but more tensor infos than the file could hold.
    let (mut bytes, _) = sample();
    patch_u64(&mut bytes, TENSOR_COUNT_AT, MAX_TENSOR_COUNT);
    assert!(matches!(
        parse_err(&bytes),
        GgufError::CountPastEnd {
            what: "tensor count",
            ..
        }
    ));
}

#[test]
fn flipped_tensor_count() {
    // One more tensor than written: the parser reads tensor data as a tensor info.
    let (mut bytes, _) = sample();
    patch_u64(&mut bytes, TENSOR_COUNT_AT, 4);
    assert!(parse(&bytes).is_err());
    // A high bit set.
    let (mut bytes, _) = sample();
    patch_u64(&mut bytes, TENSOR_COUNT_AT, 3 | 1 << 32);
    assert!(matches!(
        parse_err(&bytes),
        GgufError::CountOverLimit { .. }
    ));
    // (One fewer can be a valid file: the last info becomes padding and every
    // tensor still lies inside the file. Nothing in the format tells.)
}

#[test]
fn huge_kv_count() {
    for count in [u64::MAX, MAX_KV_COUNT + 1] {
        let (mut bytes, _) = sample();
        patch_u64(&mut bytes, KV_COUNT_AT, count);
        assert!(matches!(
            parse_err(&bytes),
            GgufError::CountOverLimit {
                what: "key-value count",
                offset: 16,
                ..
            }
        ));
    }
    let (mut bytes, _) = sample();
    patch_u64(&mut bytes, KV_COUNT_AT, 1 << 19);
    assert!(matches!(
        parse_err(&bytes),
        GgufError::CountPastEnd {
            what: "key-value count",
            ..
        }
    ));
    // One more than written: the first tensor info is read as a key-value pair.
    let (mut bytes, layout) = sample();
    patch_u64(&mut bytes, KV_COUNT_AT, layout.kvs.len() as u64 + 1);
    assert!(parse(&bytes).is_err());
}

#[test]
fn huge_string_lengths() {
    let (bytes, layout) = sample();
    let key_at = layout.kv("t.string").unwrap().key_at;
    let value_at = layout.kv("t.string").unwrap().value_at;

    let mut b = bytes.clone();
    patch_u64(&mut b, key_at, u64::MAX);
    let err = parse_err(&b);
    assert!(
        matches!(
            &err,
            GgufError::CountOverLimit {
                what: "string length",
                location: Location::Key { .. },
                ..
            }
        ),
        "{err}"
    );

    let mut b = bytes.clone();
    patch_u64(&mut b, value_at, MAX_STRING_LEN + 1);
    let err = parse_err(&b);
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
    assert!(err.to_string().contains("'t.string'"), "{err}");

    let mut b = bytes.clone();
    patch_u64(&mut b, value_at, bytes.len() as u64);
    let err = parse_err(&b);
    assert!(
        matches!(
            &err,
            GgufError::CountPastEnd {
                what: "string length",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("'t.string'"), "{err}");

    let mut b = bytes.clone();
    let name_at = layout.tensor("b.q4_1").unwrap().info_at;
    patch_u64(&mut b, name_at, 1 << 40);
    let err = parse_err(&b);
    assert!(
        matches!(
            &err,
            GgufError::CountOverLimit {
                max: MAX_TENSOR_NAME_LEN,
                location: Location::TensorInfo { index: 1, .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn huge_array_lengths() {
    let (bytes, layout) = sample();
    // An array's value is its element type, then its length.
    let len_at = layout.kv("a.string").unwrap().value_at + 4;
    let mut b = bytes.clone();
    patch_u64(&mut b, len_at, u64::MAX);
    let err = parse_err(&b);
    assert!(
        matches!(
            &err,
            GgufError::CountOverLimit {
                what: "array length",
                max: MAX_ARRAY_LEN,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("'a.string'"), "{err}");

    // Under the cap, but at 8 bytes per string the file cannot hold them.
    let mut b = bytes.clone();
    patch_u64(&mut b, len_at, bytes.len() as u64 / 8 + 1);
    assert!(matches!(
        parse_err(&b),
        GgufError::CountPastEnd {
            what: "array length",
            min_each: 8,
            ..
        }
    ));

    let len_at = layout.kv("a.u64").unwrap().value_at + 4;
    let mut b = bytes.clone();
    patch_u64(&mut b, len_at, MAX_ARRAY_LEN);
    assert!(matches!(
        parse_err(&b),
        GgufError::CountPastEnd {
            what: "array length",
            min_each: 8,
            ..
        }
    ));
}

#[test]
fn unknown_value_types() {
    let (bytes, layout) = sample();
    let mut b = bytes.clone();
    patch_u32(&mut b, layout.kv("t.u32").unwrap().type_at, 13);
    let err = parse_err(&b);
    assert!(
        matches!(&err, GgufError::UnknownValueType { type_id: 13, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("'t.u32'"), "{err}");

    let mut b = bytes.clone();
    patch_u32(&mut b, layout.kv("a.u32").unwrap().value_at, u32::MAX);
    assert!(matches!(
        parse_err(&b),
        GgufError::UnknownValueType {
            type_id: u32::MAX,
            ..
        }
    ));
}

/// `depth` arrays, each the only element of the one outside it.
fn nested_array(depth: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..depth - 1 {
        put_u32(&mut v, ValueType::Array.id());
        put_u64(&mut v, 1);
    }
    put_u32(&mut v, ValueType::U8.id());
    put_u64(&mut v, 1);
    v.push(7);
    v
}

#[test]
fn array_nesting_is_capped() {
    let ok = parse(&raw_kv_file(
        "deep",
        ValueType::Array.id(),
        &nested_array(MAX_ARRAY_DEPTH),
    ))
    .unwrap();
    let mut value = ok.metadata().get_array("deep").unwrap();
    for _ in 1..MAX_ARRAY_DEPTH {
        let Array::Array(inner) = value else {
            panic!("expected a nested array")
        };
        value = &inner[0];
    }
    assert_eq!(value, &Array::U8(vec![7]));

    let err = parse_err(&raw_kv_file(
        "deep",
        ValueType::Array.id(),
        &nested_array(MAX_ARRAY_DEPTH + 1),
    ));
    assert!(
        matches!(
            &err,
            GgufError::ArrayTooDeep {
                max: MAX_ARRAY_DEPTH,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("'deep'"), "{err}");
}

#[test]
fn bad_scalars_and_keys() {
    let err = parse_err(&raw_kv_file("flag", ValueType::Bool.id(), &[2]));
    assert!(matches!(err, GgufError::InvalidBool { byte: 2, .. }));

    let mut bad_utf8 = Vec::new();
    put_u64(&mut bad_utf8, 2);
    bad_utf8.extend_from_slice(&[0xC3, 0x28]);
    let err = parse_err(&raw_kv_file("s", ValueType::String.id(), &bad_utf8));
    assert!(
        matches!(&err, GgufError::InvalidUtf8 { offset, .. } if *offset == 24 + 9 + 4 + 8),
        "{err}"
    );

    // (Trailing bytes so that the count check, which assumes one-byte keys, passes.)
    let err = parse_err(&raw_kv_file("", ValueType::U8.id(), &[0, 0]));
    assert!(matches!(
        err,
        GgufError::EmptyKey {
            index: 0,
            offset: 24
        }
    ));

    let (mut bytes, layout) = sample();
    // Rename "t.i8" to "t.u8": same length, so only the key changes.
    let at = layout.kv("t.i8").unwrap().key_at + 8;
    bytes[at..at + 4].copy_from_slice(b"t.u8");
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, GgufError::DuplicateKey { key, .. } if key == "t.u8"),
        "{err}"
    );
}

#[test]
fn bad_alignment() {
    for (value, want_type_error) in [
        (Value::U64(32), true),
        (Value::I32(32), true),
        (Value::U32(0), false),
        (Value::U32(48), false),
    ] {
        let mut w = sample_writer();
        w.add_kv(ALIGNMENT_KEY, value.clone());
        let err = parse_err(&w.to_bytes().unwrap().0);
        if want_type_error {
            assert!(
                matches!(err, GgufError::AlignmentType { .. }),
                "{value:?}: {err}"
            );
        } else {
            assert!(
                matches!(err, GgufError::BadAlignment { .. }),
                "{value:?}: {err}"
            );
        }
    }
}

#[test]
fn bad_tensor_names() {
    let err = parse_err(&raw_tensor_file("", &[1], 0, 0, 32));
    assert!(matches!(err, GgufError::EmptyTensorName { index: 0, .. }));

    let long = "x".repeat(MAX_TENSOR_NAME_LEN as usize + 1);
    let err = parse_err(&raw_tensor_file(&long, &[1], 0, 0, 32));
    assert!(matches!(
        err,
        GgufError::CountOverLimit {
            what: "string length",
            ..
        }
    ));
    let longest = "x".repeat(MAX_TENSOR_NAME_LEN as usize);
    assert!(parse(&raw_tensor_file(&longest, &[1], 0, 0, 32)).is_ok());
}

#[test]
fn duplicate_tensor_name() {
    let mut w = GgufWriter::new();
    w.add_tensor("aa", GgmlType::F32, &[1], vec![0u8; 4])
        .unwrap();
    w.add_tensor("ab", GgmlType::F32, &[1], vec![0u8; 4])
        .unwrap();
    let (mut bytes, layout) = w.to_bytes().unwrap();
    let at = layout.tensor("ab").unwrap().info_at + 8;
    bytes[at + 1] = b'a';
    let err = parse_err(&bytes);
    assert!(
        matches!(&err, GgufError::DuplicateTensor { name, index: 1 } if name == "aa"),
        "{err}"
    );
}

#[test]
fn bad_dims() {
    let err = parse_err(&raw_tensor_file("t", &[1, 1, 1, 1, 1], 0, 0, 32));
    assert!(
        matches!(&err, GgufError::TooManyDims { tensor, n_dims: 5, max: 4 } if tensor == "t"),
        "{err}"
    );

    let err = parse_err(&raw_tensor_file("t", &[1 << 40, 1 << 40], 0, 0, 32));
    assert!(
        matches!(&err, GgufError::BadShape { tensor, source: SizeError::Overflow, .. } if tensor == "t"),
        "{err}"
    );

    let err = parse_err(&raw_tensor_file("t", &[u64::MAX], 0, 0, 32));
    assert!(matches!(
        err,
        GgufError::BadShape {
            source: SizeError::Overflow,
            ..
        }
    ));

    // Elements fit, bytes overflow: 2^62 f32 elements.
    let err = parse_err(&raw_tensor_file("t", &[1 << 31, 1 << 31], 0, 0, 32));
    assert!(matches!(
        err,
        GgufError::BadShape {
            source: SizeError::Overflow,
            ..
        } | GgufError::TensorPastEnd { .. }
    ));

    let err = parse_err(&raw_tensor_file("t", &[33, 2], GgmlType::Q4_1.id(), 0, 64));
    assert!(matches!(
        err,
        GgufError::BadShape {
            source: SizeError::NotBlockMultiple {
                ne0: 33,
                block_size: 32
            },
            ..
        }
    ));
    assert!(err.to_string().contains("'t'"));

    // Flip a dim in a real layout.
    let (mut bytes, layout) = sample();
    patch_u64(&mut bytes, layout.tensor("b.q4_1").unwrap().dims_at, 65);
    assert!(matches!(parse_err(&bytes), GgufError::BadShape { .. }));
}

#[test]
fn unknown_and_removed_tensor_types() {
    for id in [GGML_TYPE_COUNT, 99, u32::MAX] {
        let err = parse_err(&raw_tensor_file("t", &[32], id, 0, 128));
        assert!(
            matches!(&err, GgufError::UnknownTensorType { tensor, type_id } if tensor == "t" && *type_id == id),
            "{err}"
        );
    }
    for removed in REMOVED_TYPES {
        let err = parse_err(&raw_tensor_file("t", &[32], removed.id, 0, 128));
        assert!(
            matches!(err, GgufError::RemovedTensorType { type_id, .. } if type_id == removed.id)
        );
        assert!(err.to_string().contains(removed.name));
    }
    let (mut bytes, layout) = sample();
    patch_u32(&mut bytes, layout.tensor("a.f32").unwrap().type_at, 4);
    assert!(matches!(
        parse_err(&bytes),
        GgufError::RemovedTensorType { type_id: 4, .. }
    ));
}

#[test]
fn bad_tensor_offsets() {
    let (bytes, layout) = sample();
    let at = layout.tensor("b.q4_1").unwrap().offset_at;

    let mut b = bytes.clone();
    patch_u64(&mut b, at, 33);
    let err = parse_err(&b);
    assert!(
        matches!(&err, GgufError::MisalignedTensor { tensor, offset: 33, alignment: 32 } if tensor == "b.q4_1"),
        "{err}"
    );

    let mut b = bytes.clone();
    patch_u64(&mut b, at, 1 << 40);
    let err = parse_err(&b);
    assert!(
        matches!(&err, GgufError::TensorPastEnd { tensor, .. } if tensor == "b.q4_1"),
        "{err}"
    );

    let mut b = bytes.clone();
    patch_u64(&mut b, at, u64::MAX - 31);
    assert!(matches!(
        parse_err(&b),
        GgufError::TensorPastEnd { end: u64::MAX, .. }
    ));

    // Point b at a's data: they overlap.
    let mut b = bytes.clone();
    patch_u64(&mut b, at, 0);
    let err = parse_err(&b);
    assert!(matches!(&err, GgufError::TensorOverlap { .. }), "{err}");
    assert!(
        err.to_string().contains("'a.f32'") && err.to_string().contains("'b.q4_1'"),
        "{err}"
    );
}

#[test]
fn data_section_past_end() {
    let (bytes, layout) = sample();
    // Cut the file where its header ends: the padding to the data section is missing.
    let header_end = layout.tensors.last().unwrap().offset_at + 8;
    assert!(header_end < layout.data_offset);
    let err = parse_err(&bytes[..header_end]);
    assert!(matches!(err, GgufError::DataPastEnd { .. }), "{err}");
}

#[test]
fn errors_are_readable() {
    let (mut bytes, layout) = sample();
    patch_u64(
        &mut bytes,
        layout.kv("a.string").unwrap().value_at + 4,
        u64::MAX,
    );
    let msg = parse_err(&bytes).to_string();
    assert!(
        msg.contains("array length") && msg.contains("byte") && msg.contains("'a.string'"),
        "{msg}"
    );
}

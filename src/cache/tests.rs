use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::*;
use crate::gguf::writer::GgufWriter;
use crate::gguf::{GgmlType, Gguf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardline-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A model with three distinct tensors and one duplicate of the first.
fn model(dir: &Path) -> Gguf {
    let path = dir.join("m.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama");
    for t in 0..3u8 {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i as u8).wrapping_mul(t + 1))
            .collect();
        w.add_tensor(format!("t{t}"), GgmlType::F32, &[1024], data)
            .unwrap();
    }
    let dup: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    w.add_tensor("dup", GgmlType::F32, &[1024], dup).unwrap();
    w.write_file(&path).unwrap();
    Gguf::open(&path).unwrap()
}

fn names(g: &Gguf) -> Vec<String> {
    let mut v: Vec<String> = g
        .tensors()
        .iter()
        .map(|t| cache_name(shardline_protocol::fnv1a_64(g.tensor_data(t))))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn seeding_writes_ggml_layout_and_skips_what_is_right() {
    let root = tmp("seed");
    let g = model(&root);
    let cache = root.join("cache");
    let first = seed(&cache, &g, 2, &|_| {}).unwrap();
    assert_eq!(first.tensors, 4);
    assert_eq!(first.written, 3, "the duplicate shares a file");
    assert_eq!(first.kept, 0);
    for n in names(&g) {
        assert!(cache.join(&n).is_file(), "{n} missing");
    }
    let t1 = g.tensor("t1").unwrap();
    let n1 = cache_name(shardline_protocol::fnv1a_64(g.tensor_data(t1)));
    assert_eq!(std::fs::read(cache.join(&n1)).unwrap(), g.tensor_data(t1));
    assert_eq!(Manifest::load(&cache).unwrap().len(), 3);

    // Again: nothing written. Damage one file: only it is rewritten.
    let again = seed(&cache, &g, 2, &|_| {}).unwrap();
    assert_eq!((again.written, again.kept), (0, 3));
    let mut bytes = std::fs::read(cache.join(&n1)).unwrap();
    bytes[7] ^= 1;
    std::fs::write(cache.join(&n1), bytes).unwrap();
    let mended = seed(&cache, &g, 1, &|_| {}).unwrap();
    assert_eq!((mended.written, mended.kept), (1, 2));
    assert_eq!(std::fs::read(cache.join(&n1)).unwrap(), g.tensor_data(t1));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn verification_moves_damaged_files_aside() {
    let root = tmp("verify");
    let g = model(&root);
    let cache = root.join("cache");
    seed(&cache, &g, 2, &|_| {}).unwrap();
    let all = names(&g);
    // Truncate one, flip a byte in another, add an unlisted good file and an
    // unlisted file whose bytes do not match its name.
    let f0 = cache.join(&all[0]);
    let len = std::fs::metadata(&f0).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f0)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let f1 = cache.join(&all[1]);
    let mut b = std::fs::read(&f1).unwrap();
    b[100] ^= 0x40;
    std::fs::write(&f1, b).unwrap();
    let extra = b"written by ggml's server".to_vec();
    let extra_name = cache_name(shardline_protocol::fnv1a_64(&extra));
    std::fs::write(cache.join(&extra_name), &extra).unwrap();
    std::fs::write(cache.join("00000000deadbeef"), b"not that").unwrap();
    std::fs::write(cache.join("notes.txt"), b"ignored").unwrap();

    // Size mode catches the truncation only.
    let by_size = verify(&cache, VerifyMode::Size, &HashSet::new(), 2).unwrap();
    let bad: Vec<&str> = by_size.bad.iter().map(|b| b.name.as_str()).collect();
    assert!(bad.contains(&all[0].as_str()), "{by_size:?}");
    assert!(!bad.contains(&all[1].as_str()));
    assert!(bad.contains(&"00000000deadbeef"));
    assert!(cache.join(BAD_DIR).join(&all[0]).is_file());
    assert!(!f0.exists());

    let full = verify(&cache, VerifyMode::Full, &HashSet::new(), 2).unwrap();
    assert_eq!(full.bad.len(), 1, "{full:?}");
    assert_eq!(full.bad[0].name, all[1]);
    assert!(
        full.bad[0].reason.contains("CRC32"),
        "{}",
        full.bad[0].reason
    );
    assert!(!f1.exists());
    // The unlisted good file was re-hashed once and is now listed.
    let m = Manifest::load(&cache).unwrap();
    assert!(m.get(&extra_name).is_some());
    assert!(m.get(&all[0]).is_none());
    let clean = verify(&cache, VerifyMode::Full, &HashSet::new(), 2).unwrap();
    assert!(clean.bad.is_empty());
    assert_eq!(clean.rehashed, 0);
    assert_eq!(clean.files, 2);

    // A link named like a cache file is checked through (ggml reads the
    // target); a dangling one is ignored.
    let target = root.join("elsewhere");
    std::fs::write(&target, b"not what the name says").unwrap();
    std::os::unix::fs::symlink(&target, cache.join("1111111111111111")).unwrap();
    std::os::unix::fs::symlink(root.join("missing"), cache.join("2222222222222222")).unwrap();
    let linked = verify(&cache, VerifyMode::Full, &HashSet::new(), 1).unwrap();
    assert_eq!(linked.bad.len(), 1, "{linked:?}");
    assert_eq!(linked.bad[0].name, "1111111111111111");

    // Off checks nothing.
    std::fs::write(cache.join(&all[2]), b"x").unwrap();
    assert!(verify(&cache, VerifyMode::Off, &HashSet::new(), 1)
        .unwrap()
        .bad
        .is_empty());
    assert!("fast".parse::<VerifyMode>().is_err());
    let _ = std::fs::remove_dir_all(&root);
}

//! Hostile model files and impossible options through the real binary:
//! `inspect`, `plan` and `run` must each print one line on stderr naming the
//! problem and exit with 1: no abort, no signal, no unbounded allocation (the
//! child runs under a 2 GiB address-space limit, so an allocation sized from
//! the file fails the test instead of eating the machine). Nothing here
//! needs servers: every check runs before a worker would start.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tiny::{tiny_model, valid};
use shardline::gguf::writer::GgufWriter;
use shardline::gguf::{GgmlType, Value};

/// Address space the child may map, in KiB (`ulimit -v`).
const MEMORY_LIMIT_KIB: u64 = 2 << 20;
/// How long one command may take before it is killed and the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A hostile file, what it is named after, and text its error must contain.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let case = |name, overrides: &[(&str, Value)], expect| Case {
        name,
        bytes: tiny_model(overrides, 8),
        expect,
    };
    let two_billion_layers = four_kb_two_billion_layers();
    let mut tokens_count = valid();
    patch_array_len(&mut tokens_count, "tokenizer.ggml.tokens", 1 << 27);
    let mut past_eof = valid();
    past_eof.truncate(past_eof.len() - 16);

    vec![
        Case {
            name: "two-billion-layers",
            bytes: two_billion_layers,
            expect: &["llama.block_count", "2000000000", "4096"],
        },
        case(
            "heads-times-head-size",
            &[
                ("llama.attention.head_count", Value::U32(1024)),
                ("llama.attention.head_count_kv", Value::U32(1024)),
                ("llama.attention.key_length", Value::U32(4096)),
            ],
            &[
                "llama.attention.head_count x llama.attention.key_length",
                "4194304",
            ],
        ),
        case(
            "head-count-u32-overflow",
            &[
                ("llama.attention.head_count", Value::U32(65536)),
                ("llama.attention.key_length", Value::U32(65536)),
            ],
            &["llama.attention.head_count", "65536"],
        ),
        case(
            "embedding-length-huge",
            &[("llama.embedding_length", Value::U64(1 << 40))],
            &["llama.embedding_length", "1099511627776"],
        ),
        Case {
            name: "vocabulary-count-past-eof",
            bytes: tokens_count,
            expect: &["tokenizer.ggml.tokens", "134217728"],
        },
        case(
            "alignment-zero",
            &[("general.alignment", Value::U32(0))],
            &["general.alignment", "0"],
        ),
        Case {
            name: "tensor-past-eof",
            bytes: past_eof,
            expect: &["blk.1.ffn_down.weight", "past the end"],
        },
        case(
            "layer-missing",
            &[("llama.block_count", Value::U32(3))],
            &["llama.block_count", "blk.2"],
        ),
        case(
            "q-rows-disagree",
            &[("llama.attention.key_length", Value::U32(8))],
            &["blk.0.attn_q.weight", "head_count x key_length"],
        ),
        case(
            "context-length-over-i32",
            &[("llama.context_length", Value::U32(u32::MAX))],
            &["llama.context_length", "4294967295"],
        ),
    ]
}

/// The file: 4 KB, the tiny model's keys and one layer's norm, and
/// two billion layers declared.
fn four_kb_two_billion_layers() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama")
        .add_kv("llama.block_count", 2_000_000_000u32)
        .add_kv("llama.context_length", 256u32)
        .add_kv("llama.embedding_length", 8u32)
        .add_kv("llama.feed_forward_length", 16u32)
        .add_kv("llama.attention.head_count", 2u32)
        .add_kv("tokenizer.ggml.model", "llama")
        .add_kv("tokenizer.ggml.tokens", vec!["<unk>", "<s>", "</s>", "a"]);
    w.add_tensor("blk.0.attn_norm.weight", GgmlType::F32, &[8], vec![0; 32])
        .unwrap();
    let mut bytes = w.to_bytes().unwrap().0;
    assert!(bytes.len() <= 4096);
    bytes.resize(4096, 0);
    bytes
}

/// Sets the element count of the array value of `key` (which must follow its
/// key in the file: value type, element type, then the count).
fn patch_array_len(bytes: &mut [u8], key: &str, len: u64) {
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .expect("key in file")
        + key.len()
        + 8;
    bytes[at..at + 8].copy_from_slice(&len.to_le_bytes());
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(format!("{name}.gguf"));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn temp_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` under the memory limit; kills it (by pid)
/// and fails if it outlives [`COMMAND_TIMEOUT`].
fn shardline(args: &[&str]) -> Outcome {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_shardline"))
        .args(args)
        // glibc reserves 64 MiB of address space per arena; keep that small
        // so the limit measures what the program asks for.
        .env("MALLOC_ARENA_MAX", "2")
        .env_remove("SHARDLINE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shardline");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > COMMAND_TIMEOUT {
            // Our own child, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            panic!("shardline {args:?} ran past {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Exit code 1 (not a signal), nothing on stdout, and exactly one line on
/// stderr that contains every `expect`.
fn assert_one_line_error(what: &str, o: &Outcome, expect: &[&str]) {
    assert_eq!(
        o.code,
        Some(1),
        "{what}: exit {:?} (None is a signal), stderr: {}",
        o.code,
        o.stderr
    );
    assert!(o.stdout.is_empty(), "{what}: stdout: {}", o.stdout);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr is not one line: {}",
        o.stderr
    );
    assert!(lines[0].starts_with("error: "), "{what}: {}", lines[0]);
    for e in expect {
        assert!(
            lines[0].contains(e),
            "{what}: '{e}' missing from: {}",
            lines[0]
        );
    }
}

#[test]
fn hostile_files_fail_with_one_line_and_exit_1() {
    let dir = temp_dir("hostile_gguf");
    for c in cases() {
        let path = write(&dir, c.name, &c.bytes);
        let p = path.to_str().unwrap();
        let commands: [&[&str]; 3] = [
            &["inspect", p],
            &["plan", "--model", p],
            &["run", "--model", p, "--prompt", "hi", "--max-tokens", "1"],
        ];
        for args in commands {
            let o = shardline(args);
            assert_one_line_error(&format!("{} {}", c.name, args[0]), &o, c.expect);
        }
    }
}

/// A consistent model whose heads are 3 wide: every shape agrees, but
/// ggml's RoPE would abort the process on the odd dimension count.
fn odd_rope_model() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama")
        .add_kv("llama.block_count", 1u32)
        .add_kv("llama.context_length", 256u32)
        .add_kv("llama.embedding_length", 6u32)
        .add_kv("llama.feed_forward_length", 16u32)
        .add_kv("llama.attention.head_count", 2u32)
        .add_kv("llama.attention.head_count_kv", 1u32)
        .add_kv("tokenizer.ggml.model", "llama")
        .add_kv("tokenizer.ggml.tokens", vec!["<unk>", "<s>", "</s>", "a"])
        .add_kv("tokenizer.ggml.scores", vec![0f32; 4])
        .add_kv("tokenizer.ggml.token_type", vec![2i32, 3, 3, 1]);
    let mut add = |name: &str, dims: &[u64]| {
        let n: u64 = dims.iter().product();
        w.add_tensor(name, GgmlType::F32, dims, vec![0u8; 4 * n as usize])
            .unwrap();
    };
    add("token_embd.weight", &[6, 4]);
    add("output_norm.weight", &[6]);
    add("blk.0.attn_norm.weight", &[6]);
    add("blk.0.attn_q.weight", &[6, 6]);
    add("blk.0.attn_k.weight", &[6, 3]);
    add("blk.0.attn_v.weight", &[6, 3]);
    add("blk.0.attn_output.weight", &[6, 6]);
    add("blk.0.ffn_norm.weight", &[6]);
    add("blk.0.ffn_gate.weight", &[6, 16]);
    add("blk.0.ffn_up.weight", &[6, 16]);
    add("blk.0.ffn_down.weight", &[16, 6]);
    w.to_bytes().unwrap().0
}

#[test]
fn an_odd_rope_dimension_count_is_refused_before_any_graph() {
    let dir = temp_dir("hostile_gguf_odd_rope");
    let path = write(&dir, "odd-rope", &odd_rope_model());
    let p = path.to_str().unwrap();
    let o = shardline(&["run", "--model", p, "--prompt", "hi", "--max-tokens", "1"]);
    assert_one_line_error("odd rope run", &o, &["rope dimension count 3", "odd"]);
}

#[test]
fn the_tiny_model_is_valid_under_the_same_limit() {
    let dir = temp_dir("hostile_gguf_valid");
    let path = write(&dir, "tiny", &valid());
    let o = shardline(&["inspect", path.to_str().unwrap()]);
    assert_eq!(o.code, Some(0), "stderr: {}", o.stderr);
    assert!(o.stdout.contains("llama"), "{}", o.stdout);
}

#[test]
fn impossible_options_fail_before_anything_starts() {
    let dir = temp_dir("hostile_gguf_options");
    let path = write(&dir, "tiny", &valid());
    let m = path.to_str().unwrap();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--model", m, "--port", "0"];
        args.extend_from_slice(extra);
        shardline(&args)
    };
    let cases: [(Outcome, &[&str]); 6] = [
        (
            serve(&["--parallel", "8", "--batch", "4"]),
            &["parallel 8", "batch size 4"],
        ),
        (
            serve(&["--parallel", "300", "--ctx", "256"]),
            &["parallel 300", "context size 256"],
        ),
        (
            serve(&["--parallel", "0"]),
            &["parallel must be at least 1"],
        ),
        (
            shardline(&["run", "--model", m, "--prompt", "hi", "--batch", "0"]),
            &["batch size must be at least 1"],
        ),
        (
            shardline(&["bench", "--model", m, "--concurrency", "8", "--batch", "4"]),
            &["parallel 8", "batch size 4"],
        ),
        (
            shardline(&["plan", "--model", m, "--ctx", "0"]),
            &["context"],
        ),
    ];
    for (i, (o, expect)) in cases.iter().enumerate() {
        assert_one_line_error(&format!("options case {i}"), o, expect);
    }
}

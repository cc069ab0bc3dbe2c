//! The decode-step graphs each client sends a worker, op by op: for each
//! family of `benches/families.rs` (env `SHARDLINE_DUMP_FAMILIES`, e.g.
//! `gemma3,qwen3`; default all), a capturing relay in front of each worker
//! records every `GRAPH_COMPUTE` of shardline and of llama.cpp's own RPC
//! client during a short greedy decode, and the last graph each worker got
//! (a decode step) is written to `SHARDLINE_DUMP_DIR` (default
//! `target/graph-dump`) as `{family}-{client}-w{worker}.txt`: one line per
//! node (op, type, extents, strides when not contiguous, sources' types
//! and extents), then a count per op.
//!
//! `cargo bench --bench graph_dump` (env: SHARDLINE_BENCH_SCALE, 8).

#[path = "../tests/common/mod.rs"]
mod tests_common;

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use shardline::engine::{Engine, EngineOptions};
use shardline::plan::{HeadSplit, Strategy};
use shardline_protocol::{decode_request_header, decode_request_payload, Command, GraphCompute};
use shardline_protocol::{Request, RpcTensor, REQUEST_HEADER_LEN};

use common::env_or;
use tests_common::families::{write_model, Extra, Family, BEYOND_LLAMA, N_VOCAB};
use tests_common::llama_ref::{rpc_devices, LlamaRef};
use tests_common::synth::id_prompts;

/// What a relay saw: every `GRAPH_COMPUTE`, and requests per command
/// (count, payload bytes).
#[derive(Default)]
struct Seen {
    graphs: Vec<GraphCompute>,
    requests: BTreeMap<&'static str, (u64, u64)>,
}

type Graphs = Arc<Mutex<Seen>>;

/// A relay on loopback to `target` that keeps every `GRAPH_COMPUTE`.
fn capture(target: SocketAddr) -> (SocketAddr, Graphs) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let graphs: Graphs = Arc::default();
    let g = graphs.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { return };
            let server = TcpStream::connect(target).unwrap();
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            let g = g.clone();
            std::thread::spawn(move || forward_requests(client, server, g));
        }
    });
    (addr, graphs)
}

fn forward_requests(mut client: TcpStream, mut server: TcpStream, graphs: Graphs) {
    let mut head = [0u8; REQUEST_HEADER_LEN];
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if client.read_exact(&mut head).is_err() {
            let _ = server.shutdown(std::net::Shutdown::Both);
            return;
        }
        let h = decode_request_header(&head).unwrap().unwrap();
        server.write_all(&head).unwrap();
        {
            let mut s = graphs.lock().unwrap();
            let e = s.requests.entry(h.cmd.name()).or_default();
            e.0 += 1;
            e.1 += h.payload_len;
        }
        let keep = h.cmd == Command::GraphCompute;
        let mut payload = Vec::new();
        let mut left = h.payload_len as usize;
        while left > 0 {
            let n = left.min(buf.len());
            client.read_exact(&mut buf[..n]).unwrap();
            server.write_all(&buf[..n]).unwrap();
            if keep {
                payload.extend_from_slice(&buf[..n]);
            }
            left -= n;
        }
        if keep {
            if let Ok(Request::GraphCompute(gc)) = decode_request_payload(h.cmd, &payload) {
                graphs.lock().unwrap().graphs.push(gc);
            }
        }
    }
}

fn ty_name(t: u32) -> String {
    ggml_sys::type_name(t).map_or_else(|| format!("t{t}"), str::to_owned)
}

fn op_label(t: &RpcTensor) -> String {
    let name = ggml_sys::op_name(t.op).unwrap_or("?").to_owned();
    match name.as_str() {
        // SAFETY: plain lookups of ggml's static names.
        "UNARY" => unsafe {
            let p = llama_cpp_sys_2::ggml_unary_op_name(t.op_params[0] as _);
            format!("UNARY:{}", std::ffi::CStr::from_ptr(p).to_string_lossy())
        },
        // SAFETY: as above.
        "GLU" => unsafe {
            let p = llama_cpp_sys_2::ggml_glu_op_name(t.op_params[0] as _);
            format!("GLU:{}", std::ffi::CStr::from_ptr(p).to_string_lossy())
        },
        _ => name,
    }
}

fn shape(t: &RpcTensor) -> String {
    let ne: Vec<String> = t.ne.iter().map(u32::to_string).collect();
    let mut s = format!("{} [{}]", ty_name(t.ty), ne.join(","));
    // Strides when not contiguous (rows in order, no gaps).
    let tsize = ggml_sys::type_size(t.ty).unwrap_or(1) as u64;
    let blck = ggml_sys::type_blck_size(t.ty).unwrap_or(1) as u64;
    let mut want = tsize;
    let mut cont = u64::from(t.nb[0]) == tsize;
    for i in 1..4 {
        want = if i == 1 {
            tsize * u64::from(t.ne[0]) / blck
        } else {
            want * u64::from(t.ne[i - 1])
        };
        cont &= t.ne[i] == 1 || u64::from(t.nb[i]) == want;
    }
    if !cont {
        let nb: Vec<String> = t.nb.iter().map(u32::to_string).collect();
        write!(s, " nb[{}]", nb.join(",")).unwrap();
    }
    s
}

fn dump(g: &GraphCompute) -> String {
    let by_id: BTreeMap<u64, &RpcTensor> = g.tensors.iter().map(|t| (t.id, t)).collect();
    let mut out = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in &g.nodes {
        let t = by_id[id];
        let op = op_label(t);
        *counts.entry(op.clone()).or_default() += 1;
        write!(
            out,
            "{op:<22} {:<36} uses {} flags {} {:<22}",
            shape(t),
            t.use_count,
            t.flags,
            t.name().unwrap_or("")
        )
        .unwrap();
        for s in t.src.iter().filter(|&&s| s != 0) {
            let st = by_id[s];
            write!(out, " | {}", shape(st)).unwrap();
            if st.op == 0 {
                write!(out, " '{}'", st.name().unwrap_or("")).unwrap();
            }
        }
        if matches!(
            op.as_str(),
            "FLASH_ATTN_EXT" | "SOFT_MAX" | "ROPE" | "SCALE" | "RMS_NORM"
        ) {
            write!(out, " params{:?}", &t.op_params[..4]).unwrap();
        }
        out.push('\n');
    }
    writeln!(
        out,
        "\n{} nodes, {} tensors",
        g.nodes.len(),
        g.tensors.len()
    )
    .unwrap();
    for (op, n) in counts {
        writeln!(out, "{n:4} {op}").unwrap();
    }
    out
}

fn main() {
    let want: Option<Vec<String>> = std::env::var("SHARDLINE_DUMP_FAMILIES")
        .ok()
        .map(|s| s.split(',').map(str::to_owned).collect());
    let families: Vec<Family> = std::iter::once(Family::Llama)
        .chain(BEYOND_LLAMA)
        .filter(|f| {
            want.as_ref()
                .is_none_or(|w| w.iter().any(|n| n == f.description()))
        })
        .collect();
    let scale: usize = env_or("SHARDLINE_BENCH_SCALE", 8);
    let n_gen = 8;
    let n_ctx = 256u32;
    let dir = std::env::var_os("SHARDLINE_DUMP_DIR")
        .map_or_else(|| PathBuf::from("target/graph-dump"), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_shardline"));
    let ours_workers = common::start_workers(exe, 2, 1);
    let their_workers = common::start_workers(exe, 2, 1);
    let ours: Vec<(SocketAddr, Graphs)> =
        ours_workers.iter().map(|w| capture(w.endpoint)).collect();
    let theirs: Vec<(SocketAddr, Graphs)> =
        their_workers.iter().map(|w| capture(w.endpoint)).collect();
    let servers: Vec<String> = ours.iter().map(|(a, _)| a.to_string()).collect();
    let devices = rpc_devices(&theirs.iter().map(|(a, _)| *a).collect::<Vec<_>>());
    let prompt = id_prompts(N_VOCAB, &[(7, 40)]).remove(0);
    let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();

    for f in families {
        let m = write_model(
            f,
            "dump",
            &Extra {
                vocab: true,
                scale,
                ..Extra::default()
            },
        );
        let bare = write_model(
            f,
            "dump-bare",
            &Extra {
                scale,
                ..Extra::default()
            },
        );
        let reset = |set: &[(SocketAddr, Graphs)]| {
            for (_, g) in set {
                let mut g = g.lock().unwrap();
                g.graphs.clear();
                g.requests.clear();
            }
        };
        let mut requests = Vec::new();
        let snapshot = |set: &[(SocketAddr, Graphs)]| -> Vec<BTreeMap<&'static str, (u64, u64)>> {
            set.iter()
                .map(|(_, g)| g.lock().unwrap().requests.clone())
                .collect()
        };
        {
            let e = rt
                .block_on(Engine::load(EngineOptions {
                    model: m.0.clone(),
                    servers: servers.clone(),
                    n_ctx,
                    n_batch: n_ctx,
                    strategy: Strategy::Even,
                    head_split: HeadSplit::Off,
                    threads: 1,
                    progress: false,
                    ..EngineOptions::default()
                }))
                .unwrap();
            reset(&ours);
            common::greedy(&rt, &e, prompt.clone(), n_gen);
            requests.push(snapshot(&ours));
        }
        {
            let mut r = LlamaRef::load(&bare.0, &devices, n_ctx);
            reset(&theirs);
            r.greedy_timed(&ids, n_gen);
            requests.push(snapshot(&theirs));
        }
        for (ci, (client, set)) in [("shardline", &ours), ("llamacpp", &theirs)]
            .into_iter()
            .enumerate()
        {
            for (w, (_, g)) in set.iter().enumerate() {
                println!(
                    "{} {client} worker {w}: requests while generating {n_gen} tokens from a {}-token prompt: {:?}",
                    f.description(),
                    prompt.len(),
                    requests[ci][w]
                );
                let g = g.lock().unwrap();
                let g = &g.graphs;
                let path = dir.join(format!("{}-{client}-w{w}.txt", f.description()));
                let text = match g.last() {
                    Some(last) => format!("{} graphs; the last:\n{}", g.len(), dump(last)),
                    None => "no graph\n".to_owned(),
                };
                std::fs::write(&path, text).unwrap();
                println!("{}", path.display());
            }
        }
    }
}

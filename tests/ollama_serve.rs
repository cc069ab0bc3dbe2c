//! Ollama model names, Ollama's API, and several models behind one
//! endpoint, end to end: a real Ollama store layout around the test model
//! (tests/common/ollama_store.rs), real workers, real `shardline serve`
//! processes, the official `ollama` Python package (tests/ollama_client.py,
//! from `$SHARDLINE_TEST_PYTHON`), and a second `serve` as an upstream.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{self, assert_error, Serve, Sse};
use common::ollama_store::{OllamaStore, NAME, NUM_PREDICT, SYSTEM};
use common::{model_path, rpc, start_worker};
use serde_json::{json, Value};

fn shardline(args: &[&str], store: &OllamaStore) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(args)
        .env("OLLAMA_MODELS", &store.root)
        .stdin(Stdio::null())
        .output()
        .expect("run shardline")
}

#[test]
fn ollama_names_and_api() {
    let store = OllamaStore::build(&model_path(), "api");

    // An unknown tag names the tags there are, before anything starts.
    let out = shardline(&["run", "--model", "smollm2:7b", "--prompt", "x"], &store);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no Ollama model 'smollm2:7b'") && err.contains("tags of smollm2 there: 135m"),
        "{err}"
    );
    let out = shardline(&["run", "--model", "llama3.1:70b", "--prompt", "x"], &store);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("models there: smollm2:135m"), "{err}");

    let (w1, w2) = (start_worker(&[]), start_worker(&[]));
    let rpc = rpc(&[&w1, &w2]);
    // `run` by Ollama name (library/ prefix and all).
    let out = shardline(
        &[
            "run",
            "--model",
            "library/smollm2:135m",
            "--rpc",
            &rpc,
            "--chat",
            "--prompt",
            "Hi.",
            "--temperature",
            "0",
            "--max-tokens",
            "4",
            "--ctx",
            "512",
        ],
        &store,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());

    let serve = Serve::start_env(
        &[
            "--model",
            NAME,
            "--rpc",
            &rpc,
            "--ctx",
            "2048",
            "--parallel",
            "2",
        ],
        &[("OLLAMA_MODELS", store.root.as_os_str())],
    );
    let ready = serve.wait_ready(Duration::from_secs(120));
    assert!(ready.contains(&format!("model={NAME}")), "{ready}");
    let expect = json!({
        "model": NAME, "digest": store.digest, "system": SYSTEM, "num_predict": NUM_PREDICT,
    });
    common::python_checks(
        "ollama_client.py",
        &[&format!("http://{}", serve.addr), &expect.to_string()],
        || serve.stderr(),
    );
}

/// A greedy chat answer from `model`; `answered_as` is the `model` the
/// answer names (a forwarded answer is the upstream's, byte for byte).
fn chat_text(addr: std::net::SocketAddr, model: &str, answered_as: &str) -> String {
    let r = http::post_json(
        addr,
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
                "temperature": 0, "max_tokens": 8}),
        None,
    );
    assert_eq!(r.status, 200, "{model}: {}", r.text());
    let v = r.json();
    assert_eq!(v["model"], answered_as, "{v}");
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn servers_of(ps: &Value, model: &str) -> Vec<String> {
    let m = ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == model)
        .unwrap_or_else(|| panic!("{model} not in /api/ps: {ps}"));
    serde_json::from_value(m["servers"].clone()).unwrap()
}

#[test]
fn several_models_one_endpoint() {
    let model = model_path();
    let store = OllamaStore::build(&model, "multi");
    let dir = store.root.join("configs");
    std::fs::create_dir_all(&dir).unwrap();

    // Bad configs are clear errors naming the line and key, before loading.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[model]]\nmodel = \"smollm2:135m\"\nctxx = 512\n").unwrap();
    let out = shardline(
        &["serve", "--config", bad.to_str().unwrap(), "--port", "0"],
        &store,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 3") && err.contains("ctxx"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "[[model]]\nname = \"u\"\nupstream = \"https://x:1\"\n",
    )
    .unwrap();
    let out = shardline(
        &["serve", "--config", bad.to_str().unwrap(), "--port", "0"],
        &store,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("only http://"),
        "{err}"
    );

    // The upstream: another serve of the same file.
    let wu = start_worker(&[]);
    let upstream = Serve::start(&[
        "--model",
        model.to_str().unwrap(),
        "--rpc",
        &rpc(&[&wu]),
        "--ctx",
        "512",
        "--parallel",
        "1",
    ]);
    upstream.wait_ready(Duration::from_secs(120));
    let remote_name = model.file_stem().unwrap().to_str().unwrap();

    // Three models: an Ollama name that fits one server (placed whole), the
    // same file under a memory cap that needs two (sharded), and one
    // forwarded to the upstream.
    let (a, b, c) = (start_worker(&[]), start_worker(&[]), start_worker(&[]));
    let config = format!(
        r#"servers = ["{}", "{}", "{}"]

[[model]]
model = "smollm2:135m"
ctx = 512
parallel = 1

[[model]]
name = "big"
model = "{}"
ctx = 512
parallel = 1
mem_cap = "340MiB"

[[model]]
name = "far"
upstream = "http://{}/v1"
model = "{remote_name}"
"#,
        a.endpoint,
        b.endpoint,
        c.endpoint,
        model.display(),
        upstream.addr
    );
    let path = dir.join("models.toml");
    std::fs::write(&path, config).unwrap();
    let serve = Serve::start_env(
        &["--config", path.to_str().unwrap()],
        &[("OLLAMA_MODELS", store.root.as_os_str())],
    );
    let ready = serve.wait_ready(Duration::from_secs(240));
    assert!(ready.contains("models=smollm2:135m,big,far"), "{ready}");

    // Placement: whole on one server, sharded over the other two.
    let ps = http::get(serve.addr, "/api/ps").json();
    assert_eq!(servers_of(&ps, NAME), vec![a.endpoint.to_string()], "{ps}");
    let mut big = servers_of(&ps, "big");
    big.sort();
    let mut bc = vec![b.endpoint.to_string(), c.endpoint.to_string()];
    bc.sort();
    assert_eq!(big, bc, "{ps}");

    // Listed everywhere.
    let ids: Vec<Value> = http::get(serve.addr, "/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(NAME), json!("big"), json!("far")]);
    let tags = http::get(serve.addr, "/api/tags").json();
    assert_eq!(tags["models"].as_array().unwrap().len(), 3, "{tags}");

    // Routed by `model`: the same file, messages and greedy settings give
    // the same text whole, sharded and upstream (the system message is
    // given, so the Ollama model's system layer does not apply).
    let whole = chat_text(serve.addr, NAME, NAME);
    assert!(!whole.is_empty());
    assert_eq!(chat_text(serve.addr, "big", "big"), whole);
    assert_eq!(chat_text(serve.addr, "far", remote_name), whole);
    // "library/…" and a missing ":latest" match as Ollama matches.
    assert_eq!(chat_text(serve.addr, "library/smollm2:135m", NAME), whole);

    // Streaming passes through the upstream as events.
    let mut sse = Sse::open(
        serve.addr,
        "/v1/chat/completions",
        &json!({"model": "far", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
                "temperature": 0, "max_tokens": 8, "stream": true}),
    );
    assert_eq!(sse.status, 200);
    let (mut text, mut chunks) = (String::new(), 0);
    loop {
        let d = sse.next_data().expect("the stream ended before [DONE]");
        if d == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["model"], remote_name, "the upstream's own chunks");
        chunks += 1;
        text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert!(chunks >= 3, "{chunks} chunks");
    assert_eq!(text, whole);

    // Ollama's API routes too, upstream included (Ollama's default repeat
    // penalty is 1.1, OpenAI's none: set alike).
    for m in ["big", "far"] {
        let r = http::post_json(
            serve.addr,
            "/api/chat",
            &json!({"model": m, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
                    "stream": false, "options": {"temperature": 0, "num_predict": 8, "repeat_penalty": 1.0}}),
            None,
        );
        assert_eq!(r.status, 200, "{m}: {}", r.text());
        assert_eq!(r.json()["message"]["content"], whole.as_str(), "{m}");
    }
    let r = http::post_json(
        serve.addr,
        "/api/generate",
        &json!({"model": "far", "prompt": "Name a color.", "system": "Be brief.", "options": {"temperature": 0, "num_predict": 8, "repeat_penalty": 1.0}}),
        None,
    );
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.len() >= 3 && lines.last().unwrap()["done"] == true,
        "{}",
        r.text()
    );
    let streamed: String = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(streamed, whole);

    // An unknown model: 404 naming the models served, in both shapes.
    let r = http::post_json(
        serve.addr,
        "/v1/chat/completions",
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        None,
    );
    let e = assert_error(&r, 404);
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("'smollm2:135m', 'big', 'far'"), "{msg}");
    let r = http::post_json(
        serve.addr,
        "/api/generate",
        &json!({"model": "nope", "prompt": "x"}),
        None,
    );
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"].as_str().unwrap().contains("big"),
        "{}",
        r.text()
    );
    // `--upstream` on the command line: one model, forwarded; with a key,
    // Ollama's routes want it as OpenAI's do.
    let forward = Serve::start(&[
        "--model",
        remote_name,
        "--upstream",
        &format!("http://{}", upstream.addr),
        "--api-key",
        "k3y",
    ]);
    forward.wait_ready(Duration::from_secs(30));
    assert_error(&http::get(forward.addr, "/api/tags"), 401);
    let keyed = |path: &str| {
        http::request(
            forward.addr,
            "GET",
            path,
            &[("Authorization", "Bearer k3y")],
            b"",
        )
    };
    let tags = keyed("/api/tags");
    assert_eq!(tags.status, 200);
    assert_eq!(tags.json()["models"][0]["name"], remote_name);
    let r = http::post_json(
        forward.addr,
        "/v1/chat/completions",
        &json!({"model": remote_name, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
                "temperature": 0, "max_tokens": 8}),
        Some("k3y"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], whole.as_str());
    drop(forward);

    // The upstream gone: 502, and the local models still answer.
    drop(upstream);
    let r = http::post_json(
        serve.addr,
        "/v1/chat/completions",
        &json!({"model": "far", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
        None,
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(chat_text(serve.addr, "big", "big"), whole);
    drop(serve);

    // Two models and one server: the second has none left.
    let crowded = dir.join("crowded.toml");
    std::fs::write(
        &crowded,
        format!(
            "servers = [\"{}\"]\n[[model]]\nmodel = \"smollm2:135m\"\nctx = 256\n[[model]]\nname = \"again\"\nmodel = \"smollm2:135m\"\nctx = 256\n",
            a.endpoint
        ),
    )
    .unwrap();
    let out = shardline(
        &[
            "serve",
            "--config",
            crowded.to_str().unwrap(),
            "--port",
            "0",
            "--strategy",
            "memory",
        ],
        &store,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("model 'again': no free server") && err.contains("held by 'smollm2:135m'"),
        "{err}"
    );
}

/// The test model without `tokenizer.chat_template` (tensors and every
/// other key as they are), written with the project's GGUF writer.
fn without_chat_template(model: &std::path::Path, out: &std::path::Path) {
    use shardline::gguf::{writer::GgufWriter, Gguf};
    let src = Gguf::open(model).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata_map().iter() {
        if k != "tokenizer.chat_template" {
            w.add_kv(k, v.clone());
        }
    }
    for t in src.tensors() {
        w.add_tensor(t.name(), t.ty(), t.dims(), src.tensor_data(t))
            .unwrap();
    }
    w.write_file(out).unwrap();
}

/// `/api/chat` and `/api/generate` of `model`, greedy: (text, prompt tokens).
fn ollama_answer(addr: std::net::SocketAddr, route: &str, body: Value) -> (String, u64) {
    let mut body = body;
    body["stream"] = json!(false);
    body["options"] = json!({"temperature": 0, "num_predict": 8});
    let r = http::post_json(addr, route, &body, None);
    assert_eq!(r.status, 200, "{route} {body}: {}", r.text());
    let v = r.json();
    let text = v["message"]["content"]
        .as_str()
        .or(v["response"].as_str())
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned();
    (text, v["prompt_eval_count"].as_u64().unwrap())
}

#[test]
fn go_template_layer_when_the_gguf_has_none() {
    let model = model_path();
    let dir = std::env::temp_dir().join(format!("shardline-gotmpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bare = dir.join("bare.gguf");
    without_chat_template(&model, &bare);
    // The store's template layer is ChatML in Go, which renders what the
    // file's Jinja template renders for a conversation with a system message.
    let store = OllamaStore::build(&bare, "gotmpl");
    // An rpc-server serves one client at a time: one worker per model.
    let (w, w2) = (start_worker(&[]), start_worker(&[]));
    let config = format!(
        r#"servers = ["{}", "{}"]

[[model]]
model = "smollm2:135m"
ctx = 512
parallel = 1

[[model]]
name = "jinja"
model = "{}"
ctx = 512
parallel = 1
"#,
        w.endpoint,
        w2.endpoint,
        model.display(),
    );
    let path = dir.join("models.toml");
    std::fs::write(&path, config).unwrap();
    let serve = Serve::start_env(
        &["--config", path.to_str().unwrap()],
        &[("OLLAMA_MODELS", store.root.as_os_str())],
    );
    serve.wait_ready(Duration::from_secs(240));

    let conv = json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a color."}]);
    let go = ollama_answer(
        serve.addr,
        "/api/chat",
        json!({"model": NAME, "messages": conv}),
    );
    let jinja = ollama_answer(
        serve.addr,
        "/api/chat",
        json!({"model": "jinja", "messages": conv}),
    );
    assert_eq!(go, jinja, "Go template vs the file's Jinja template");
    assert!(go.1 > 10, "{go:?}");
    // The system layer fills in a conversation without a system message.
    let user_only = json!([{"role": "user", "content": "Name a color."}]);
    let defaulted = ollama_answer(
        serve.addr,
        "/api/chat",
        json!({"model": NAME, "messages": user_only}),
    );
    assert_eq!(defaulted, go);

    // A request's own Go template on /api/generate: `{{ .Prompt }}` is the
    // prompt as it is, the same tokens as `raw`.
    let prompt = "The capital of France is";
    let templated = ollama_answer(
        serve.addr,
        "/api/generate",
        json!({"model": "jinja", "prompt": prompt, "template": "{{ .Prompt }}"}),
    );
    let raw = ollama_answer(
        serve.addr,
        "/api/generate",
        json!({"model": "jinja", "prompt": prompt, "raw": true}),
    );
    assert_eq!(templated, raw);
    let bad = http::post_json(
        serve.addr,
        "/api/generate",
        &json!({"model": "jinja", "prompt": prompt, "template": "{{ .Prompt"}),
        None,
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let e = bad.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(e.contains("'template'"), "{e}");
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

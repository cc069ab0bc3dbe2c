//! The cluster dashboard of `shardline serve` over two real workers:
//! `/api/cluster` as JSON, the page and its files, and the page rendered in
//! Debian's headless Chromium (DOM checks, and a screenshot for a person to
//! look at, written under the target folder).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{self, Serve};
use common::{model_path, start_worker};
use serde_json::{json, Value};

/// Chromium: `SHARDLINE_CHROMIUM`, else `chromium` or `chromium-browser` on
/// the PATH (scripts/setup.sh installs Debian's `chromium`).
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("SHARDLINE_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser"] {
        if let Some(dir) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|d| d.join(name).is_file())
        {
            return dir.join(name);
        }
    }
    panic!(
        "chromium not found: run scripts/setup.sh (installs Debian's chromium) \
         or set SHARDLINE_CHROMIUM"
    );
}

/// Runs headless Chromium on `url` with `args`, killing it (by pid) after a
/// minute; returns stdout.
fn browse(url: &str, args: &[&str], profile: &Path) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            // Lets the page's timers run: the first fetch of /api/cluster
            // and a few polls after it.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { out }, &mut s).ok();
        s
    });
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "chromium exited with {st}");
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

fn check_status(v: &Value, endpoints: &[String], model: &str) {
    let servers = v["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{v}");
    for (s, ep) in servers.iter().zip(endpoints) {
        assert_eq!(s["endpoint"], ep.as_str(), "{s}");
        assert_eq!(s["ok"], true, "{s}");
        assert_eq!(s["protocol"], "7.0.0");
        assert_eq!(s["models"][0], model, "{s}");
        let d = &s["devices"][0];
        assert!(d["total"].as_u64().unwrap() > 0, "{d}");
        let planned = d["planned"].as_u64().unwrap();
        assert!(
            planned > 0 && planned <= d["free_at_load"].as_u64().unwrap(),
            "{d}"
        );
        assert_eq!(
            d["allocated"], d["planned"],
            "what was planned is what is held: {d}"
        );
    }
    let m = &v["models"][0];
    assert_eq!(m["name"], model);
    assert_eq!(m["state"], "ok");
    let n_layer = m["n_layer"].as_u64().unwrap();
    assert_eq!(n_layer, 30);
    let stages = m["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{m}");
    // The layer map covers every layer once, in order.
    let mut next = 0;
    for (st, ep) in stages.iter().zip(endpoints) {
        assert_eq!(st["first_layer"].as_u64().unwrap(), next, "{st}");
        next = st["end_layer"].as_u64().unwrap();
        assert_eq!(st["target"], format!("{ep}/0"));
        assert_eq!(st["kind"], "CPU", "{st}");
        assert!(st["steps"].as_u64().unwrap() > 0, "{st}");
        assert!(st["step_ms"].as_f64().unwrap() > 0.0, "{st}");
        assert!(st["bytes_received"].as_u64().unwrap() > 0, "{st}");
    }
    assert_eq!(next, n_layer);
    assert_eq!(stages[1]["holds_output"], true);
    assert!(m["tokens_generated"].as_u64().unwrap() > 0, "{m}");
    assert!(m["tokens_per_second"].as_f64().unwrap() > 0.0, "{m}");
    assert_eq!(m["requests"], 1);
    assert_eq!(m["queue_depth"], 0);
    assert_eq!(m["failures"], 0);
    assert_eq!(m["events"], json!([]));
    assert!(m["weight_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn dashboard_shows_servers_devices_and_layer_map() {
    let ws = [start_worker(&[]), start_worker(&[])];
    let endpoints: Vec<String> = ws.iter().map(|w| w.endpoint.to_string()).collect();
    let model_file = model_path();
    let model = model_file
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let rpc = endpoints.join(",");
    let s = Serve::start(&[
        "--model",
        model_file.to_str().unwrap(),
        "--rpc",
        &rpc,
        "--ctx",
        "1024",
        "--strategy",
        "even",
    ]);
    // While loading, or once ready: always a snapshot.
    let early = http::get(s.addr, "/api/cluster");
    assert_eq!(early.status, 200);
    assert!(early.json()["models"].as_array().unwrap().len() == 1);
    s.wait_ready(Duration::from_secs(120));

    let r = http::post_json(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let r = http::get(s.addr, "/api/cluster");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    check_status(&r.json(), &endpoints, &model);

    // The page and its files, built into the binary.
    let page = http::get(s.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("/dashboard/app.js"));
    let js = http::get(s.addr, "/dashboard/app.js");
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.text().contains("/api/cluster"));
    assert_eq!(http::get(s.addr, "/dashboard/style.css").status, 200);
    assert_eq!(http::get(s.addr, "/dashboard/nope.js").status, 404);

    // In a real browser.
    let url = format!("http://{}/", s.addr);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dom = browse(&url, &["--dump-dom"], &dir.join("profile-dom"));
    assert!(dom.contains(r#"class="badge ok" title="">live<"#), "{dom}");
    for ep in &endpoints {
        assert!(
            dom.contains(&format!(r#"data-endpoint="{ep}""#)),
            "{ep}: {dom}"
        );
        assert!(
            dom.contains(&format!(r#"data-device="{ep}/0""#)),
            "{ep}: {dom}"
        );
        assert!(
            dom.contains(&format!(r#"data-target="{ep}/0""#)),
            "{ep}: {dom}"
        );
    }
    assert!(
        dom.contains(&format!(r#"<span class="model-name">{model}</span>"#)),
        "{dom}"
    );
    assert_eq!(dom.matches(r#"class="layer""#).count(), 30, "{dom}");
    assert!(dom.contains(r#"data-layer="29""#));
    assert!(dom.contains("2 servers · 2 devices · 1 models"), "{dom}");
    assert!(dom.contains("tokens/s live") && dom.contains("ms / step"));
    assert_eq!(
        dom.matches(r#"<td class="kind">CPU</td>"#).count(),
        2,
        "{dom}"
    );

    let png = dir.join("dashboard.png");
    browse(
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
        &dir.join("profile-shot"),
    );
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 10_000,
        "{} bytes: an empty page?",
        bytes.len()
    );
    eprintln!("dashboard screenshot: {}", png.display());
}

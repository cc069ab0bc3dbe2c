use super::*;

/// A scratch folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "shardline-ollama-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake digest: the blob layout is checked here, not the hashing.
fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

/// Writes a blob and returns its manifest layer.
fn blob(root: &Path, n: u8, media: &str, bytes: &[u8]) -> Value {
    let d = digest(n);
    let dir = root.join("blobs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.replace(':', "-")), bytes).unwrap();
    serde_json::json!({"mediaType": media, "digest": d, "size": bytes.len()})
}

fn manifest(root: &Path, name: &str, layers: Vec<Value>) {
    let n = ModelName::parse(name).unwrap();
    let dir = n.manifest_dir(root);
    std::fs::create_dir_all(&dir).unwrap();
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest(0xee), "size": 2},
        "layers": layers,
    });
    std::fs::write(dir.join(&n.tag), m.to_string()).unwrap();
}

#[test]
fn names_parse_with_ollama_defaults() {
    let n = ModelName::parse("llama3.1:70b").unwrap();
    assert_eq!(
        (&*n.registry, &*n.namespace, &*n.model, &*n.tag),
        ("registry.ollama.ai", "library", "llama3.1", "70b")
    );
    assert_eq!(n.to_string(), "llama3.1:70b");
    assert_eq!(ModelName::parse("smollm2").unwrap().tag, "latest");
    assert_eq!(
        ModelName::parse("library/smollm2:135m").unwrap(),
        ModelName::parse("smollm2:135m").unwrap()
    );
    let n = ModelName::parse("hf.co/bartowski/Qwen2.5-0.5B-GGUF:Q4_K_M").unwrap();
    assert_eq!(n.registry, "hf.co");
    assert_eq!(n.to_string(), "hf.co/bartowski/Qwen2.5-0.5B-GGUF:Q4_K_M");
    let n = ModelName::parse("localhost:5000/me/m").unwrap();
    assert_eq!((&*n.registry, &*n.tag), ("localhost:5000", "latest"));
    assert_eq!(ModelName::parse("me/m:v1").unwrap().to_string(), "me/m:v1");
    for bad in [
        "", "a/b/c/d", "m:", ":t", "../m", "m:..", "a b", "m:a:b", "a//b",
    ] {
        assert!(
            matches!(ModelName::parse(bad), Err(StoreError::BadName { .. })),
            "{bad:?} parsed"
        );
    }
}

#[test]
fn resolves_layers_and_lists_tags() {
    let t = TempDir::new("resolve");
    let root = &t.0;
    let params = r#"{"stop": ["<|im_end|>", "<|im_start|>"], "temperature": 0.2, "num_ctx": 2048}"#;
    manifest(
        root,
        "smollm2:135m",
        vec![
            blob(root, 1, MEDIA_MODEL, b"GGUF fake"),
            blob(root, 2, MEDIA_TEMPLATE, b"{{ .Prompt }}"),
            blob(root, 3, MEDIA_SYSTEM, b"Be brief."),
            blob(root, 4, MEDIA_PARAMS, params.as_bytes()),
            blob(root, 5, "application/vnd.ollama.image.license", b"MIT"),
        ],
    );
    manifest(
        root,
        "smollm2:latest",
        vec![blob(root, 1, MEDIA_MODEL, b"GGUF fake")],
    );
    manifest(
        root,
        "me/other:v1",
        vec![blob(root, 6, MEDIA_MODEL, b"GGUF")],
    );
    let roots = vec![PathBuf::from("/nonexistent/shardline"), root.clone()];

    let ModelSource::Ollama(m) = resolve_model_arg("smollm2:135m", &roots).unwrap() else {
        panic!("not resolved as an Ollama name")
    };
    assert_eq!(
        m.gguf,
        root.join(format!("blobs/sha256-{}", "01".repeat(32)))
    );
    assert_eq!(m.size, 9);
    assert_eq!(m.template.as_deref(), Some("{{ .Prompt }}"));
    assert_eq!(m.system.as_deref(), Some("Be brief."));
    assert_eq!(m.params.stop, vec!["<|im_end|>", "<|im_start|>"]);
    assert_eq!(m.params.number("temperature"), Some(0.2));
    assert!(m.params.to_lines().contains("num_ctx"));
    // No tag: latest, with no optional layers.
    let m = resolve(&ModelName::parse("smollm2").unwrap(), &roots).unwrap();
    assert!(m.template.is_none() && m.params.stop.is_empty());

    // An unknown tag lists the tags there are.
    let e = resolve_model_arg("smollm2:7b", &roots).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("tags of smollm2 there: 135m, latest"),
        "{text}"
    );
    // An unknown model lists the models there are.
    let text = resolve_model_arg("llama3.1:70b", &roots)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("models there: me/other:v1, smollm2:135m, smollm2:latest"),
        "{text}"
    );
    assert_eq!(Store::new(root).list().len(), 3);
}

#[test]
fn paths_stay_paths() {
    let t = TempDir::new("paths");
    let file = t.0.join("m.gguf");
    std::fs::write(&file, b"x").unwrap();
    let arg = file.to_str().unwrap();
    assert!(matches!(resolve_model_arg(arg, &[]), Ok(ModelSource::Path(p)) if p == file));
    // Missing files that look like paths stay paths (the loader says "no such file").
    for p in ["missing.gguf", "./m", "/abs/m"] {
        assert!(
            matches!(resolve_model_arg(p, &[]), Ok(ModelSource::Path(_))),
            "{p}"
        );
    }
    // A name with no store at all says so.
    let text = resolve_model_arg("smollm2", &[t.0.join("none")])
        .unwrap_err()
        .to_string();
    assert!(text.contains("no Ollama store found"), "{text}");
}

#[test]
fn broken_stores_are_clear_errors() {
    let t = TempDir::new("broken");
    let root = &t.0;
    let roots = vec![root.clone()];
    // A blob shorter than the manifest says.
    let mut layer = blob(root, 1, MEDIA_MODEL, b"GGUF");
    layer["size"] = 99.into();
    manifest(root, "short", vec![layer]);
    let text = resolve_model_arg("short", &roots).unwrap_err().to_string();
    assert!(text.contains("4 bytes, but the manifest says 99"), "{text}");
    // A missing blob.
    manifest(
        root,
        "gone",
        vec![serde_json::json!({"mediaType": MEDIA_MODEL, "digest": digest(9), "size": 1})],
    );
    let text = resolve_model_arg("gone", &roots).unwrap_err().to_string();
    assert!(text.contains("missing"), "{text}");
    // A digest that would escape the blobs folder.
    manifest(
        root,
        "evil",
        vec![serde_json::json!({"mediaType": MEDIA_MODEL, "digest": "sha256:../../x", "size": 1})],
    );
    let text = resolve_model_arg("evil", &roots).unwrap_err().to_string();
    assert!(text.contains("not sha256:<64 hex digits>"), "{text}");
    // No model layer.
    manifest(root, "nomodel", vec![blob(root, 2, MEDIA_TEMPLATE, b"x")]);
    let text = resolve_model_arg("nomodel", &roots)
        .unwrap_err()
        .to_string();
    assert!(text.contains("no layer of type"), "{text}");
    // A manifest that is not JSON, and bad params.
    let n = ModelName::parse("junk").unwrap();
    std::fs::create_dir_all(n.manifest_dir(root)).unwrap();
    std::fs::write(Store::new(root).manifest_path(&n), b"{not json").unwrap();
    let text = resolve_model_arg("junk", &roots).unwrap_err().to_string();
    assert!(text.contains("not JSON"), "{text}");
    manifest(
        root,
        "badparams",
        vec![
            blob(root, 1, MEDIA_MODEL, b"GGUF"),
            blob(root, 3, MEDIA_PARAMS, b"[1]"),
        ],
    );
    let text = resolve_model_arg("badparams", &roots)
        .unwrap_err()
        .to_string();
    assert!(text.contains("not a JSON object"), "{text}");
}

#[test]
fn roots_follow_ollama() {
    let home = Path::new("/home/u");
    assert_eq!(
        default_roots(Some(Path::new("/data/ollama")), Some(home)),
        vec![PathBuf::from("/data/ollama")]
    );
    assert_eq!(
        default_roots(None, Some(home)),
        vec![
            PathBuf::from("/home/u/.ollama/models"),
            PathBuf::from("/usr/share/ollama/.ollama/models")
        ]
    );
}

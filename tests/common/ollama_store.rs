//! A real Ollama store layout around the test model: manifests and
//! sha256-named blobs, as `ollama pull` leaves them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The model's name in the store.
pub const NAME: &str = "smollm2:135m";
/// The system layer.
pub const SYSTEM: &str = "You are a helpful AI assistant named SmolLM.";
/// `num_predict` of the params layer (a default the API must use).
pub const NUM_PREDICT: u64 = 6;

/// A store in a fresh temp folder, removed on drop.
pub struct OllamaStore {
    /// The `models` folder (what `OLLAMA_MODELS` names).
    pub root: PathBuf,
    /// The model blob's digest hex.
    pub digest: String,
}

impl Drop for OllamaStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// sha256 of a file, with coreutils' `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.split_whitespace().next().unwrap().to_owned();
    assert_eq!(hex.len(), 64, "{text}");
    hex
}

/// Puts `file` in the store's blobs under its sha256 name (a hard link
/// when the file system allows, else a copy); returns the manifest layer.
fn add_blob(root: &Path, file: &Path, media: &str) -> (serde_json::Value, String) {
    let hex = sha256(file);
    let blob = root.join("blobs").join(format!("sha256-{hex}"));
    if std::fs::hard_link(file, &blob).is_err() {
        std::fs::copy(file, &blob).expect("copy a blob");
    }
    // The name must be the hash of what is there.
    assert_eq!(sha256(&blob), hex, "blob {} is misnamed", blob.display());
    let size = std::fs::metadata(&blob).unwrap().len();
    (
        serde_json::json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": size}),
        hex,
    )
}

impl OllamaStore {
    /// `smollm2:135m` (library namespace, ollama registry) over `model`,
    /// with template, system and params layers.
    pub fn build(model: &Path, tag: &str) -> OllamaStore {
        let root = std::env::temp_dir().join(format!(
            "shardline-ollama-store-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        let text_blob = |name: &str, text: &str, media: &str| {
            let tmp = root.join(name);
            std::fs::write(&tmp, text).unwrap();
            let (layer, _) = add_blob(&root, &tmp, media);
            std::fs::remove_file(&tmp).unwrap();
            layer
        };
        let (model_layer, digest) = add_blob(&root, model, "application/vnd.ollama.image.model");
        let params =
            serde_json::json!({"stop": ["<|im_start|>", "<|im_end|>"], "num_predict": NUM_PREDICT});
        let layers = vec![
            model_layer,
            text_blob(
                "t",
                "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
                "application/vnd.ollama.image.template",
            ),
            text_blob("s", SYSTEM, "application/vnd.ollama.image.system"),
            text_blob("l", "Apache 2.0", "application/vnd.ollama.image.license"),
            text_blob(
                "p",
                &params.to_string(),
                "application/vnd.ollama.image.params",
            ),
        ];
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": layers[4].clone(),
            "layers": layers,
        });
        let dir = root.join("manifests/registry.ollama.ai/library/smollm2");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("135m"), manifest.to_string()).unwrap();
        OllamaStore { root, digest }
    }
}

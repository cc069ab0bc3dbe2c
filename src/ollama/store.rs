//! Ollama's model store: from a name such as `llama3.1:70b` to the GGUF blob.
//!
//! The layout, as Ollama writes it (facts from Ollama's `server/modelpath.go`
//! and `server/images.go`; no code taken):
//!
//! ```text
//! ROOT/manifests/<registry>/<namespace>/<model>/<tag>   JSON image manifest
//! ROOT/blobs/sha256-<64 hex>                             layer contents
//! ```
//!
//! A name is `[registry/][namespace/]model[:tag]`; the defaults are
//! `registry.ollama.ai`, `library` and `latest`. The manifest's `layers`
//! each have a `mediaType`, a `digest` (`sha256:<hex>`) and a `size`; the
//! GGUF file is the layer of type `application/vnd.ollama.image.model`.
//! Beside it may be `…image.template` (a Go template), `…image.system` (a
//! default system prompt) and `…image.params` (JSON: `stop`, `temperature`,
//! …).
//!
//! ROOT is `$OLLAMA_MODELS` when set, else `~/.ollama/models` (a user's
//! `ollama serve`), else `/usr/share/ollama/.ollama/models` (the Linux
//! service's). Blobs are not re-hashed here (a 40 GB file would take
//! minutes); their size is checked against the manifest.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The registry a name without one is in.
pub const DEFAULT_REGISTRY: &str = "registry.ollama.ai";
/// The namespace a name without one is in.
pub const DEFAULT_NAMESPACE: &str = "library";
/// The tag a name without one has.
pub const DEFAULT_TAG: &str = "latest";

/// Layer media types (Ollama's names).
const MEDIA_MODEL: &str = "application/vnd.ollama.image.model";
const MEDIA_TEMPLATE: &str = "application/vnd.ollama.image.template";
const MEDIA_SYSTEM: &str = "application/vnd.ollama.image.system";
const MEDIA_PARAMS: &str = "application/vnd.ollama.image.params";

/// Largest text layer (template, system, params) read; they are a few KB.
const MAX_TEXT_LAYER: u64 = 1 << 20;
/// Largest manifest read.
const MAX_MANIFEST: u64 = 1 << 20;

/// Why a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The text is not an Ollama model name.
    #[error("'{name}' is not an Ollama model name ([registry/][namespace/]model[:tag]): {why}")]
    BadName {
        /// What was given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No store holds the model.
    #[error("{0}")]
    NotFound(Box<NotFound>),
    /// A file of the store could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest is not what Ollama writes.
    #[error("Ollama manifest {path}: {why}")]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A layer's blob is missing or has the wrong size.
    #[error("Ollama blob {path} ({what} of {name}): {why}")]
    BadBlob {
        /// The blob file.
        path: PathBuf,
        /// Which layer.
        what: &'static str,
        /// The model.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// A name no store holds, with what the stores do hold.
#[derive(Debug)]
pub struct NotFound {
    /// The name asked for.
    pub name: ModelName,
    /// The store roots looked in.
    pub searched: Vec<PathBuf>,
    /// Tags of the same model that do exist.
    pub tags: Vec<String>,
    /// Every model found in the stores.
    pub known: Vec<String>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&not_found_text(
            &self.name,
            &self.searched,
            &self.tags,
            &self.known,
        ))
    }
}

fn not_found_text(
    name: &ModelName,
    searched: &[PathBuf],
    tags: &[String],
    known: &[String],
) -> String {
    let roots = searched
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = format!("no Ollama model '{name}' in {roots}");
    if searched.is_empty() {
        s = format!("no Ollama model '{name}': no Ollama store found (set OLLAMA_MODELS)");
    }
    if !tags.is_empty() {
        s.push_str(&format!(
            "; tags of {} there: {}",
            name.short_model(),
            tags.join(", ")
        ));
    } else if !known.is_empty() {
        s.push_str(&format!("; models there: {}", known.join(", ")));
    } else if !searched.is_empty() {
        s.push_str("; the store holds no models");
    }
    s
}

/// A parsed Ollama model name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModelName {
    /// e.g. `registry.ollama.ai`.
    pub registry: String,
    /// e.g. `library`.
    pub namespace: String,
    /// e.g. `llama3.1`.
    pub model: String,
    /// e.g. `70b`.
    pub tag: String,
}

impl ModelName {
    /// Parses `[registry/][namespace/]model[:tag]`.
    pub fn parse(text: &str) -> Result<ModelName, StoreError> {
        let bad = |why| StoreError::BadName {
            name: text.to_owned(),
            why,
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        // A tag's colon comes after the last slash (a registry may have a port).
        let (path, tag) = match text.rfind(':') {
            Some(i) if !text[i..].contains('/') => (&text[..i], &text[i + 1..]),
            _ => (text, DEFAULT_TAG),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (registry, namespace, model) = match parts.as_slice() {
            [m] => (DEFAULT_REGISTRY, DEFAULT_NAMESPACE, *m),
            [ns, m] => (DEFAULT_REGISTRY, *ns, *m),
            [r, ns, m] => (*r, *ns, *m),
            _ => return Err(bad("too many '/'")),
        };
        for part in [registry, namespace, model, tag] {
            if part.is_empty() {
                return Err(bad("a part is empty"));
            }
            // Each part becomes a path component: nothing that climbs out.
            if part == "." || part == ".." || part.starts_with('.') && part != registry {
                return Err(bad("a part starts with '.'"));
            }
            if !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
            {
                return Err(bad("only letters, digits, '.', '_' and '-' are allowed"));
            }
        }
        if tag.contains(':') || namespace.contains(':') || model.contains(':') {
            return Err(bad("too many ':'"));
        }
        Ok(ModelName {
            registry: registry.to_owned(),
            namespace: namespace.to_owned(),
            model: model.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// The name without the default registry and namespace:
    /// `llama3.1` or `user/model` or `host/ns/model`.
    pub fn short_model(&self) -> String {
        if self.registry != DEFAULT_REGISTRY {
            format!("{}/{}/{}", self.registry, self.namespace, self.model)
        } else if self.namespace != DEFAULT_NAMESPACE {
            format!("{}/{}", self.namespace, self.model)
        } else {
            self.model.clone()
        }
    }

    fn manifest_dir(&self, root: &Path) -> PathBuf {
        root.join("manifests")
            .join(&self.registry)
            .join(&self.namespace)
            .join(&self.model)
    }
}

/// As Ollama shows it: `llama3.1:70b`, `user/model:latest`.
impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.short_model(), self.tag)
    }
}

/// The `params` layer: Ollama's `PARAMETER` lines of the Modelfile, as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    /// `stop`: texts that end a generation.
    pub stop: Vec<String>,
    /// Every parameter as stored (`temperature`, `top_k`, `num_ctx`, …).
    pub all: Map<String, Value>,
}

impl Params {
    /// Reads the layer's JSON object; `stop` may be a string or a list.
    pub fn from_json(text: &str) -> Result<Params, String> {
        let all = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("the params layer is not a JSON object".into()),
            Err(e) => return Err(format!("the params layer is not JSON: {e}")),
        };
        let stop = match all.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => return Err("'stop' in the params layer is not text".into()),
        };
        Ok(Params { stop, all })
    }

    /// A number parameter (`temperature`, `top_k`, …), when present.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.all.get(key).and_then(Value::as_f64)
    }

    /// The parameters as Ollama's `/api/show` prints them: one
    /// `key value` line each, a list as one line per value.
    pub fn to_lines(&self) -> String {
        let mut out = Vec::new();
        for (k, v) in &self.all {
            let values = match v {
                Value::Array(a) => a.clone(),
                v => vec![v.clone()],
            };
            for v in values {
                out.push(format!("{k:<30} {v}"));
            }
        }
        out.join("\n")
    }
}

/// A model found in the store.
#[derive(Debug, Clone)]
pub struct OllamaModel {
    /// Its full name.
    pub name: ModelName,
    /// The store it is in.
    pub root: PathBuf,
    /// The GGUF file (a blob).
    pub gguf: PathBuf,
    /// The GGUF layer's digest, `sha256:<hex>`.
    pub digest: String,
    /// The GGUF file's size in bytes.
    pub size: u64,
    /// The template layer: Go template text, used for chats when the GGUF
    /// has no Jinja template of its own (`EngineOptions::chat_template`).
    pub template: Option<String>,
    /// The system layer: the default system prompt.
    pub system: Option<String>,
    /// The params layer.
    pub params: Params,
    /// When the manifest was written.
    pub modified: Option<std::time::SystemTime>,
}

/// What `--model` names: a file, or a model in an Ollama store.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A GGUF file's path.
    Path(PathBuf),
    /// An Ollama model.
    Ollama(Box<OllamaModel>),
}

impl ModelSource {
    /// The GGUF file to load.
    pub fn gguf(&self) -> &Path {
        match self {
            ModelSource::Path(p) => p,
            ModelSource::Ollama(m) => &m.gguf,
        }
    }

    /// The Ollama model, when it is one.
    pub fn ollama(&self) -> Option<&OllamaModel> {
        match self {
            ModelSource::Path(_) => None,
            ModelSource::Ollama(m) => Some(m),
        }
    }
}

/// The store roots to search, from `OLLAMA_MODELS` and `HOME` as given
/// (the caller reads the environment): `$OLLAMA_MODELS` alone when set,
/// as Ollama itself does, else the user's and the system service's.
pub fn default_roots(ollama_models: Option<&Path>, home: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = ollama_models.filter(|p| !p.as_os_str().is_empty()) {
        return vec![p.to_path_buf()];
    }
    let mut roots = Vec::new();
    if let Some(h) = home {
        roots.push(h.join(".ollama/models"));
    }
    roots.push(PathBuf::from("/usr/share/ollama/.ollama/models"));
    roots
}

/// `--model`: a path that exists is a path; otherwise a text that parses as
/// an Ollama name is looked up in `roots` (see [`default_roots`]). A text
/// ending in `.gguf`, or holding a path separator Ollama names cannot
/// (`./`, a leading `/`), is a path even when missing, so the error says
/// "no such file".
pub fn resolve_model_arg(arg: &str, roots: &[PathBuf]) -> Result<ModelSource, StoreError> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(ModelSource::Path(path.to_path_buf()));
    }
    let pathlike = arg.ends_with(".gguf")
        || arg.starts_with('/')
        || arg.starts_with('.')
        || arg.starts_with('~')
        || arg.contains("//")
        || arg.contains('\\');
    if pathlike {
        return Ok(ModelSource::Path(path.to_path_buf()));
    }
    let name = ModelName::parse(arg)?;
    Ok(ModelSource::Ollama(Box::new(resolve(&name, roots)?)))
}

/// Finds `name` in the first of `roots` that has it.
pub fn resolve(name: &ModelName, roots: &[PathBuf]) -> Result<OllamaModel, StoreError> {
    let existing: Vec<PathBuf> = roots.iter().filter(|r| r.is_dir()).cloned().collect();
    for root in &existing {
        let store = Store::new(root);
        if store.manifest_path(name).is_file() {
            return store.open(name);
        }
    }
    let mut tags = Vec::new();
    let mut known = Vec::new();
    for root in &existing {
        let store = Store::new(root);
        for n in store.list() {
            if n.registry == name.registry && n.namespace == name.namespace && n.model == name.model
            {
                tags.push(n.tag.clone());
            }
            known.push(n.to_string());
        }
    }
    tags.sort();
    tags.dedup();
    known.sort();
    known.dedup();
    Err(StoreError::NotFound(Box::new(NotFound {
        name: name.clone(),
        searched: existing,
        tags,
        known,
    })))
}

/// One Ollama store (a `models` folder).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

#[derive(Debug)]
struct Layer {
    media: String,
    digest: String,
    size: u64,
}

impl Store {
    /// The store at `root` (the folder holding `manifests` and `blobs`).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `name`'s manifest is.
    pub fn manifest_path(&self, name: &ModelName) -> PathBuf {
        name.manifest_dir(&self.root).join(&name.tag)
    }

    /// Where the blob of `digest` (`sha256:<hex>`) is: `blobs/sha256-<hex>`.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.root.join("blobs").join(format!("sha256-{hex}")))
    }

    /// Every model in the store (manifests three folders deep), sorted.
    pub fn list(&self) -> Vec<ModelName> {
        let mut out = Vec::new();
        let dirs = |p: &Path| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect()
        };
        for (registry, rp) in dirs(&self.root.join("manifests")) {
            for (namespace, np) in dirs(&rp) {
                for (model, mp) in dirs(&np) {
                    for (tag, tp) in dirs(&mp) {
                        if tp.is_file() {
                            out.push(ModelName {
                                registry: registry.clone(),
                                namespace: namespace.clone(),
                                model: model.clone(),
                                tag,
                            });
                        }
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Reads `name`'s manifest and finds its layers.
    pub fn open(&self, name: &ModelName) -> Result<OllamaModel, StoreError> {
        let path = self.manifest_path(name);
        let text = read_text(&path, MAX_MANIFEST)?;
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let layers = parse_manifest(&text).map_err(|why| StoreError::BadManifest {
            path: path.clone(),
            why,
        })?;
        let model = layers
            .iter()
            .find(|l| l.media == MEDIA_MODEL)
            .ok_or_else(|| StoreError::BadManifest {
                path: path.clone(),
                why: format!("no layer of type {MEDIA_MODEL} (not a model image?)"),
            })?;
        let gguf = self.checked_blob(name, model, "the model layer")?;
        let text_layer = |media: &str, what: &'static str| -> Result<Option<String>, StoreError> {
            match layers.iter().find(|l| l.media == media) {
                None => Ok(None),
                Some(l) => {
                    let p = self.checked_blob(name, l, what)?;
                    read_text(&p, MAX_TEXT_LAYER).map(Some)
                }
            }
        };
        let template = text_layer(MEDIA_TEMPLATE, "the template layer")?;
        let system = text_layer(MEDIA_SYSTEM, "the system layer")?;
        let params = match layers.iter().find(|l| l.media == MEDIA_PARAMS) {
            None => Params::default(),
            Some(l) => {
                let p = self.checked_blob(name, l, "the params layer")?;
                Params::from_json(&read_text(&p, MAX_TEXT_LAYER)?).map_err(|why| {
                    StoreError::BadBlob {
                        path: p,
                        what: "the params layer",
                        name: name.to_string(),
                        why,
                    }
                })?
            }
        };
        Ok(OllamaModel {
            name: name.clone(),
            root: self.root.clone(),
            gguf,
            digest: model.digest.clone(),
            size: model.size,
            template,
            system,
            params,
            modified,
        })
    }

    /// The blob of `layer`, which must exist and have the manifest's size.
    fn checked_blob(
        &self,
        name: &ModelName,
        layer: &Layer,
        what: &'static str,
    ) -> Result<PathBuf, StoreError> {
        let bad = |path: PathBuf, why: String| StoreError::BadBlob {
            path,
            what,
            name: name.to_string(),
            why,
        };
        let path = self.blob_path(&layer.digest).ok_or_else(|| {
            bad(
                self.root.join("blobs"),
                format!("digest '{}' is not sha256:<64 hex digits>", layer.digest),
            )
        })?;
        match std::fs::metadata(&path) {
            Err(e) => Err(bad(path, format!("missing: {e}"))),
            Ok(m) if !m.is_file() => Err(bad(path, "not a file".into())),
            Ok(m) if m.len() != layer.size => Err(bad(
                path,
                format!(
                    "{} bytes, but the manifest says {} (an interrupted pull?)",
                    m.len(),
                    layer.size
                ),
            )),
            Ok(_) => Ok(path),
        }
    }
}

fn read_text(path: &Path, limit: u64) -> Result<String, StoreError> {
    use std::io::Read as _;
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    f.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8",
        ))
    })
}

fn parse_manifest(text: &str) -> Result<Vec<Layer>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let layers = v
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("no 'layers' list")?;
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let field = |k: &str| l.get(k).ok_or_else(|| format!("layers[{i}] has no '{k}'"));
            Ok(Layer {
                media: field("mediaType")?
                    .as_str()
                    .ok_or_else(|| format!("layers[{i}].mediaType is not text"))?
                    .to_owned(),
                digest: field("digest")?
                    .as_str()
                    .ok_or_else(|| format!("layers[{i}].digest is not text"))?
                    .to_owned(),
                size: field("size")?
                    .as_u64()
                    .ok_or_else(|| format!("layers[{i}].size is not a size"))?,
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

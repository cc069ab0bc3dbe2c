//! `shardline serve --config FILE`: the models served behind one endpoint.
//!
//! ```toml
//! # Servers every model may use, unless it lists its own (default: --rpc).
//! servers = ["10.0.0.2:50052", "10.0.0.3:50052", "10.0.0.4:50052"]
//!
//! [[model]]
//! model = "llama3.2:3b"          # an Ollama name or a .gguf path
//! name = "small"                 # served as (default: the Ollama name or file stem)
//! ctx = 8192                     # KV cells, split between `parallel` sequences
//! parallel = 4
//!
//! [[model]]
//! model = "/models/llama-3.1-70b-q4_k_m.gguf"
//! servers = ["10.0.0.3:50052", "10.0.0.4:50052"]
//! placement = "shard"            # auto (default): whole on one server when it fits
//!
//! [[model]]
//! name = "qwen-remote"
//! upstream = "http://10.0.0.9:11434"   # forwarded to an OpenAI-compatible server
//! model = "qwen2.5:32b"                # its name there (default: name)
//! ```
//!
//! Keys a model may have: `model`, `name`, `servers`, `ctx`, `parallel`,
//! `queue`, `batch`, `strategy`, `split`, `mem_cap`, `placement`,
//! `upstream`. An unknown key, a wrong type or a missing `model` is an
//! error naming the line and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::models::{ModelSpec, Placement, Source};
use crate::engine::EngineOptions;
use crate::ollama::{resolve_model_arg, ModelSource, StoreError};

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key of the wrong type or unknown.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message (with the line and the key).
        message: String,
    },
    /// A model entry that cannot work.
    #[error("{path}: model {index} ({name}): {why}")]
    Model {
        /// The file.
        path: PathBuf,
        /// 1-based position among `[[model]]` entries.
        index: usize,
        /// Its name or `model`.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A model's Ollama name does not resolve.
    #[error("{path}: model {index}: {source}")]
    Store {
        /// The file.
        path: PathBuf,
        /// 1-based position.
        index: usize,
        /// Why.
        source: StoreError,
    },
}

/// The file's contents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Servers every model may use unless it lists its own.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The models, in order; the first answers requests that name none.
    #[serde(default, rename = "model")]
    pub models: Vec<ModelEntry>,
}

/// One `[[model]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// An Ollama name or a GGUF path; with `upstream`, the upstream's name.
    pub model: Option<String>,
    /// The served name.
    pub name: Option<String>,
    /// Servers this model may use.
    pub servers: Option<Vec<String>>,
    /// Context (KV cells).
    pub ctx: Option<u32>,
    /// Sequences at once.
    pub parallel: Option<usize>,
    /// Requests that may wait.
    pub queue: Option<usize>,
    /// Tokens per step.
    pub batch: Option<u32>,
    /// memory, even or throughput.
    pub strategy: Option<String>,
    /// Explicit layer counts, e.g. "10,20".
    pub split: Option<String>,
    /// Memory caps, as `--mem-cap` takes them.
    pub mem_cap: Option<String>,
    /// auto or shard.
    pub placement: Option<String>,
    /// Forward to this OpenAI-compatible server instead of loading.
    pub upstream: Option<String>,
}

impl ServeConfig {
    /// Parses TOML text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ServeConfig, ConfigError> {
        let c: ServeConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        if c.models.is_empty() {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                message: "no [[model]] entries".into(),
            });
        }
        Ok(c)
    }

    /// Reads and parses the file.
    pub fn read(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ServeConfig::parse(&text, path)
    }

    /// The models to serve: each local one gets `base` (the command line's
    /// cluster settings) with its own keys over it; Ollama names resolve
    /// in `roots`. `servers` of the file (else `base.servers`) are what a
    /// model without its own may use.
    pub fn specs(
        &self,
        base: &EngineOptions,
        roots: &[PathBuf],
        path: &Path,
    ) -> Result<Vec<ModelSpec>, ConfigError> {
        let pool = if self.servers.is_empty() {
            base.servers.clone()
        } else {
            self.servers.clone()
        };
        self.models
            .iter()
            .enumerate()
            .map(|(i, m)| m.spec(i + 1, base, &pool, roots, path))
            .collect()
    }
}

impl ModelEntry {
    fn spec(
        &self,
        index: usize,
        base: &EngineOptions,
        pool: &[String],
        roots: &[PathBuf],
        path: &Path,
    ) -> Result<ModelSpec, ConfigError> {
        let label = self
            .name
            .clone()
            .or_else(|| self.model.clone())
            .unwrap_or_else(|| "unnamed".into());
        let bad = |why: String| ConfigError::Model {
            path: path.to_path_buf(),
            index,
            name: label.clone(),
            why,
        };
        if let Some(url) = &self.upstream {
            let name = self
                .name
                .clone()
                .or_else(|| self.model.clone())
                .ok_or_else(|| bad("an upstream model needs 'name' or 'model'".into()))?;
            let local_only = [
                ("servers", self.servers.is_some()),
                ("ctx", self.ctx.is_some()),
                ("parallel", self.parallel.is_some()),
                ("placement", self.placement.is_some()),
                ("mem_cap", self.mem_cap.is_some()),
                ("split", self.split.is_some()),
            ];
            if let Some((key, _)) = local_only.iter().find(|(_, set)| *set) {
                return Err(bad(format!(
                    "'{key}' does not apply to a model forwarded upstream"
                )));
            }
            return Ok(ModelSpec {
                source: Source::Upstream {
                    url: url.clone(),
                    model: self.model.clone().unwrap_or_else(|| name.clone()),
                },
                name,
            });
        }
        let arg = self
            .model
            .as_deref()
            .ok_or_else(|| bad("missing key 'model' (an Ollama name or a .gguf path)".into()))?;
        let source = resolve_model_arg(arg, roots).map_err(|source| ConfigError::Store {
            path: path.to_path_buf(),
            index,
            source,
        })?;
        let mut e = base.clone();
        e.model = source.gguf().to_path_buf();
        e.chat_template = source
            .ollama()
            .and_then(|m| m.template.clone())
            .map(crate::chat::TemplateSource::Go);
        e.servers = self.servers.clone().unwrap_or_else(|| pool.to_vec());
        if let Some(x) = self.ctx {
            e.n_ctx = x;
        }
        if let Some(x) = self.parallel {
            e.parallel = x;
        }
        if let Some(x) = self.queue {
            e.queue = x;
        }
        if let Some(x) = self.batch {
            e.n_batch = x;
        }
        if let Some(s) = &self.strategy {
            e.strategy = s.parse().map_err(|err| bad(format!("strategy: {err}")))?;
        }
        if let Some(s) = &self.split {
            let counts = crate::plan::parse_split(s).map_err(|err| bad(format!("split: {err}")))?;
            e.strategy = crate::plan::Strategy::Split(counts);
        }
        if let Some(s) = &self.mem_cap {
            e.mem_caps = s
                .split(',')
                .map(|c| c.trim().parse())
                .collect::<Result<_, _>>()
                .map_err(|err| bad(format!("mem_cap: {err}")))?;
        }
        let placement = match self.placement.as_deref() {
            None | Some("auto") => Placement::Auto,
            Some("shard") => Placement::Shard,
            Some(other) => return Err(bad(format!("placement '{other}': expected auto or shard"))),
        };
        e.check().map_err(|err| bad(err.to_string()))?;
        let ollama = source.ollama().cloned().map(Box::new);
        let name = self.name.clone().unwrap_or_else(|| match &source {
            ModelSource::Ollama(m) => m.name.to_string(),
            ModelSource::Path(_) => e.served_name(),
        });
        Ok(ModelSpec {
            name,
            source: Source::Local {
                engine: Box::new(e),
                placement,
                ollama,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(text: &str) -> Result<Vec<ModelSpec>, ConfigError> {
        let p = Path::new("test.toml");
        ServeConfig::parse(text, p)?.specs(&EngineOptions::default(), &[], p)
    }

    #[test]
    fn models_and_upstreams() {
        let s = specs(
            r#"
servers = ["a:1", "b:2"]
[[model]]
model = "/x/m.gguf"
ctx = 1024
parallel = 2
mem_cap = "64MiB"
[[model]]
name = "two"
model = "/x/m.gguf"
servers = ["b:2"]
placement = "shard"
[[model]]
name = "far"
upstream = "http://127.0.0.1:9/v1"
model = "remote-name"
"#,
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "m");
        let Source::Local {
            engine, placement, ..
        } = &s[0].source
        else {
            panic!()
        };
        assert_eq!((engine.n_ctx, engine.parallel), (1024, 2));
        assert_eq!(engine.servers, vec!["a:1", "b:2"]);
        assert_eq!(engine.mem_caps.len(), 1);
        assert_eq!(*placement, Placement::Auto);
        let Source::Local {
            engine, placement, ..
        } = &s[1].source
        else {
            panic!()
        };
        assert_eq!(engine.servers, vec!["b:2"]);
        assert_eq!(*placement, Placement::Shard);
        assert!(matches!(&s[2].source, Source::Upstream { model, .. } if model == "remote-name"));
    }

    #[test]
    fn bad_configs_name_the_line_and_key() {
        let text = |r: Result<Vec<ModelSpec>, ConfigError>| r.unwrap_err().to_string();
        let e = text(specs("[[model]]\nmodel = \"/m.gguf\"\nctxx = 5\n"));
        assert!(e.contains("line 3") && e.contains("ctxx"), "{e}");
        let e = text(specs("[[model]]\nmodel = \"/m.gguf\"\nctx = \"big\"\n"));
        assert!(e.contains("line 3") && e.contains("ctx"), "{e}");
        let e = text(specs("[[model]]\nname = \"x\"\n"));
        assert!(
            e.contains("model 1 (x)") && e.contains("missing key 'model'"),
            "{e}"
        );
        let e = text(specs("servers = []\n"));
        assert!(e.contains("no [[model]]"), "{e}");
        let e = text(specs(
            "[[model]]\nmodel = \"/m.gguf\"\nplacement = \"wide\"\n",
        ));
        assert!(e.contains("placement 'wide'"), "{e}");
        let e = text(specs("[[model]]\nmodel = \"/m.gguf\"\nparallel = 0\n"));
        assert!(e.contains("parallel"), "{e}");
        let e = text(specs(
            "[[model]]\nupstream = \"http://h:1\"\nname = \"u\"\nctx = 5\n",
        ));
        assert!(e.contains("'ctx' does not apply"), "{e}");
        let e = text(specs("[[model]]\nmodel = \"nosuchmodel:7b\"\n"));
        assert!(e.contains("no Ollama model 'nosuchmodel:7b'"), "{e}");
        let e = text(specs("[[model]]\nmodel = \"/m.gguf\"\n[oops\n"));
        assert!(e.contains("line 3"), "{e}");
    }
}

//! `shardline inspect`: a summary of a llama-family GGUF model, as aligned
//! text or JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::gguf::llama::{keys, FileType, LayerBytes, LlamaHparams};
use crate::gguf::{Gguf, GgufError, TensorInfo};

/// Name of the output projection; llama-family files without it reuse the
/// token embedding (tied embeddings).
const OUTPUT_TENSOR: &str = "output.weight";

/// Why `shardline inspect` failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be opened or parsed, or is not a valid llama-family model.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The summary could not be serialized.
    #[error("encoding the summary as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What `shardline inspect` reports about a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    /// The file, when the summary was made from a path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// GGUF version from the header.
    pub gguf_version: u32,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// `general.name`.
    pub name: Option<String>,
    /// `general.file_type`.
    pub file_type: Option<FileTypeSummary>,
    /// Number of transformer layers.
    pub n_layer: u32,
    /// Width of the hidden state.
    pub n_embd: u32,
    /// Width of the feed-forward hidden layer.
    pub n_ff: u32,
    /// Number of attention (query) heads.
    pub n_head: u32,
    /// Number of key/value heads.
    pub n_head_kv: u32,
    /// Size of one attention head.
    pub head_dim: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Dimensions per head that RoPE rotates.
    pub n_rot: u32,
    /// RoPE base frequency.
    pub rope_freq_base: f32,
    /// Epsilon of the RMS norms.
    pub rms_eps: f32,
    /// The description shardline runs the model with (`crate::arch`), when
    /// it runs the architecture.
    pub family: Option<String>,
    /// Routed experts per layer (0: a dense model).
    pub n_expert: u32,
    /// Experts each token goes through.
    pub n_expert_used: u32,
    /// Width of each expert's feed-forward layer, when the file sets it.
    pub n_ff_exp: Option<u32>,
    /// Bytes of all routed experts' weights (part of `tensor_bytes`).
    pub expert_bytes: u64,
    /// Tokens a windowed layer looks back over, when the model has windowed layers.
    pub sliding_window: Option<u32>,
    /// One letter per layer: `w` windowed, `G` global (with a window).
    pub layer_pattern: Option<String>,
    /// `tokenizer.ggml.model`, e.g. `gpt2` or `llama`.
    pub tokenizer_model: Option<String>,
    /// Number of metadata key-value pairs.
    pub kv_count: usize,
    /// Number of tensors.
    pub tensor_count: usize,
    /// How many tensors have each ggml type.
    pub tensor_types: BTreeMap<String, usize>,
    /// True when there is no `output.weight`, so the output projection reuses
    /// `token_embd.weight`.
    pub output_tied: bool,
    /// Alignment of tensor data in bytes.
    pub alignment: u32,
    /// Byte offset of the data section in the file.
    pub data_offset: u64,
    /// Bytes of all tensor data.
    pub tensor_bytes: u64,
    /// Tensor bytes of each layer (`blk.N.*`), indexed by layer.
    pub layer_bytes: Vec<u64>,
    /// Tensor bytes outside the layers.
    pub non_layer_bytes: u64,
    /// The tensors outside the layers.
    pub non_layer_tensors: Vec<TensorSummary>,
}

/// `general.file_type`, as its id and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileTypeSummary {
    /// The `llama_ftype` id as stored.
    pub id: u32,
    /// The `llama_ftype` name without its prefix, e.g. `MOSTLY_Q4_1`.
    pub name: Option<String>,
}

/// One tensor, as `inspect` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorSummary {
    /// The tensor's name.
    pub name: String,
    /// ggml's name for its type, e.g. `q4_K`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Dims in ggml order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// Size of its data in bytes.
    pub bytes: u64,
}

impl TensorSummary {
    fn of(t: &TensorInfo) -> Self {
        TensorSummary {
            name: t.name().to_owned(),
            ty: t.ty().name().to_owned(),
            dims: t.dims().to_vec(),
            bytes: t.n_bytes(),
        }
    }
}

/// Summarizes a parsed llama-family model.
pub fn summarize(gguf: &Gguf) -> Result<ModelSummary, GgufError> {
    let md = gguf.metadata_map();
    let hp = LlamaHparams::from_metadata(md)?;
    hp.check_tensors(gguf.tensors())?;
    let layers = LayerBytes::of(gguf.tensors(), hp.n_layer)?;

    let mut tensor_types = BTreeMap::new();
    for t in gguf.tensors() {
        *tensor_types.entry(t.ty().name().to_owned()).or_insert(0) += 1;
    }
    let file_type = md
        .get_opt::<u32>(keys::FILE_TYPE)?
        .map(|id| FileTypeSummary {
            id,
            name: FileType(id).name().map(str::to_owned),
        });

    let family = crate::arch::lookup(&hp.architecture).map(|a| a.variant(hp.n_expert > 0));
    let window = match family {
        Some(f) if f.sliding_window => {
            crate::model::windowed_layers(md, &hp.architecture, hp.n_layer)?
        }
        _ => None,
    };
    Ok(ModelSummary {
        family: family.map(|f| f.name.to_owned()),
        n_expert: hp.n_expert,
        n_expert_used: hp.n_expert_used,
        n_ff_exp: hp.n_ff_exp,
        expert_bytes: gguf
            .tensors()
            .iter()
            .filter(|t| crate::plan::cost::is_expert_tensor(t.name()))
            .map(|t| t.n_bytes())
            .sum(),
        sliding_window: window.as_ref().map(|(w, _)| *w),
        layer_pattern: window
            .map(|(_, layers)| layers.iter().map(|&w| if w { 'w' } else { 'G' }).collect()),
        path: None,
        gguf_version: gguf.version(),
        file_size: gguf.bytes().len() as u64,
        name: md.get_opt::<&str>(keys::NAME)?.map(str::to_owned),
        file_type,
        n_layer: hp.n_layer,
        n_embd: hp.n_embd,
        n_ff: hp.n_ff,
        n_head: hp.n_head,
        n_head_kv: hp.n_head_kv,
        head_dim: hp.head_dim,
        n_vocab: hp.n_vocab,
        n_ctx_train: hp.n_ctx_train,
        n_rot: hp.n_rot,
        rope_freq_base: hp.rope_freq_base,
        rms_eps: hp.rms_eps,
        tokenizer_model: md
            .get_opt::<&str>(keys::TOKENIZER_MODEL)?
            .map(str::to_owned),
        kv_count: md.len(),
        tensor_count: gguf.tensors().len(),
        tensor_types,
        output_tied: gguf.tensor(OUTPUT_TENSOR).is_none(),
        alignment: gguf.alignment(),
        data_offset: gguf.data_offset(),
        tensor_bytes: layers.total(),
        layer_bytes: layers.layers.iter().map(|l| l.bytes).collect(),
        non_layer_bytes: layers.other.bytes,
        non_layer_tensors: gguf
            .tensors()
            .iter()
            .filter(|t| crate::gguf::llama::layer_index(t.name()).is_none())
            .map(TensorSummary::of)
            .collect(),
        architecture: hp.architecture,
    })
}

/// Opens the model at `path` and renders its summary as text, or as pretty
/// JSON when `json` is set.
pub fn run_inspect(path: impl AsRef<Path>, json: bool) -> Result<String, InspectError> {
    let path = path.as_ref();
    let gguf = Gguf::open(path)?;
    let mut summary = summarize(&gguf)?;
    summary.path = Some(path.display().to_string());
    if json {
        Ok(serde_json::to_string_pretty(&summary)? + "\n")
    } else {
        Ok(summary.to_string())
    }
}

/// `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1,234,567 B (1.18 MiB)`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} B ({v:.2} {})", grouped(n), UNITS[unit])
}

fn dims(d: &[u64]) -> String {
    d.iter().map(u64::to_string).collect::<Vec<_>>().join(" × ")
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, label: &str, value: &dyn fmt::Display| {
            writeln!(f, "{label:<16}{value}")
        };

        if let Some(path) = &self.path {
            row(f, "file", path)?;
        }
        row(
            f,
            "format",
            &format!(
                "GGUF v{}, {}, {} metadata keys, {} tensors",
                self.gguf_version,
                bytes(self.file_size),
                self.kv_count,
                self.tensor_count
            ),
        )?;
        row(f, "architecture", &self.architecture)?;
        if let Some(name) = &self.name {
            row(f, "name", name)?;
        }
        if let Some(ft) = &self.file_type {
            row(
                f,
                "file type",
                &format!("{} ({})", ft.name.as_deref().unwrap_or("unknown"), ft.id),
            )?;
        }
        row(f, "layers", &self.n_layer)?;
        row(f, "embedding", &self.n_embd)?;
        row(f, "feed-forward", &self.n_ff)?;
        row(
            f,
            "heads",
            &format!("{} (head size {})", self.n_head, self.head_dim),
        )?;
        row(f, "KV heads", &self.n_head_kv)?;
        if let Some(family) = &self.family {
            row(f, "runs as", family)?;
        }
        if self.n_expert > 0 {
            let width = self
                .n_ff_exp
                .map(|w| format!(", feed-forward {w} each"))
                .unwrap_or_default();
            row(
                f,
                "experts",
                &format!(
                    "{} per layer, {} used per token{width}; {} of expert weights",
                    self.n_expert,
                    self.n_expert_used,
                    bytes(self.expert_bytes)
                ),
            )?;
        }
        if let (Some(w), Some(p)) = (self.sliding_window, &self.layer_pattern) {
            row(f, "sliding window", &format!("{w} tokens"))?;
            row(f, "layer pattern", &format!("{p} (w windowed, G global)"))?;
        }
        let tokenizer = self
            .tokenizer_model
            .as_deref()
            .map(|m| format!(" (tokenizer {m})"))
            .unwrap_or_default();
        row(f, "vocabulary", &format!("{}{tokenizer}", self.n_vocab))?;
        row(f, "context", &format!("{} (trained)", self.n_ctx_train))?;
        row(
            f,
            "rope",
            &format!("freq base {}, {} dims", self.rope_freq_base, self.n_rot),
        )?;
        row(f, "rms norm eps", &self.rms_eps)?;
        row(
            f,
            "output",
            &if self.output_tied {
                "tied to token_embd.weight"
            } else {
                "output.weight"
            },
        )?;
        let types: Vec<String> = self
            .tensor_types
            .iter()
            .map(|(t, n)| format!("{t} ×{n}"))
            .collect();
        row(f, "tensor types", &types.join(", "))?;
        row(
            f,
            "tensor data",
            &format!(
                "{} from byte {}, aligned to {}",
                bytes(self.tensor_bytes),
                grouped(self.data_offset),
                self.alignment
            ),
        )?;

        writeln!(f)?;
        writeln!(f, "non-layer tensors: {}", bytes(self.non_layer_bytes))?;
        let name_w = self
            .non_layer_tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(0);
        let dims_w = self
            .non_layer_tensors
            .iter()
            .map(|t| dims(&t.dims).chars().count())
            .max()
            .unwrap_or(0);
        for t in &self.non_layer_tensors {
            writeln!(
                f,
                "  {:<name_w$}  {:<5}  {:<dims_w$}  {}",
                t.name,
                t.ty,
                dims(&t.dims),
                bytes(t.bytes)
            )?;
        }

        writeln!(f)?;
        writeln!(f, "layers: {}", bytes(self.layer_bytes.iter().sum()))?;
        // Runs of consecutive layers of equal size, one line each.
        let mut start = 0;
        while start < self.layer_bytes.len() {
            let size = self.layer_bytes[start];
            let end = start
                + self.layer_bytes[start..]
                    .iter()
                    .take_while(|&&b| b == size)
                    .count();
            if end - start == 1 {
                writeln!(f, "  {start:<9}  {}", bytes(size))?;
            } else {
                writeln!(
                    f,
                    "  {:<9}  {} each",
                    format!("{start}-{}", end - 1),
                    bytes(size)
                )?;
            }
            start = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;
    use crate::gguf::GgmlType;

    /// A tiny llama model: 2 layers, embedding 64, 4 heads, 2 KV heads, 5 tokens, no output.weight.
    fn tiny() -> Gguf {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "llama")
            .add_kv("general.name", "tiny")
            .add_kv("general.file_type", 1u32)
            .add_kv("llama.block_count", 2u32)
            .add_kv("llama.embedding_length", 64u32)
            .add_kv("llama.feed_forward_length", 96u32)
            .add_kv("llama.attention.head_count", 4u32)
            .add_kv("llama.attention.head_count_kv", 2u32)
            .add_kv("llama.context_length", 512u32)
            .add_kv("tokenizer.ggml.model", "llama")
            .add_kv("tokenizer.ggml.tokens", vec!["<s>", "</s>", "a", "b", "c"]);
        w.add_tensor("token_embd.weight", GgmlType::F16, &[64, 5], vec![0u8; 640])
            .unwrap();
        w.add_tensor("output_norm.weight", GgmlType::F32, &[64], vec![0u8; 256])
            .unwrap();
        for layer in 0..2 {
            w.add_tensor(
                format!("blk.{layer}.attn_norm.weight"),
                GgmlType::F32,
                &[64],
                vec![0u8; 256],
            )
            .unwrap();
            w.add_tensor(
                format!("blk.{layer}.attn_q.weight"),
                GgmlType::Q8_0,
                &[64, 64],
                vec![0u8; 2 * 34 * 64],
            )
            .unwrap();
        }
        Gguf::from_bytes(w.to_bytes().unwrap().0).unwrap()
    }

    #[test]
    fn summary_fields() {
        let s = summarize(&tiny()).unwrap();
        assert_eq!(s.architecture, "llama");
        assert_eq!(s.name.as_deref(), Some("tiny"));
        assert_eq!(
            s.file_type,
            Some(FileTypeSummary {
                id: 1,
                name: Some("MOSTLY_F16".into())
            })
        );
        assert_eq!(
            (
                s.n_layer,
                s.n_embd,
                s.n_ff,
                s.n_head,
                s.n_head_kv,
                s.head_dim
            ),
            (2, 64, 96, 4, 2, 16)
        );
        assert_eq!((s.n_vocab, s.n_ctx_train), (5, 512));
        assert_eq!(s.tokenizer_model.as_deref(), Some("llama"));
        assert_eq!(s.tensor_count, 6);
        assert_eq!(s.tensor_types.get("q8_0"), Some(&2));
        assert!(s.output_tied);
        assert_eq!(s.layer_bytes, [256 + 4352, 256 + 4352]);
        assert_eq!(s.non_layer_bytes, 640 + 256);
        assert_eq!(s.tensor_bytes, 2 * (256 + 4352) + 640 + 256);
        assert_eq!(s.non_layer_tensors.len(), 2);
        assert_eq!(s.non_layer_tensors[0].dims, [64, 5]);
    }

    #[test]
    fn text_report() {
        let text = summarize(&tiny()).unwrap().to_string();
        for line in [
            "architecture    llama",
            "layers          2",
            "KV heads        2",
            "vocabulary      5 (tokenizer llama)",
            "file type       MOSTLY_F16 (1)",
            "  0-1        4,608 B (4.50 KiB) each",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
        assert!(text.contains("token_embd.weight"));
    }

    #[test]
    fn json_report() {
        let s = summarize(&tiny()).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(v["architecture"], "llama");
        assert_eq!(v["n_layer"], 2);
        assert_eq!(v["file_type"]["name"], "MOSTLY_F16");
        assert_eq!(v["non_layer_tensors"][0]["type"], "f16");
        assert!(v.get("path").is_none());
    }

    #[test]
    fn run_inspect_reads_a_file() {
        let path =
            std::env::temp_dir().join(format!("shardline-inspect-{}.gguf", std::process::id()));
        std::fs::write(&path, tiny().bytes()).unwrap();
        let text = run_inspect(&path, false).unwrap();
        assert!(text.starts_with("file            "), "{text}");
        let json = run_inspect(&path, true).unwrap();
        assert!(json.contains("\"n_head_kv\": 2"), "{json}");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            run_inspect(&path, false),
            Err(InspectError::Gguf(GgufError::Io { .. }))
        ));
    }
}

//! Ollama's listing routes: `/api/tags`, `/api/show`, `/api/ps`,
//! `/api/version` (shapes from Ollama's API documentation).

use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::super::models::ModelSlot;
use super::super::state::AppState;
use super::{body_of, find, rfc3339, OllamaError, OLLAMA_API_VERSION};
use crate::engine::Engine;
use crate::gguf::Value as GgufValue;

/// `1.23B`, `135M`: Ollama's way of writing a parameter count.
fn human_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0}M", n / 1e6)
    } else {
        format!("{:.0}K", n / 1e3)
    }
}

fn parameters(engine: &Engine) -> u64 {
    engine
        .gguf()
        .tensors()
        .iter()
        .map(|t| t.dims().iter().product::<u64>())
        .sum()
}

/// `details`: format, family, size and quantization.
fn details(engine: Option<&Engine>) -> Value {
    let Some(e) = engine else {
        return json!({"parent_model": "", "format": "", "family": "", "families": null,
                      "parameter_size": "", "quantization_level": ""});
    };
    let g = e.gguf();
    let family = g
        .get_opt::<&str>("general.architecture")
        .ok()
        .flatten()
        .unwrap_or("")
        .to_owned();
    let quant = crate::inspect::summarize(g)
        .ok()
        .and_then(|s| s.file_type)
        .and_then(|f| f.name)
        .map(|n| n.trim_start_matches("MOSTLY_").to_owned())
        .unwrap_or_default();
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": human_count(parameters(e)),
        "quantization_level": quant,
    })
}

fn modified(m: &ModelSlot, engine: Option<&Engine>) -> String {
    let t = m
        .ollama()
        .and_then(|o| o.modified)
        .or_else(|| {
            let path = m.ollama().map(|o| o.gguf.clone())?;
            std::fs::metadata(path).and_then(|x| x.modified()).ok()
        })
        .or_else(|| engine.map(|_| SystemTime::now()));
    rfc3339(t.unwrap_or_else(SystemTime::now))
}

/// One `/api/tags` entry (also `/api/ps`'s, with more fields there).
fn entry(m: &ModelSlot) -> Option<Value> {
    let name = m.name()?;
    let engine = m.engine().ok();
    let size = engine.as_ref().map_or(0, |e| e.gguf().bytes().len() as u64);
    let digest = m
        .ollama()
        .map(|o| o.digest.trim_start_matches("sha256:").to_owned())
        .unwrap_or_default();
    Some(json!({
        "name": name,
        "model": name,
        "modified_at": modified(m, engine.as_ref()),
        "size": size,
        "digest": digest,
        "details": details(engine.as_ref()),
    }))
}

/// `GET /api/tags`: the models that can answer now.
pub(super) async fn tags(State(state): State<AppState>) -> Response {
    let models: Vec<Value> = state
        .models()
        .all()
        .iter()
        .filter(|m| m.available())
        .filter_map(|m| entry(m))
        .collect();
    Json(json!({ "models": models })).into_response()
}

/// `GET /api/ps`: the models loaded here (not those forwarded).
pub(super) async fn ps(State(state): State<AppState>) -> Response {
    let models: Vec<Value> = state
        .models()
        .all()
        .iter()
        .filter(|m| m.upstream_target().is_none() && m.available())
        .filter_map(|m| {
            let mut v = entry(m)?;
            v["expires_at"] = json!("9999-12-31T23:59:59.000000000Z");
            v["size_vram"] = json!(0);
            // shardline's own: the servers running the model's layers.
            if let Ok(e) = m.engine() {
                let mut servers: Vec<String> = Vec::new();
                for st in e.current_plan().stages {
                    if let crate::plan::Target::Remote { endpoint, .. } = st.target {
                        if !servers.contains(&endpoint) {
                            servers.push(endpoint);
                        }
                    }
                }
                v["servers"] = json!(servers);
            }
            Some(v)
        })
        .collect();
    Json(json!({ "models": models })).into_response()
}

/// `GET /api/version`.
pub(super) async fn version() -> Response {
    Json(json!({
        "version": OLLAMA_API_VERSION,
        "shardline": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

fn metadata_json(v: &GgufValue) -> Option<Value> {
    Some(match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F32(x) => json!(x),
        GgufValue::F64(x) => json!(x),
        GgufValue::Bool(x) => json!(x),
        GgufValue::String(s) => json!(s),
        // Token lists run to 100k entries: left out, as Ollama does
        // unless asked for verbose output.
        GgufValue::Array(_) => Value::Null,
    })
}

/// `POST /api/show` (`model`, or the older `name`).
pub(super) async fn show(State(state): State<AppState>, req: Request) -> Response {
    show_inner(state, req)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn show_inner(state: AppState, req: Request) -> Result<Response, OllamaError> {
    let body = body_of(&state, req).await?;
    let key = if body.get("model").is_some() {
        "model"
    } else {
        "name"
    };
    let slot = find(&state, &body, key)?.clone();
    let name = slot.name().unwrap_or_default();
    if let Some(up) = slot.upstream_target() {
        return Ok(Json(json!({
            "license": "",
            "modelfile": format!("# forwarded by shardline to {} as {}\n", up.url(), up.model()),
            "parameters": "",
            "template": "",
            "details": details(None),
            "model_info": {},
            "capabilities": ["completion"],
            "modified_at": modified(&slot, None),
        }))
        .into_response());
    }
    let engine = slot.engine()?;
    let g = engine.gguf();
    let mut info = Map::new();
    for (k, v) in g.metadata_map().iter() {
        if k == crate::chat::TEMPLATE_KEY {
            continue;
        }
        if let Some(j) = metadata_json(v) {
            info.insert(k.to_owned(), j);
        }
    }
    info.insert("general.parameter_count".into(), json!(parameters(&engine)));
    // The template that runs is the GGUF's (Jinja); an Ollama model's Go
    // template is shown only when the file has none (and is not run).
    let jinja = g
        .get_opt::<&str>(crate::chat::TEMPLATE_KEY)
        .ok()
        .flatten()
        .map(str::to_owned);
    let ollama = slot.ollama();
    let template = jinja
        .or_else(|| ollama.and_then(|o| o.template.clone()))
        .unwrap_or_default();
    let parameters_text = ollama.map(|o| o.params.to_lines()).unwrap_or_default();
    let mut modelfile = format!(
        "# Modelfile generated by shardline for {name}\nFROM {}\n",
        ollama.map_or_else(|| name.clone(), |o| o.gguf.display().to_string())
    );
    if let Some(s) = ollama.and_then(|o| o.system.as_ref()) {
        modelfile.push_str(&format!("SYSTEM \"\"\"{s}\"\"\"\n"));
    }
    for line in parameters_text.lines() {
        modelfile.push_str(&format!("PARAMETER {line}\n"));
    }
    let mut v = json!({
        "license": "",
        "modelfile": modelfile,
        "parameters": parameters_text,
        "template": template,
        "details": details(Some(&engine)),
        "model_info": info,
        "capabilities": ["completion"],
        "modified_at": modified(&slot, Some(&engine)),
    });
    if let Some(s) = ollama.and_then(|o| o.system.as_ref()) {
        v["system"] = json!(s);
    }
    Ok(Json(v).into_response())
}

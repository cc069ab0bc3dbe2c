//! Loading the served models one after another, each on servers no other
//! model holds (an rpc-server serves one client at a time), placed whole on
//! one server when it fits there.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::models::{ModelSlot, ModelSpec, ModelTable, Placement, Slot, Source};
use super::upstream::{Upstream, UpstreamUrlError};
use crate::engine::{Engine, EngineError, EngineOptions};
use crate::plan::Strategy;

/// Why the models cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// No model given.
    #[error("no model to serve")]
    Empty,
    /// Two models with one name.
    #[error("two models are named '{0}'")]
    Duplicate(String),
    /// An upstream URL cannot be used.
    #[error("model '{model}': {source}")]
    Upstream {
        /// The model.
        model: String,
        /// What is wrong with its URL.
        source: UpstreamUrlError,
    },
    /// No server is left for a model.
    #[error("model '{model}': no free server (an rpc-server serves one client at a time; {held})")]
    NoServer {
        /// The model.
        model: String,
        /// Which models hold its servers.
        held: String,
    },
    /// A model could not be loaded.
    #[error("loading model '{model}': {source}")]
    Load {
        /// The model.
        model: String,
        /// Why.
        source: Box<EngineError>,
    },
}

/// A local model waiting to be loaded.
pub(crate) struct Pending {
    pub slot: Arc<ModelSlot>,
    pub engine: EngineOptions,
    pub placement: Placement,
}

/// Builds the model table from `specs`: every slot starts loading (or
/// forwarded); the local ones come back to be loaded in order.
pub(crate) fn table(specs: Vec<ModelSpec>) -> Result<(ModelTable, Vec<Pending>), ModelsError> {
    if specs.is_empty() {
        return Err(ModelsError::Empty);
    }
    let mut seen = std::collections::HashSet::new();
    let mut slots = Vec::new();
    let mut local = Vec::new();
    for spec in specs {
        if !seen.insert(spec.name.clone()) {
            return Err(ModelsError::Duplicate(spec.name));
        }
        match spec.source {
            Source::Local {
                mut engine,
                placement,
                ollama,
            } => {
                engine.name = Some(spec.name.clone());
                slots.push(ModelSlot::local(Some(spec.name), ollama));
                local.push(Some((*engine, placement)));
            }
            Source::Upstream { url, model } => {
                let up = Upstream::new(&url, &model).map_err(|source| ModelsError::Upstream {
                    model: spec.name.clone(),
                    source,
                })?;
                slots.push(ModelSlot::upstream(spec.name, up));
                local.push(None);
            }
        }
    }
    let table = ModelTable::new(slots);
    let pending = table
        .all()
        .iter()
        .zip(local)
        .filter_map(|(slot, l)| {
            l.map(|(engine, placement)| Pending {
                slot: slot.clone(),
                engine,
                placement,
            })
        })
        .collect();
    Ok((table, pending))
}

/// Loads each pending model in order and marks its slot ready; a model
/// that fails stops the rest (and marks its slot failed).
pub(crate) async fn load_all(pending: Vec<Pending>) -> Result<Vec<Engine>, ModelsError> {
    // Server -> the model holding it.
    let mut held: BTreeMap<String, String> = BTreeMap::new();
    let mut engines = Vec::new();
    for p in pending {
        let name = p.slot.name().unwrap_or_default();
        let slot = p.slot.clone();
        let progress_slot = p.slot.clone();
        let mut opts = p.engine;
        let chained = opts.on_progress.take();
        opts.on_progress = Some(Arc::new(move |pr| {
            progress_slot.set_progress(pr);
            if let Some(f) = &chained {
                f(pr);
            }
        }));
        let r = place_and_load(&name, opts, p.placement, &mut held).await;
        match r {
            Ok(e) => {
                slot.set_slot(Slot::Ready(e.clone()));
                engines.push(e);
            }
            Err(e) => {
                slot.set_slot(Slot::Failed(e.to_string()));
                return Err(e);
            }
        }
    }
    Ok(engines)
}

async fn place_and_load(
    name: &str,
    mut opts: EngineOptions,
    placement: Placement,
    held: &mut BTreeMap<String, String>,
) -> Result<Engine, ModelsError> {
    let load_err = |source| ModelsError::Load {
        model: name.to_owned(),
        source: Box::new(source),
    };
    // No servers: the engine starts its own local workers.
    if opts.servers.is_empty() {
        return Engine::load(opts).await.map_err(load_err);
    }
    let free: Vec<String> = opts
        .servers
        .iter()
        .filter(|s| !held.contains_key(*s))
        .cloned()
        .collect();
    let busy: Vec<String> = opts
        .servers
        .iter()
        .filter_map(|s| held.get(s).map(|m| format!("{s} is held by '{m}'")))
        .collect();
    if free.is_empty() || (placement == Placement::Shard && !busy.is_empty()) {
        return Err(ModelsError::NoServer {
            model: name.to_owned(),
            held: busy.join(", "),
        });
    }
    if placement == Placement::Auto && free.len() > 1 {
        // Whole on the first server it fits: one server has no split to
        // choose, so plan by memory and measure nothing.
        for s in &free {
            let mut one = opts.clone();
            one.servers = vec![s.clone()];
            one.strategy = Strategy::Memory;
            match Engine::load(one).await {
                Ok(e) => {
                    tracing::info!(model = name, server = %s, "placed whole on one server");
                    held.insert(s.clone(), name.to_owned());
                    return Ok(e);
                }
                Err(EngineError::Plan(why)) => {
                    tracing::info!(model = name, server = %s, "does not fit one server: {why}");
                }
                Err(e) => return Err(load_err(e)),
            }
        }
    }
    opts.servers = free.clone();
    let e = Engine::load(opts).await.map_err(load_err)?;
    for s in free {
        held.insert(s, name.to_owned());
    }
    Ok(e)
}

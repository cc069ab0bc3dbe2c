//! A stage on an rpc-server.

use super::{ExecError, Step};
use crate::model::LlamaConfig;

/// Layers computed on a server (filled in next).
#[derive(Debug)]
pub struct RemoteStage {}

impl RemoteStage {
    /// Runs the stage.
    pub async fn run(&mut self, _cfg: &LlamaConfig, _step: &Step, _hidden: &[f32]) -> Result<Vec<f32>, ExecError> {
        unimplemented!()
    }
}

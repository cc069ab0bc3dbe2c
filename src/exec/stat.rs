//! What each stage reports about its steps.

/// Cumulative numbers of one stage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageStat {
    /// `host:port`, or `local` for the coordinator's CPU.
    pub server: String,
    /// Steps run.
    pub steps: u64,
    /// Seconds spent in those steps (send, compute, receive).
    pub seconds: f64,
    /// Bytes sent to the server (inputs, graphs).
    pub bytes_sent: u64,
    /// Bytes received (activations, logits).
    pub bytes_received: u64,
    /// Steps that sent the stage's graph (GRAPH_COMPUTE) rather than rerun
    /// the one the server held: the first of each shape, and every step
    /// after another graph took the device's slot. On the coordinator's
    /// CPU: graphs built (one per step shape).
    pub graphs_sent: u64,
    /// Bytes of the buffers the stage holds on its device (weights, KV
    /// cache, inputs, compute), as last allocated; on the coordinator's CPU,
    /// its weights, KV cache and compute buffer.
    pub allocated_bytes: u64,
}

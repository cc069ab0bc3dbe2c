//! Client side of ggml's RPC wire protocol (version 7.0.0), talking to
//! unmodified llama.cpp `rpc-server` processes (or `shardline worker`).
//!
//! One [`RpcClient`] is one TCP session with one server. The byte layouts
//! live in the `shardline-protocol` crate; this module adds the socket,
//! timeouts, pipelining and the client-side checks that keep a malformed
//! request from closing the connection or aborting the server.
//!
//! A typical session: [`RpcClient::connect`] (HELLO and device count),
//! [`RpcClient::device_memory`], [`RpcClient::alignment`],
//! [`RpcClient::alloc_buffer`], [`RpcClient::set_tensor`] for every weight,
//! [`RpcClient::graph_compute`], [`RpcClient::get_tensor`] for the result,
//! then [`RpcClient::set_tensor`] on the inputs and
//! [`RpcClient::graph_recompute`] for the next step.

mod client;
mod error;
mod validate;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use client::{ClientOptions, RpcClient, Traffic, Upload};
pub use error::{InvalidRequest, RpcError};
pub use validate::RemoteBuffer;

pub use shardline_protocol::{Command, DeviceMemory, RpcTensor, Version};

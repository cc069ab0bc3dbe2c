//! Computation graphs: built with ggml (through `ggml-sys`), laid out in remote
//! buffers, and turned into the RPC wire form a server rebuilds and computes.

pub mod layer;
pub mod layout;
pub mod llama;
pub mod measure;
pub mod window;
pub mod wire;

pub use layout::{layout_nodes, Layout};
pub use wire::{to_wire, RemoteLocation, WireError, WireGraph};

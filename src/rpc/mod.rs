//! RPC client (placeholder).

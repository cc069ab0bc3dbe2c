//! What a set of rpc-servers offers: versions, devices, memory, alignment.

use std::fmt;

use serde::Serialize;

use crate::rpc::{ClientOptions, RpcClient, RpcError};

/// One device of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceReport {
    /// Index on its server.
    pub index: u32,
    /// Free memory in bytes.
    pub free: u64,
    /// Total memory in bytes.
    pub total: u64,
    /// Buffer alignment in bytes.
    pub alignment: u64,
    /// Largest single buffer in bytes.
    pub max_size: u64,
}

/// One server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerReport {
    /// `host:port`.
    pub endpoint: String,
    /// Protocol version it speaks, `major.minor.patch`.
    pub protocol: String,
    /// Its devices.
    pub devices: Vec<DeviceReport>,
}

/// Connects to `endpoint`, asks for everything a planner needs, and closes.
pub async fn probe(endpoint: &str, opts: ClientOptions) -> Result<ServerReport, RpcError> {
    let mut c = RpcClient::connect(endpoint, opts).await?;
    let v = c.server_version();
    let mut devices = Vec::new();
    for index in 0..c.device_count() {
        let mem = c.device_memory(index).await?;
        devices.push(DeviceReport {
            index,
            free: mem.free,
            total: mem.total,
            alignment: c.alignment(index).await?,
            max_size: c.max_size(index).await?,
        });
    }
    c.close().await?;
    Ok(ServerReport {
        endpoint: endpoint.to_string(),
        protocol: format!("{}.{}.{}", v.major, v.minor, v.patch),
        devices,
    })
}

/// Probes each server in turn; the first failure names its server.
pub async fn probe_all(
    endpoints: &[String],
    opts: ClientOptions,
) -> Result<Vec<ServerReport>, (String, RpcError)> {
    let mut out = Vec::with_capacity(endpoints.len());
    for ep in endpoints {
        out.push(probe(ep, opts.clone()).await.map_err(|e| (ep.clone(), e))?);
    }
    Ok(out)
}

/// Bytes as a short human-readable size (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A table of servers, one row per device.
#[derive(Debug)]
pub struct ClusterTable<'a>(pub &'a [ServerReport]);

impl fmt::Display for ClusterTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<22} {:<8} {:>6} {:>11} {:>11} {:>7} {:>11}",
            "server", "protocol", "device", "free", "total", "align", "max buffer"
        )?;
        for s in self.0 {
            for d in &s.devices {
                writeln!(
                    f,
                    "{:<22} {:<8} {:>6} {:>11} {:>11} {:>7} {:>11}",
                    s.endpoint,
                    s.protocol,
                    d.index,
                    human_bytes(d.free),
                    human_bytes(d.total),
                    d.alignment,
                    if d.max_size == u64::MAX {
                        "unlimited".to_string()
                    } else {
                        human_bytes(d.max_size)
                    }
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn table_has_a_row_per_device() {
        let s = ServerReport {
            endpoint: "127.0.0.1:1".into(),
            protocol: "7.0.0".into(),
            devices: vec![
                DeviceReport {
                    index: 0,
                    free: 1 << 30,
                    total: 2 << 30,
                    alignment: 32,
                    max_size: u64::MAX,
                },
                DeviceReport {
                    index: 1,
                    free: 0,
                    total: 0,
                    alignment: 64,
                    max_size: 1 << 20,
                },
            ],
        };
        let text = ClusterTable(&[s]).to_string();
        assert_eq!(text.lines().count(), 3);
        assert!(
            text.contains("1.0 GiB") && text.contains("2.0 GiB"),
            "{text}"
        );
    }
}

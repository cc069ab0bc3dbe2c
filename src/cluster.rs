//! What a set of rpc-servers offers: versions, devices, memory, alignment.

use std::fmt;

use serde::Serialize;

use crate::plan::{human_bytes, DeviceKind, DeviceSpec};
use crate::rpc::{ClientOptions, RpcClient, RpcError};

/// One device of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl DeviceReport {
    /// The device's kind, inferred from its alignment and largest buffer
    /// (the protocol reports no names).
    pub fn kind(&self) -> DeviceKind {
        DeviceKind::infer(self.alignment, self.max_size)
    }
}

impl Serialize for DeviceReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("DeviceReport", 6)?;
        st.serialize_field("index", &self.index)?;
        st.serialize_field("kind", &self.kind())?;
        st.serialize_field("free", &self.free)?;
        st.serialize_field("total", &self.total)?;
        st.serialize_field("alignment", &self.alignment)?;
        st.serialize_field("max_size", &self.max_size)?;
        st.end()
    }
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

/// Every device of every server, in order, as the planner sees them.
pub fn devices_from_reports(reports: &[ServerReport]) -> Vec<DeviceSpec> {
    reports
        .iter()
        .flat_map(|s| {
            s.devices.iter().map(|d| DeviceSpec {
                endpoint: s.endpoint.clone(),
                device: d.index,
                free: d.free,
                total: d.total,
                alignment: d.alignment,
                max_size: d.max_size,
            })
        })
        .collect()
}

/// A table of servers, one row per device.
#[derive(Debug)]
pub struct ClusterTable<'a>(pub &'a [ServerReport]);

impl fmt::Display for ClusterTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<22} {:<8} {:>6} {:<10} {:>11} {:>11} {:>7} {:>11}",
            "server", "protocol", "device", "kind", "free", "total", "align", "max buffer"
        )?;
        for s in self.0 {
            for d in &s.devices {
                writeln!(
                    f,
                    "{:<22} {:<8} {:>6} {:<10} {:>11} {:>11} {:>7} {:>11}",
                    s.endpoint,
                    s.protocol,
                    d.index,
                    d.kind().short(),
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

    #[test]
    fn devices_from_cluster_reports() {
        let reports = [
            ServerReport {
                endpoint: "a:1".into(),
                protocol: "7.0.0".into(),
                devices: vec![
                    DeviceReport {
                        index: 0,
                        free: 1,
                        total: 2,
                        alignment: 32,
                        max_size: 100,
                    },
                    DeviceReport {
                        index: 1,
                        free: 3,
                        total: 4,
                        alignment: 64,
                        max_size: u64::MAX,
                    },
                ],
            },
            ServerReport {
                endpoint: "b:2".into(),
                protocol: "7.0.0".into(),
                devices: vec![],
            },
            ServerReport {
                endpoint: "c:3".into(),
                protocol: "7.0.0".into(),
                devices: vec![DeviceReport {
                    index: 0,
                    free: 5,
                    total: 6,
                    alignment: 32,
                    max_size: 7,
                }],
            },
        ];
        let d = devices_from_reports(&reports);
        assert_eq!(d.len(), 3);
        assert_eq!(
            d[1],
            DeviceSpec {
                endpoint: "a:1".into(),
                device: 1,
                free: 3,
                total: 4,
                alignment: 64,
                max_size: u64::MAX
            }
        );
        assert_eq!(
            (d[2].endpoint.as_str(), d[2].device, d[2].max_size),
            ("c:3", 0, 7)
        );
    }
}

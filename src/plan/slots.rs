//! Spare graph slots: a second CPU device on one server.
//!
//! A server keeps one stored graph per device, so a share of the output
//! head computed on the device that also runs a stage evicts the stage's
//! graph, and both are sent again every step. ggml has one CPU device per
//! process; a server that lists it twice (`shardline worker --device
//! CPU,CPU`, or `rpc-server -d CPU,CPU`) offers two graph slots over one
//! memory. The planner then keeps the second as a spare slot: it gets no
//! layers under the memory, even and throughput strategies (it would count
//! the same memory twice); the first device's stage runs its prompt chunks
//! there ([`super::Stage::spare_slot`]), and its share of a split head,
//! so neither evicts the stage's decode graph.

use super::kind::{DeviceKind, Excluded};
use super::DeviceSpec;

/// For each device, the index of the device whose memory it shares when it
/// is a spare slot (a CPU device listed after another CPU device of the
/// same server), else `None`.
pub fn spares(devices: &[DeviceSpec]) -> Vec<Option<usize>> {
    devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if d.kind() != DeviceKind::Cpu {
                return None;
            }
            devices[..i]
                .iter()
                .position(|p| p.endpoint == d.endpoint && p.kind() == DeviceKind::Cpu)
        })
        .collect()
}

/// The spare slots of `devices` (by [`spares`]), left out of layer
/// placement.
pub(crate) fn excluded(devices: &[DeviceSpec], spares: &[Option<usize>]) -> Vec<Excluded> {
    devices
        .iter()
        .zip(spares)
        .filter_map(|(d, s)| {
            let p = &devices[(*s)?];
            Some(Excluded {
                endpoint: d.endpoint.clone(),
                device: d.device,
                kind: d.kind(),
                reason: format!(
                    "a second graph slot of CPU device {} (the same memory): kept for its prompt chunks and share of the output head",
                    p.device
                ),
            })
        })
        .collect()
}

/// The first spare slot of device `primary`, by [`spares`].
pub(crate) fn slot_of(primary: usize, spares: &[Option<usize>]) -> Option<usize> {
    spares.iter().position(|s| *s == Some(primary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(endpoint: &str, device: u32, alignment: u64, max_size: u64) -> DeviceSpec {
        DeviceSpec {
            endpoint: endpoint.into(),
            device,
            free: 8 << 30,
            total: 16 << 30,
            alignment,
            max_size,
        }
    }

    #[test]
    fn a_second_cpu_device_of_a_server_is_a_spare_slot() {
        let devices = [
            dev("a:1", 0, 32, u64::MAX),
            dev("a:1", 1, 32, u64::MAX),
            dev("b:2", 0, 32, u64::MAX),
            // A GPU and the CPU of one server: two memories, no spare.
            dev("c:3", 0, 128, u64::MAX),
            dev("c:3", 1, 32, u64::MAX),
            // Two GPUs of one server are two memories too.
            dev("d:4", 0, 128, u64::MAX),
            dev("d:4", 1, 128, u64::MAX),
            dev("a:1", 2, 32, u64::MAX),
        ];
        let s = spares(&devices);
        assert_eq!(s, [None, Some(0), None, None, None, None, None, Some(0)]);
        assert_eq!(slot_of(0, &s), Some(1));
        assert_eq!(slot_of(2, &s), None);
        let out = excluded(&devices, &s);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].endpoint.as_str(), out[0].device), ("a:1", 1));
        assert!(out[0].reason.contains("CPU device 0"), "{}", out[0].reason);
    }
}

//! Client-side checks of requests against what this session knows: its
//! buffers and the server's device count. Pure functions, no I/O.

use std::collections::{HashMap, HashSet};

use shardline_protocol::{RpcTensor, GGML_OP_COUNT, GGML_TYPE_COUNT};

use super::error::InvalidRequest;

/// A buffer this session allocated on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemoteBuffer {
    /// The server's handle (`remote_ptr`), what `RpcTensor::buffer` holds.
    pub remote_ptr: u64,
    /// The buffer's base address; a tensor at byte `offset` of the buffer
    /// has `data = base + offset`.
    pub base: u64,
    /// The buffer's size in bytes (may exceed the size requested).
    pub size: u64,
    /// The device it lives on.
    pub device: u32,
}

impl RemoteBuffer {
    /// The remote address of byte `offset` of this buffer (for
    /// `RpcTensor::data`); `None` past the end.
    pub fn addr(&self, offset: u64) -> Option<u64> {
        if offset > self.size {
            return None;
        }
        self.base.checked_add(offset)
    }

    /// Whether `data .. data + len` lies inside this buffer.
    pub fn contains(&self, data: u64, len: u64) -> bool {
        let Some(start) = data.checked_sub(self.base) else {
            return false;
        };
        start <= self.size && len <= self.size - start
    }
}

/// `name#id` of a tensor, for error messages.
pub(crate) fn label(t: &RpcTensor) -> String {
    format!("{}#{}", String::from_utf8_lossy(t.name_bytes()), t.id)
}

/// The live buffers of a session.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    map: HashMap<u64, RemoteBuffer>,
}

impl Buffers {
    pub(crate) fn insert(&mut self, b: RemoteBuffer) {
        self.map.insert(b.remote_ptr, b);
    }

    pub(crate) fn remove(&mut self, remote_ptr: u64) -> Option<RemoteBuffer> {
        self.map.remove(&remote_ptr)
    }

    pub(crate) fn get(&self, remote_ptr: u64) -> Result<&RemoteBuffer, InvalidRequest> {
        self.map
            .get(&remote_ptr)
            .ok_or(InvalidRequest::UnknownBuffer { buffer: remote_ptr })
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &RemoteBuffer> {
        self.map.values()
    }

    /// Type and op known to the server.
    fn check_kind(t: &RpcTensor) -> Result<(), InvalidRequest> {
        if t.ty >= GGML_TYPE_COUNT {
            return Err(InvalidRequest::InvalidType {
                tensor: label(t),
                ty: t.ty,
            });
        }
        if t.op >= GGML_OP_COUNT {
            return Err(InvalidRequest::InvalidOp {
                tensor: label(t),
                op: t.op,
            });
        }
        Ok(())
    }

    /// A tensor that has data in one of our buffers: `data .. data + nbytes`
    /// inside it.
    pub(crate) fn check_tensor(
        &self,
        t: &RpcTensor,
        nbytes: u64,
    ) -> Result<&RemoteBuffer, InvalidRequest> {
        Self::check_kind(t)?;
        if t.buffer == 0 {
            return Err(InvalidRequest::NoBuffer { tensor: label(t) });
        }
        let b = self.get(t.buffer)?;
        if !b.contains(t.data, nbytes) {
            return Err(InvalidRequest::OutsideBuffer {
                tensor: label(t),
                data: t.data,
                nbytes,
                base: b.base,
                size: b.size,
            });
        }
        Ok(b)
    }

    /// A byte range `offset .. offset + len` of a tensor of `nbytes` bytes.
    ///
    /// Mirrors rpc-server: the range must lie inside the tensor (ggml aborts
    /// the server otherwise) and its start must lie strictly before the end of
    /// the buffer (the server closes the connection otherwise, even for an
    /// empty range).
    pub(crate) fn check_range(
        &self,
        t: &RpcTensor,
        nbytes: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), InvalidRequest> {
        let b = self.check_tensor(t, nbytes)?;
        let outside = || InvalidRequest::OutsideTensor {
            tensor: label(t),
            offset,
            len,
            nbytes,
        };
        if offset > nbytes || len > nbytes - offset {
            return Err(outside());
        }
        // check_tensor proved base <= data and data + nbytes <= base + size.
        let start = t.data.saturating_sub(b.base).saturating_add(offset);
        if start >= b.size {
            return Err(outside());
        }
        Ok(())
    }

    /// A tensor that may or may not have a buffer (`GET_ALLOC_SIZE`, graph
    /// tensors) and whose byte size may be unknown: a buffer, if named, must
    /// be ours, and the data address must lie inside it (all of
    /// `data .. data + nbytes` when `nbytes` is given).
    pub(crate) fn check_optional(
        &self,
        t: &RpcTensor,
        nbytes: Option<u64>,
    ) -> Result<(), InvalidRequest> {
        Self::check_kind(t)?;
        if t.buffer == 0 {
            if t.data != 0 {
                return Err(InvalidRequest::DataWithoutBuffer {
                    tensor: label(t),
                    data: t.data,
                });
            }
            return Ok(());
        }
        match nbytes {
            Some(n) => self.check_tensor(t, n).map(|_| ()),
            None => self.check_tensor(t, 0).map(|_| ()),
        }
    }

    /// A `GRAPH_COMPUTE`: non-empty, unique non-zero ids, every node,
    /// source and view source present, every tensor valid (see
    /// [`Buffers::check_optional`]). `nbytes`, when given, holds each
    /// tensor's byte size, in the same order as `tensors`.
    pub(crate) fn check_graph(
        &self,
        nodes: &[u64],
        tensors: &[RpcTensor],
        nbytes: Option<&[u64]>,
    ) -> Result<(), InvalidRequest> {
        if nodes.is_empty() {
            return Err(InvalidRequest::EmptyGraph);
        }
        if let Some(sizes) = nbytes {
            if sizes.len() != tensors.len() {
                return Err(InvalidRequest::LengthMismatch {
                    what: "graph tensor sizes",
                    expected: tensors.len(),
                    got: sizes.len(),
                });
            }
        }
        let mut ids = HashSet::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if t.id == 0 {
                return Err(InvalidRequest::ZeroId { tensor: label(t) });
            }
            if !ids.insert(t.id) {
                return Err(InvalidRequest::DuplicateId { id: t.id });
            }
            self.check_optional(t, nbytes.and_then(|s| s.get(i).copied()))?;
        }
        let present = |id: u64, role| {
            if ids.contains(&id) {
                Ok(())
            } else {
                Err(InvalidRequest::MissingTensor { id, role })
            }
        };
        for &id in nodes {
            present(id, "node")?;
        }
        for t in tensors {
            for &s in t.src.iter().filter(|&&s| s != 0) {
                present(s, "src")?;
            }
            if t.view_src != 0 {
                present(t.view_src, "view_src")?;
            }
        }
        Ok(())
    }
}

/// A device index below the server's device count.
pub(crate) fn check_device(device: u32, count: u32) -> Result<(), InvalidRequest> {
    if device < count {
        Ok(())
    } else {
        Err(InvalidRequest::UnknownDevice { device, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUF: RemoteBuffer = RemoteBuffer {
        remote_ptr: 0xb0,
        base: 0x1000,
        size: 0x100,
        device: 0,
    };

    fn buffers() -> Buffers {
        let mut b = Buffers::default();
        b.insert(BUF);
        b
    }

    fn tensor(id: u64, offset: u64) -> RpcTensor {
        RpcTensor {
            id,
            buffer: BUF.remote_ptr,
            data: BUF.base + offset,
            ..RpcTensor::default()
        }
    }

    #[test]
    fn buffer_bounds() {
        assert!(BUF.contains(0x1000, 0x100));
        assert!(BUF.contains(0x1100, 0));
        assert!(!BUF.contains(0x1000, 0x101));
        assert!(!BUF.contains(0xfff, 1));
        assert!(!BUF.contains(0x1001, u64::MAX));
        assert_eq!(BUF.addr(0x10), Some(0x1010));
        assert_eq!(BUF.addr(0x101), None);
    }

    #[test]
    fn tensor_checks() {
        let b = buffers();
        assert!(b.check_tensor(&tensor(1, 0), 0x100).is_ok());
        assert!(matches!(
            b.check_tensor(&tensor(1, 1), 0x100),
            Err(InvalidRequest::OutsideBuffer { .. })
        ));
        let mut t = tensor(1, 0);
        t.buffer = 0xdead;
        assert_eq!(
            b.check_tensor(&t, 1),
            Err(InvalidRequest::UnknownBuffer { buffer: 0xdead })
        );
        t.buffer = 0;
        assert!(matches!(
            b.check_tensor(&t, 1),
            Err(InvalidRequest::NoBuffer { .. })
        ));
        let mut t = tensor(1, 0);
        t.data = 0x10;
        assert!(matches!(
            b.check_tensor(&t, 1),
            Err(InvalidRequest::OutsideBuffer { .. })
        ));
        let mut t = tensor(1, 0);
        t.ty = GGML_TYPE_COUNT;
        assert!(matches!(
            b.check_tensor(&t, 1),
            Err(InvalidRequest::InvalidType { .. })
        ));
    }

    #[test]
    fn range_checks() {
        let b = buffers();
        let t = tensor(1, 0x80);
        assert!(b.check_range(&t, 0x80, 0, 0x80).is_ok());
        assert!(b.check_range(&t, 0x80, 0x7f, 1).is_ok());
        assert!(b.check_range(&t, 0x80, 0x10, 0x71).is_err());
        assert!(b.check_range(&t, 0x80, 0x81, 0).is_err());
        assert!(b.check_range(&t, 0x80, u64::MAX, 2).is_err());
        // Empty range at the very end of the buffer: the server refuses it.
        assert!(b.check_range(&t, 0x80, 0x80, 0).is_err());
        assert!(b.check_range(&t, 0x10, 0x10, 0).is_ok());
    }

    #[test]
    fn graph_checks() {
        let b = buffers();
        let mut a = tensor(1, 0);
        let mut c = tensor(2, 0x10);
        c.src[0] = 1;
        assert!(b.check_graph(&[2], &[a, c], None).is_ok());
        assert!(b.check_graph(&[2], &[a, c], Some(&[0x10, 0x10])).is_ok());
        assert!(matches!(
            b.check_graph(&[2], &[a, c], Some(&[0x10, 0x100])),
            Err(InvalidRequest::OutsideBuffer { .. })
        ));
        assert!(matches!(
            b.check_graph(&[2], &[a, c], Some(&[1])),
            Err(InvalidRequest::LengthMismatch { .. })
        ));
        assert_eq!(
            b.check_graph(&[], &[a], None),
            Err(InvalidRequest::EmptyGraph)
        );
        assert_eq!(
            b.check_graph(&[3], &[a, c], None),
            Err(InvalidRequest::MissingTensor {
                id: 3,
                role: "node"
            })
        );
        assert_eq!(
            b.check_graph(&[2], &[c], None),
            Err(InvalidRequest::MissingTensor { id: 1, role: "src" })
        );
        assert_eq!(
            b.check_graph(&[1], &[a, a], None),
            Err(InvalidRequest::DuplicateId { id: 1 })
        );
        a.view_src = 9;
        assert_eq!(
            b.check_graph(&[1], &[a], None),
            Err(InvalidRequest::MissingTensor {
                id: 9,
                role: "view_src"
            })
        );
        let z = RpcTensor::default();
        assert!(matches!(
            b.check_graph(&[1], &[z], None),
            Err(InvalidRequest::ZeroId { .. })
        ));
        let mut d = tensor(4, 0);
        d.buffer = 0;
        assert!(matches!(
            b.check_graph(&[4], &[d], None),
            Err(InvalidRequest::DataWithoutBuffer { .. })
        ));
        d.data = 0;
        assert!(b.check_graph(&[4], &[d], None).is_ok());
        d.op = GGML_OP_COUNT;
        assert!(matches!(
            b.check_graph(&[4], &[d], None),
            Err(InvalidRequest::InvalidOp { .. })
        ));
    }

    #[test]
    fn devices() {
        assert!(check_device(0, 1).is_ok());
        assert_eq!(
            check_device(1, 1),
            Err(InvalidRequest::UnknownDevice {
                device: 1,
                count: 1
            })
        );
    }
}

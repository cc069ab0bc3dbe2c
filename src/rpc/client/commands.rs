//! The commands of protocol 7.0.0, one method each, over the session's
//! I/O core in `client.rs` (round trips, pipelining, batches).

use std::time::Duration;

use shardline_protocol as proto;
use shardline_protocol::{
    Command, DeviceMemory, HelloResponse, RpcTensor, CONN_CAPS_SIZE, HASH_THRESHOLD,
};

use super::*;

impl RpcClient {
    pub(super) async fn hello(&mut self) -> Result<HelloResponse, RpcError> {
        self.scratch.clear();
        proto::encode_hello(&[0; CONN_CAPS_SIZE], &mut self.scratch);
        let a = self.round_trip(Command::Hello).await?;
        let hello = proto::decode_hello_response(a.bytes())
            .map_err(|e| self.malformed(Command::Hello, e))?;
        if !PROTOCOL_VERSION.accepts_server(hello.version) {
            self.poisoned_by = Some(Command::Hello);
            return Err(RpcError::VersionMismatch {
                server: hello.version,
                client: PROTOCOL_VERSION,
            });
        }
        Ok(hello)
    }

    /// Asks the server for its device count (`DEVICE_COUNT`).
    pub async fn query_device_count(&mut self) -> Result<u32, RpcError> {
        self.scratch.clear();
        proto::encode_device_count(&mut self.scratch);
        let a = self.round_trip(Command::DeviceCount).await?;
        proto::decode_device_count_response(a.bytes())
            .map_err(|e| self.malformed(Command::DeviceCount, e))
    }

    /// A cheap round trip (`DEVICE_COUNT`): returns once the server has
    /// processed every request sent before it, or reports the connection
    /// the server closed because one of them was rejected.
    pub async fn sync(&mut self) -> Result<(), RpcError> {
        self.query_device_count().await.map(|_| ())
    }

    /// Free and total memory of `device` (`GET_DEVICE_MEMORY`).
    pub async fn device_memory(&mut self, device: u32) -> Result<DeviceMemory, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        proto::encode_get_device_memory(device, &mut self.scratch);
        let a = self.round_trip(Command::GetDeviceMemory).await?;
        proto::decode_get_device_memory_response(a.bytes())
            .map_err(|e| self.malformed(Command::GetDeviceMemory, e))
    }

    /// Buffer alignment of `device` in bytes (`GET_ALIGNMENT`).
    pub async fn alignment(&mut self, device: u32) -> Result<u64, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        proto::encode_get_alignment(device, &mut self.scratch);
        let a = self.round_trip(Command::GetAlignment).await?;
        proto::decode_get_alignment_response(a.bytes())
            .map_err(|e| self.malformed(Command::GetAlignment, e))
    }

    /// Largest buffer `device` can allocate (`GET_MAX_SIZE`).
    pub async fn max_size(&mut self, device: u32) -> Result<u64, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        proto::encode_get_max_size(device, &mut self.scratch);
        let a = self.round_trip(Command::GetMaxSize).await?;
        proto::decode_get_max_size_response(a.bytes())
            .map_err(|e| self.malformed(Command::GetMaxSize, e))
    }

    /// Allocates a buffer of at least `size` bytes on `device`
    /// (`ALLOC_BUFFER`, then `BUFFER_GET_BASE` for its base address) and
    /// records it in the session's buffer table.
    ///
    /// [`RpcError::AllocFailed`] when the server cannot allocate it.
    pub async fn alloc_buffer(&mut self, device: u32, size: u64) -> Result<RemoteBuffer, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        proto::encode_alloc_buffer(device, size, &mut self.scratch);
        let a = self.round_trip(Command::AllocBuffer).await?;
        let r = proto::decode_alloc_buffer_response(a.bytes())
            .map_err(|e| self.malformed(Command::AllocBuffer, e))?;
        if r.remote_ptr == 0 {
            return Err(RpcError::AllocFailed { device, size });
        }
        let base = self.raw_buffer_get_base(r.remote_ptr).await?;
        let buffer = RemoteBuffer {
            remote_ptr: r.remote_ptr,
            base,
            size: r.remote_size,
            device,
        };
        self.buffers.insert(buffer);
        tracing::trace!(addr = %self.addr, ?buffer, "allocated buffer");
        Ok(buffer)
    }

    async fn raw_buffer_get_base(&mut self, remote_ptr: u64) -> Result<u64, RpcError> {
        self.scratch.clear();
        proto::encode_buffer_get_base(remote_ptr, &mut self.scratch);
        let a = self.round_trip(Command::BufferGetBase).await?;
        proto::decode_buffer_get_base_response(a.bytes())
            .map_err(|e| self.malformed(Command::BufferGetBase, e))
    }

    /// Base address of one of this session's buffers (`BUFFER_GET_BASE`).
    /// [`RemoteBuffer::base`] already holds it; this asks the server again.
    pub async fn buffer_get_base(&mut self, remote_ptr: u64) -> Result<u64, RpcError> {
        self.buffers.get(remote_ptr)?;
        self.raw_buffer_get_base(remote_ptr).await
    }

    /// Frees one of this session's buffers (`FREE_BUFFER`, pipelined). The
    /// server also drops every stored graph, so a later
    /// [`RpcClient::graph_recompute`] needs a new [`RpcClient::graph_compute`].
    pub async fn free_buffer(&mut self, remote_ptr: u64) -> Result<(), RpcError> {
        self.buffers.get(remote_ptr)?;
        self.scratch.clear();
        proto::encode_free_buffer(remote_ptr, &mut self.scratch);
        self.buffers.remove(remote_ptr);
        self.stored_graphs.clear();
        self.pipeline(Command::FreeBuffer, &[], Duration::ZERO)
            .await
    }

    /// Bytes of the buffers this connection holds on `device` (allocated
    /// and not freed): what the coordinator has taken of the device.
    pub fn allocated_bytes(&self, device: u32) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.device == device)
            .map(|b| b.size)
            .sum()
    }

    /// Fills a whole buffer with `value` (`BUFFER_CLEAR`, pipelined).
    pub async fn buffer_clear(&mut self, remote_ptr: u64, value: u8) -> Result<(), RpcError> {
        self.buffers.get(remote_ptr)?;
        self.scratch.clear();
        proto::encode_buffer_clear(remote_ptr, value, &mut self.scratch);
        self.pipeline(Command::BufferClear, &[], Duration::ZERO)
            .await
    }

    /// Writes `data` at byte `offset` of `tensor` (`SET_TENSOR`, pipelined).
    /// `nbytes` is the tensor's byte size. The data goes to the socket
    /// straight from the slice (e.g. an mmapped file), without a copy.
    pub async fn set_tensor(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), RpcError> {
        self.send_set_tensor(tensor, nbytes, offset, data, false)
            .await
    }

    async fn send_set_tensor(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        data: &[u8],
        cache: bool,
    ) -> Result<(), RpcError> {
        self.buffers
            .check_range(tensor, nbytes, offset, len64(data.len()))?;
        self.scratch.clear();
        proto::encode_set_tensor_header(
            tensor,
            cache,
            offset,
            len64(data.len()),
            &mut self.scratch,
        )
        .map_err(InvalidRequest::from)?;
        self.pipeline(Command::SetTensor, data, Duration::ZERO)
            .await
    }

    /// Like [`RpcClient::set_tensor`], through the server's cache for data
    /// over 10 MiB, as llama.cpp does for weights: first `SET_TENSOR_HASH`
    /// with the data's FNV-1a hash (a round trip); if the server does not
    /// have it, `SET_TENSOR` with the cache flag set, so that a server
    /// started with a cache directory keeps a copy for next time.
    ///
    /// Hashing runs on the calling task (about a second per GiB).
    pub async fn set_tensor_cached(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<Upload, RpcError> {
        if len64(data.len()) <= HASH_THRESHOLD {
            self.send_set_tensor(tensor, nbytes, offset, data, false)
                .await?;
            return Ok(Upload::Sent);
        }
        self.buffers
            .check_range(tensor, nbytes, offset, len64(data.len()))?;
        let hash = proto::fnv1a_64(data);
        self.scratch.clear();
        proto::encode_set_tensor_hash(tensor, offset, hash, &mut self.scratch);
        let a = self.round_trip(Command::SetTensorHash).await?;
        let cached = proto::decode_set_tensor_hash_response(a.bytes())
            .map_err(|e| self.malformed(Command::SetTensorHash, e))?;
        if cached {
            return Ok(Upload::Cached);
        }
        self.send_set_tensor(tensor, nbytes, offset, data, true)
            .await?;
        Ok(Upload::Sent)
    }

    /// Writes all of `data` to `tensor` (`SET_TENSOR`, pipelined) with the
    /// cache flag set, so that a server started with a cache directory keeps
    /// a copy under the data's FNV-1a hash for the next load.
    pub async fn set_tensor_to_cache(
        &mut self,
        tensor: &RpcTensor,
        data: &[u8],
    ) -> Result<(), RpcError> {
        self.send_set_tensor(tensor, len64(data.len()), 0, data, true)
            .await
    }

    /// Asks the server to fill whole tensors from its cache: one
    /// `SET_TENSOR_HASH` per `(tensor, nbytes, hash)` with the FNV-1a hash
    /// of the tensor's `nbytes` bytes, all sent at once and answered in one
    /// round trip. `true` where the server had the data and wrote it; the
    /// others still need their bytes sent.
    pub async fn set_tensors_from_cache(
        &mut self,
        items: &[(RpcTensor, u64, u64)],
    ) -> Result<Vec<bool>, RpcError> {
        self.scratch.clear();
        let mut work = 0u64;
        for (tensor, nbytes, hash) in items {
            self.buffers.check_range(tensor, *nbytes, 0, *nbytes)?;
            proto::encode_set_tensor_hash(tensor, 0, *hash, &mut self.scratch);
            work = work.saturating_add(*nbytes);
        }
        let answers = self
            .batch(Command::SetTensorHash, items.len(), work)
            .await?;
        self.decode_all(
            Command::SetTensorHash,
            &answers,
            proto::decode_set_tensor_hash_response,
        )
    }

    /// Decodes each answer of a batch; one malformed answer poisons the
    /// session.
    fn decode_all<T>(
        &mut self,
        cmd: Command,
        answers: &[Answer],
        decode: fn(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, RpcError> {
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            match decode(a.bytes()) {
                Ok(v) => out.push(v),
                Err(e) => return Err(self.malformed(cmd, e)),
            }
        }
        Ok(out)
    }

    /// Reads `len` bytes at byte `offset` of `tensor` (`GET_TENSOR`).
    pub async fn get_tensor(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, RpcError> {
        // Validate before allocating `len` bytes.
        self.buffers.check_range(tensor, nbytes, offset, len)?;
        let n = usize::try_from(len).map_err(|_| InvalidRequest::OutsideTensor {
            tensor: crate::rpc::validate::label(tensor),
            offset,
            len,
            nbytes,
        })?;
        let mut out = vec![0u8; n];
        self.get_tensor_into(tensor, nbytes, offset, &mut out)
            .await?;
        Ok(out)
    }

    /// Reads `out.len()` bytes at byte `offset` of `tensor` into `out`
    /// (`GET_TENSOR`).
    pub async fn get_tensor_into(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), RpcError> {
        self.buffers
            .check_range(tensor, nbytes, offset, len64(out.len()))?;
        self.scratch.clear();
        proto::encode_get_tensor(tensor, offset, len64(out.len()), &mut self.scratch);
        self.exchange(Command::GetTensor, &[], Some(out), Duration::ZERO)
            .await
    }

    /// Fills `len` bytes at byte `offset` of `tensor` with `value`
    /// (`MEMSET_TENSOR`, pipelined).
    pub async fn memset_tensor(
        &mut self,
        tensor: &RpcTensor,
        nbytes: u64,
        offset: u64,
        len: u64,
        value: u8,
    ) -> Result<(), RpcError> {
        self.buffers.check_range(tensor, nbytes, offset, len)?;
        self.scratch.clear();
        proto::encode_memset_tensor(tensor, offset, len, value, &mut self.scratch);
        self.pipeline(Command::MemsetTensor, &[], Duration::ZERO)
            .await
    }

    /// Copies `src`'s `src_nbytes` bytes into `dst` on the server
    /// (`COPY_TENSOR`); both tensors must be in this session's buffers.
    /// Returns whether the server's backend did the copy.
    pub async fn copy_tensor(
        &mut self,
        src: &RpcTensor,
        src_nbytes: u64,
        dst: &RpcTensor,
        dst_nbytes: u64,
    ) -> Result<bool, RpcError> {
        self.scratch.clear();
        self.encode_copy(src, src_nbytes, dst, dst_nbytes)?;
        let a = self.round_trip(Command::CopyTensor).await?;
        proto::decode_copy_tensor_response(a.bytes())
            .map_err(|e| self.malformed(Command::CopyTensor, e))
    }

    /// [`RpcClient::copy_tensor`] for each `(src, src_nbytes, dst,
    /// dst_nbytes)`, all sent at once and answered in one round trip
    /// (every request is checked before any is sent). `true` where the
    /// server's backend did the copy.
    pub async fn copy_tensors(
        &mut self,
        items: &[(RpcTensor, u64, RpcTensor, u64)],
    ) -> Result<Vec<bool>, RpcError> {
        self.scratch.clear();
        for (src, src_nbytes, dst, dst_nbytes) in items {
            self.encode_copy(src, *src_nbytes, dst, *dst_nbytes)?;
        }
        let answers = self.batch(Command::CopyTensor, items.len(), 0).await?;
        self.decode_all(
            Command::CopyTensor,
            &answers,
            proto::decode_copy_tensor_response,
        )
    }

    /// Checks one COPY_TENSOR request and appends it to `self.scratch`.
    fn encode_copy(
        &mut self,
        src: &RpcTensor,
        src_nbytes: u64,
        dst: &RpcTensor,
        dst_nbytes: u64,
    ) -> Result<(), RpcError> {
        self.buffers.check_tensor(src, src_nbytes)?;
        self.buffers.check_tensor(dst, dst_nbytes)?;
        if src_nbytes > dst_nbytes {
            return Err(InvalidRequest::CopyTooLarge {
                dst: crate::rpc::validate::label(dst),
                src_nbytes,
                dst_nbytes,
            }
            .into());
        }
        proto::encode_copy_tensor(src, dst, &mut self.scratch);
        Ok(())
    }

    /// Lets the server's backend initialise a tensor in its buffer
    /// (`INIT_TENSOR`, pipelined); llama.cpp does this for quantized tensors
    /// whose first dimension is not a multiple of 512.
    pub async fn init_tensor(&mut self, tensor: &RpcTensor, nbytes: u64) -> Result<(), RpcError> {
        self.buffers.check_tensor(tensor, nbytes)?;
        self.scratch.clear();
        proto::encode_init_tensor(tensor, &mut self.scratch);
        self.pipeline(Command::InitTensor, &[], Duration::ZERO)
            .await
    }

    /// Bytes `tensor` needs in a buffer of `device` (`GET_ALLOC_SIZE`);
    /// `srcs` are its sources (at most 10), which some ops need.
    pub async fn get_alloc_size(
        &mut self,
        device: u32,
        tensor: &RpcTensor,
        srcs: &[RpcTensor],
    ) -> Result<u64, RpcError> {
        self.check_device(device)?;
        self.buffers.check_optional(tensor, None)?;
        for s in srcs.iter().filter(|s| s.id != 0) {
            self.buffers.check_optional(s, None)?;
        }
        self.scratch.clear();
        proto::encode_get_alloc_size(device, tensor, srcs, &mut self.scratch)
            .map_err(InvalidRequest::from)?;
        let a = self.round_trip(Command::GetAllocSize).await?;
        proto::decode_get_alloc_size_response(a.bytes())
            .map_err(|e| self.malformed(Command::GetAllocSize, e))
    }

    /// Bytes each of `tensors` needs in a buffer of `device`
    /// (`GET_ALLOC_SIZE` without sources), asked all at once: one round trip
    /// for the whole list.
    pub async fn get_alloc_sizes(
        &mut self,
        device: u32,
        tensors: &[RpcTensor],
    ) -> Result<Vec<u64>, RpcError> {
        self.check_device(device)?;
        self.scratch.clear();
        for t in tensors {
            self.buffers.check_optional(t, None)?;
            proto::encode_get_alloc_size(device, t, &[], &mut self.scratch)
                .map_err(InvalidRequest::from)?;
        }
        let answers = self.batch(Command::GetAllocSize, tensors.len(), 0).await?;
        self.decode_all(
            Command::GetAllocSize,
            &answers,
            proto::decode_get_alloc_size_response,
        )
    }

    /// Computes a graph on `device` (`GRAPH_COMPUTE`, pipelined): `nodes`
    /// are the node ids in execution order, `tensors` every node plus every
    /// tensor reachable through `src`/`view_src`. The server keeps the graph
    /// for [`RpcClient::graph_recompute`].
    ///
    /// Checks ids, references, types, ops and that every data address lies in
    /// one of this session's buffers; use [`RpcClient::graph_compute_sized`]
    /// to check whole byte ranges too (a tensor that overruns its buffer
    /// aborts the server).
    pub async fn graph_compute(
        &mut self,
        device: u32,
        nodes: &[u64],
        tensors: &[RpcTensor],
    ) -> Result<(), RpcError> {
        self.send_graph(0, device, nodes, tensors, None).await
    }

    /// [`RpcClient::graph_compute`] with each tensor's byte size
    /// (`nbytes[i]` for `tensors[i]`), so that every tensor's whole range is
    /// checked against its buffer.
    pub async fn graph_compute_sized(
        &mut self,
        device: u32,
        nodes: &[u64],
        tensors: &[RpcTensor],
        nbytes: &[u64],
    ) -> Result<(), RpcError> {
        self.send_graph(0, device, nodes, tensors, Some(nbytes))
            .await
    }

    /// [`RpcClient::graph_compute_sized`], remembering `owner` (non-zero) as
    /// the sender of the graph the server now stores for `device`
    /// ([`RpcClient::stored_graph_is`]).
    pub async fn graph_compute_for(
        &mut self,
        owner: u64,
        device: u32,
        nodes: &[u64],
        tensors: &[RpcTensor],
        nbytes: &[u64],
    ) -> Result<(), RpcError> {
        self.send_graph(owner, device, nodes, tensors, Some(nbytes))
            .await
    }

    async fn send_graph(
        &mut self,
        owner: u64,
        device: u32,
        nodes: &[u64],
        tensors: &[RpcTensor],
        nbytes: Option<&[u64]>,
    ) -> Result<(), RpcError> {
        self.check_device(device)?;
        self.buffers.check_graph(nodes, tensors, nbytes)?;
        self.scratch.clear();
        proto::encode_graph_compute(device, nodes, tensors, &mut self.scratch)
            .map_err(InvalidRequest::from)?;
        let work = self.opts.compute_timeout;
        self.pipeline(Command::GraphCompute, &[], work).await?;
        self.stored_graphs.insert(device, owner);
        Ok(())
    }

    /// Runs the graph last computed on `device` again (`GRAPH_RECOMPUTE`,
    /// pipelined), e.g. after refreshing its inputs with
    /// [`RpcClient::set_tensor`].
    pub async fn graph_recompute(&mut self, device: u32) -> Result<(), RpcError> {
        self.check_device(device)?;
        if !self.stored_graphs.contains_key(&device) {
            return Err(InvalidRequest::NoStoredGraph { device }.into());
        }
        self.scratch.clear();
        proto::encode_graph_recompute(device, &mut self.scratch);
        let work = self.opts.compute_timeout;
        self.pipeline(Command::GraphRecompute, &[], work).await
    }

    /// Shuts the connection down (the server then frees every buffer of the
    /// session). Pipelined requests are not confirmed: call
    /// [`RpcClient::sync`] first to know they succeeded.
    pub async fn close(mut self) -> Result<(), RpcError> {
        self.uncork().await?;
        let cmd = self.last_pipelined.unwrap_or(Command::DeviceCount);
        self.stream
            .shutdown()
            .await
            .map_err(|source| RpcError::Io { cmd, source })
    }
}

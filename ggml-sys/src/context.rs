//! ggml contexts and the tensors that live in them.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::types::{type_blck_size, type_size};
use crate::{GgmlError, GgmlType};

/// ggml's alignment of objects inside a context (`GGML_MEM_ALIGN`).
const MEM_ALIGN: usize = 16;
const MAX_DIMS: usize = 4;
const MAX_NAME: usize = 64;

/// A ggml context: an arena holding tensor metadata (and, unless created with
/// `no_alloc`, their data). Backend buffers allocated for its tensors are owned
/// by the context and freed with it, so no tensor can outlive its memory.
#[derive(Debug)]
pub struct Context {
    ptr: NonNull<sys::ggml_context>,
    no_alloc: bool,
    pub(crate) buffers: RefCell<Vec<NonNull<sys::ggml_backend_buffer>>>,
}

// SAFETY: a ggml context is a plain arena with no thread affinity; moving it to
// another thread is fine as long as it is used from one thread at a time, which
// `&mut`/`&` borrows of a non-Sync type guarantee.
unsafe impl Send for Context {}

impl Context {
    /// A context with `mem_size` bytes of arena. With `no_alloc`, tensors get
    /// metadata only and their data lives in a backend buffer or remotely.
    pub fn new(mem_size: usize, no_alloc: bool) -> Result<Self, GgmlError> {
        let params = sys::ggml_init_params {
            mem_size,
            mem_buffer: std::ptr::null_mut(),
            no_alloc,
        };
        // SAFETY: plain value parameters; ggml allocates its own arena and
        // returns null on failure, which we check.
        let ptr = unsafe { sys::ggml_init(params) };
        let ptr = NonNull::new(ptr).ok_or(GgmlError::ContextInit { mem_size })?;
        Ok(Self {
            ptr,
            no_alloc,
            buffers: RefCell::new(Vec::new()),
        })
    }

    /// Arena bytes one tensor's metadata takes (`ggml_tensor_overhead`).
    pub fn tensor_overhead() -> usize {
        // SAFETY: pure function of compile-time sizes.
        unsafe { sys::ggml_tensor_overhead() }
    }

    /// Arena bytes a graph of `size` nodes takes.
    pub fn graph_overhead(size: usize) -> usize {
        // SAFETY: pure function of its argument.
        unsafe { sys::ggml_graph_overhead_custom(size, false) }
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_context {
        self.ptr.as_ptr()
    }

    /// Whether tensors in this context are created without data.
    pub fn is_no_alloc(&self) -> bool {
        self.no_alloc
    }

    fn available(&self) -> usize {
        // SAFETY: `self.ptr` is a live context.
        let (size, used) = unsafe {
            (
                sys::ggml_get_mem_size(self.ptr.as_ptr()),
                sys::ggml_used_mem(self.ptr.as_ptr()),
            )
        };
        size.saturating_sub(used)
    }

    pub(crate) fn ensure_room(&self, data_bytes: usize) -> Result<(), GgmlError> {
        let data = if self.no_alloc {
            0
        } else {
            data_bytes.saturating_add(MEM_ALIGN)
        };
        let needed = Self::tensor_overhead().saturating_add(data);
        let available = self.available();
        if needed > available {
            return Err(GgmlError::ContextFull { needed, available });
        }
        Ok(())
    }

    pub(crate) fn ensure_graph_room(&self, size: usize) -> Result<(), GgmlError> {
        let needed = Self::graph_overhead(size).saturating_add(MEM_ALIGN);
        let available = self.available();
        if needed > available {
            return Err(GgmlError::ContextFull { needed, available });
        }
        Ok(())
    }

    /// A new tensor of type `ty` with extents `ne` (1 to 4 dimensions, innermost
    /// first).
    pub fn new_tensor(&self, ty: GgmlType, ne: &[i64]) -> Result<Tensor<'_>, GgmlError> {
        if ne.is_empty() || ne.len() > MAX_DIMS {
            return Err(GgmlError::BadShape(format!(
                "{} dimensions (1 to {MAX_DIMS} allowed)",
                ne.len()
            )));
        }
        let mut full = [1i64; MAX_DIMS];
        full[..ne.len()].copy_from_slice(ne);
        let nbytes = shape_nbytes(ty, &full)?;
        self.ensure_room(nbytes)?;
        let n_dims = ne.len() as std::os::raw::c_int;
        // SAFETY: live context with room checked above; `ne` points to n_dims
        // valid i64 values; the type id and shape were validated.
        let t = unsafe { sys::ggml_new_tensor(self.ptr.as_ptr(), ty, n_dims, ne.as_ptr()) };
        Tensor::from_raw(t)
            .ok_or_else(|| GgmlError::Backend("ggml_new_tensor returned null".into()))
    }

    /// Fills every backend buffer of this context with `value`.
    pub fn clear_buffers(&self, value: u8) {
        for buf in self.buffers.borrow().iter() {
            // SAFETY: a live buffer owned by this context.
            unsafe { sys::ggml_backend_buffer_clear(buf.as_ptr(), value) };
        }
    }

    /// Bytes of the backend buffers this context owns.
    pub fn buffer_bytes(&self) -> u64 {
        self.buffers
            .borrow()
            .iter()
            // SAFETY: a live buffer owned by this context.
            .map(|buf| unsafe { sys::ggml_backend_buffer_get_size(buf.as_ptr()) } as u64)
            .sum()
    }

    /// Every tensor created in this context, in creation order.
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        let mut out = Vec::new();
        // SAFETY: live context; ggml walks its own object list.
        let mut t = unsafe { sys::ggml_get_first_tensor(self.ptr.as_ptr()) };
        while let Some(tensor) = Tensor::from_raw(t) {
            out.push(tensor);
            // SAFETY: `t` is a tensor of this live context.
            t = unsafe { sys::ggml_get_next_tensor(self.ptr.as_ptr(), t) };
        }
        out
    }

    /// Matrix product `a^T b` (ggml's `mul_mat`): `a` is `[k, m, ...]`, `b` is
    /// `[k, n, ...]`, the result is F32 `[m, n, ...]`.
    pub fn mul_mat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (an, bn) = (a.ne(), b.ne());
        let ok =
            an[0] == bn[0] && an[2] > 0 && an[3] > 0 && bn[2] % an[2] == 0 && bn[3] % an[3] == 0;
        if !ok || a.is_transposed() {
            return Err(GgmlError::IncompatibleOperands {
                op: "mul_mat",
                detail: format!("a {an:?}, b {bn:?}"),
            });
        }
        let out = [an[1], bn[1], bn[2], bn[3]];
        self.ensure_room(shape_nbytes(sys::GGML_TYPE_F32, &out)?)?;
        // SAFETY: both tensors belong to this live context (lifetime 'a) and
        // satisfy ggml_can_mul_mat, checked above.
        let t = unsafe { sys::ggml_mul_mat(self.ptr.as_ptr(), a.raw(), b.raw()) };
        Tensor::from_raw(t).ok_or_else(|| GgmlError::Backend("ggml_mul_mat returned null".into()))
    }

    /// Element-wise `a + b`, with `b` broadcast over `a` (each extent of `a` a
    /// multiple of `b`'s).
    pub fn add<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Result<Tensor<'a>, GgmlError> {
        let (an, bn) = (a.ne(), b.ne());
        let ok = (0..MAX_DIMS).all(|i| bn[i] > 0 && an[i] % bn[i] == 0);
        if !ok {
            return Err(GgmlError::IncompatibleOperands {
                op: "add",
                detail: format!("a {an:?} is not a repetition of b {bn:?}"),
            });
        }
        self.ensure_room(a.nbytes())?;
        // SAFETY: both tensors belong to this live context and `b` repeats
        // into `a`, as ggml_add asserts.
        let t = unsafe { sys::ggml_add(self.ptr.as_ptr(), a.raw(), b.raw()) };
        Tensor::from_raw(t).ok_or_else(|| GgmlError::Backend("ggml_add returned null".into()))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        for buf in self.buffers.get_mut().drain(..) {
            // SAFETY: each buffer was returned by ggml_backend_alloc_ctx_tensors
            // for this context and is freed exactly once, here.
            unsafe { sys::ggml_backend_buffer_free(buf.as_ptr()) };
        }
        // SAFETY: the context is live and freed exactly once; no Tensor can
        // outlive it (they borrow it).
        unsafe { sys::ggml_free(self.ptr.as_ptr()) };
    }
}

/// Bytes of a tensor of `ty` with extents `ne`, with every check ggml asserts.
pub(crate) fn shape_nbytes(ty: GgmlType, ne: &[i64; MAX_DIMS]) -> Result<usize, GgmlError> {
    let ts = type_size(ty).ok_or(GgmlError::UnknownType(ty))?;
    let bs = type_blck_size(ty).ok_or(GgmlError::UnknownType(ty))? as i64;
    if ne.iter().any(|&n| n < 0) {
        return Err(GgmlError::BadShape(format!("negative extent in {ne:?}")));
    }
    if ne[0] % bs != 0 {
        return Err(GgmlError::BadShape(format!(
            "row of {} elements is not a multiple of the block size {bs}",
            ne[0]
        )));
    }
    let row = (ne[0] / bs) as u128 * ts as u128;
    let total = row * ne[1] as u128 * ne[2] as u128 * ne[3] as u128;
    usize::try_from(total)
        .ok()
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| GgmlError::BadShape(format!("{ne:?} is too large")))
}

/// Identity of a tensor within its context (its address), used to link graph
/// nodes to their sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// A tensor inside a [`Context`]. Cheap to copy; it cannot outlive the context.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'ctx> {
    ptr: NonNull<sys::ggml_tensor>,
    _ctx: PhantomData<&'ctx Context>,
}

/// A snapshot of a tensor's fields, as the RPC wire format needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// This tensor's identity.
    pub id: TensorId,
    /// Element type.
    pub ty: GgmlType,
    /// Extents, innermost first.
    pub ne: [i64; 4],
    /// Byte strides.
    pub nb: [usize; 4],
    /// Op that produces it (`op::NONE` for inputs and weights).
    pub op: u32,
    /// Op parameters.
    pub op_params: [i32; 16],
    /// ggml tensor flags (input, output, param, loss).
    pub flags: i32,
    /// Sources of the op.
    pub src: [Option<TensorId>; 10],
    /// The tensor this one is a view of.
    pub view_src: Option<TensorId>,
    /// Byte offset of the view inside `view_src`.
    pub view_offs: usize,
    /// Name (at most 63 bytes).
    pub name: String,
    /// Size of its data in bytes.
    pub nbytes: usize,
}

impl<'ctx> Tensor<'ctx> {
    pub(crate) fn from_raw(p: *mut sys::ggml_tensor) -> Option<Self> {
        NonNull::new(p).map(|ptr| Self {
            ptr,
            _ctx: PhantomData,
        })
    }

    pub(crate) fn raw(&self) -> *mut sys::ggml_tensor {
        self.ptr.as_ptr()
    }

    fn fields(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives in a context that outlives 'ctx; ggml only
        // mutates it inside calls we make through `&Context`, never while this
        // shared borrow is in use (the wrappers are single-threaded).
        unsafe { self.ptr.as_ref() }
    }

    /// This tensor's identity.
    pub fn id(&self) -> TensorId {
        TensorId(self.ptr.as_ptr() as usize)
    }

    /// Element type.
    pub fn ty(&self) -> GgmlType {
        self.fields().type_
    }

    /// Extents, innermost first.
    pub fn ne(&self) -> [i64; 4] {
        self.fields().ne
    }

    /// Byte strides.
    pub fn nb(&self) -> [usize; 4] {
        self.fields().nb
    }

    pub(crate) fn is_transposed(&self) -> bool {
        let nb = self.nb();
        nb[0] > nb[1]
    }

    /// Size of its data in bytes.
    pub fn nbytes(&self) -> usize {
        // SAFETY: live tensor (see `fields`).
        unsafe { sys::ggml_nbytes(self.ptr.as_ptr()) }
    }

    /// Its name.
    pub fn name(&self) -> String {
        let raw = &self.fields().name;
        let bytes: Vec<u8> = raw
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Set its name (cut to 63 bytes; interior NULs are dropped).
    pub fn set_name(self, name: &str) -> Self {
        let mut clean: Vec<u8> = name.bytes().filter(|&b| b != 0).collect();
        clean.truncate(MAX_NAME - 1);
        let c = CString::new(clean).expect("NULs were removed");
        // SAFETY: live tensor; ggml copies at most 63 bytes of a valid C string.
        unsafe { sys::ggml_set_name(self.ptr.as_ptr(), c.as_ptr()) };
        self
    }

    /// Mark it as a graph input.
    pub fn set_input(self) -> Self {
        // SAFETY: live tensor; only sets a flag bit.
        unsafe { sys::ggml_set_input(self.ptr.as_ptr()) };
        self
    }

    /// Mark it as a graph output.
    pub fn set_output(self) -> Self {
        // SAFETY: live tensor; only sets a flag bit.
        unsafe { sys::ggml_set_output(self.ptr.as_ptr()) };
        self
    }

    /// Whether it is marked as a graph output.
    pub fn is_output(&self) -> bool {
        self.fields().flags & (sys::GGML_TENSOR_FLAG_OUTPUT as i32) != 0
    }

    /// Sources of its op, in order.
    pub fn sources(&self) -> Vec<Tensor<'ctx>> {
        self.fields()
            .src
            .iter()
            .filter_map(|&p| Tensor::from_raw(p))
            .collect()
    }

    /// The tensor it is a view of, if any.
    pub fn view_source(&self) -> Option<Tensor<'ctx>> {
        Tensor::from_raw(self.fields().view_src)
    }

    /// Whether its data is allocated (locally, in a backend buffer).
    pub fn is_allocated(&self) -> bool {
        let f = self.fields();
        !f.data.is_null() && !f.buffer.is_null()
    }

    /// A snapshot of every field the RPC wire format carries.
    pub fn info(&self) -> TensorInfo {
        let f = self.fields();
        let id_of = |p: *mut sys::ggml_tensor| (!p.is_null()).then_some(TensorId(p as usize));
        let mut src = [None; 10];
        for (dst, &p) in src.iter_mut().zip(f.src.iter()) {
            *dst = id_of(p);
        }
        TensorInfo {
            id: self.id(),
            ty: f.type_,
            ne: f.ne,
            nb: f.nb,
            op: f.op,
            op_params: f.op_params,
            flags: f.flags,
            src,
            view_src: id_of(f.view_src),
            view_offs: f.view_offs,
            name: self.name(),
            nbytes: self.nbytes(),
        }
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), GgmlError> {
        let nbytes = self.nbytes();
        if !self.is_allocated() {
            return Err(GgmlError::NotAllocated(self.name()));
        }
        match offset.checked_add(len) {
            Some(end) if end <= nbytes => Ok(()),
            _ => Err(GgmlError::OutOfBounds {
                offset,
                len,
                nbytes,
            }),
        }
    }

    /// Copy `data` into the tensor's backend memory at byte `offset`.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) -> Result<(), GgmlError> {
        self.check_range(offset, data.len())?;
        // SAFETY: the tensor has a live buffer (owned by its context, which
        // outlives 'ctx) and offset..offset+len lies inside it, checked above.
        unsafe {
            sys::ggml_backend_tensor_set(
                self.ptr.as_ptr(),
                data.as_ptr().cast(),
                offset,
                data.len(),
            )
        };
        Ok(())
    }

    /// Read `out.len()` bytes of the tensor's backend memory at byte `offset`.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<(), GgmlError> {
        self.check_range(offset, out.len())?;
        // SAFETY: as in `write_bytes`; `out` is a valid writable slice.
        unsafe {
            sys::ggml_backend_tensor_get(
                self.ptr.as_ptr(),
                out.as_mut_ptr().cast(),
                offset,
                out.len(),
            )
        };
        Ok(())
    }

    /// Copy f32 values in (the tensor must be F32).
    pub fn write_f32(&self, values: &[f32]) -> Result<(), GgmlError> {
        if self.ty() != sys::GGML_TYPE_F32 {
            return Err(GgmlError::BadShape(format!("'{}' is not F32", self.name())));
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_bytes(0, &bytes)
    }

    /// Read all f32 values (the tensor must be F32 and contiguous).
    pub fn read_f32(&self) -> Result<Vec<f32>, GgmlError> {
        if self.ty() != sys::GGML_TYPE_F32 {
            return Err(GgmlError::BadShape(format!("'{}' is not F32", self.name())));
        }
        let mut bytes = vec![0u8; self.nbytes()];
        self.read_bytes(0, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

pub(crate) fn cstr_lossy(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: callers pass pointers to NUL-terminated strings owned by ggml.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Walks the sources of `root` not yet in `seen`, counting nodes and leaves the
/// way ggml's graph builder classifies them.
pub(crate) fn count_new(root: Tensor<'_>, seen: &mut HashSet<TensorId>) -> (usize, usize) {
    let (mut nodes, mut leafs) = (0, 0);
    let mut stack = vec![root];
    while let Some(t) = stack.pop() {
        if !seen.insert(t.id()) {
            continue;
        }
        let f = t.fields();
        let is_param = f.flags & (sys::GGML_TENSOR_FLAG_PARAM as i32) != 0;
        if f.op == sys::GGML_OP_NONE && !is_param {
            leafs += 1;
        } else {
            nodes += 1;
        }
        stack.extend(t.sources());
    }
    (nodes, leafs)
}

//! Full descriptor-set writes for ggml's Vulkan backend (Linux, `vulkan`
//! feature).
//!
//! ggml-vulkan gives every pipeline one descriptor-set layout of 12 storage
//! buffer bindings and writes only the first `parameter_count` of them per
//! dispatch; the rest keep whatever an earlier dispatch wrote, often a
//! buffer destroyed since (every buffer of a client session is destroyed when
//! it disconnects; ggml's own staging buffers when they grow). Vulkan allows
//! that: a descriptor the pipeline does not use may be invalid. Mesa's
//! lavapipe before its descriptor rewrite (Debian 12's 22.3) does not: on
//! `vkCmdBindDescriptorSets` it copies every binding of the set into its
//! state and `llvmpipe_set_shader_buffers` takes a reference on each
//! binding's `pipe_resource`, so the refcount of a freed resource is
//! incremented (and later decremented): a write into freed heap memory that
//! shows up as `corrupted double-linked list`, `corrupted size vs. prev_size`
//! or a segfault in lavapipe's queue thread, typically at the first graph of
//! a later client session.
//!
//! Here the worker process puts itself between ggml and the Vulkan loader:
//! it defines `vkGetInstanceProcAddr` (ggml's static build calls that
//! symbol to fill its function table), forwards everything to the loader,
//! and wraps three functions. A write that starts at binding 0 of a set
//! whose layout is all single storage buffers, but stops short of the last
//! binding, is extended to every binding with the write's first buffer, so
//! no binding of a set ggml binds can hold a destroyed buffer. The extra
//! bindings are never read by the shaders. `SHARDLINE_VK_PARTIAL_DESCRIPTORS=1`
//! turns the extension off (to reproduce the driver bug).

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

// The few Vulkan types the wrappers read (vulkan_core.h, 64-bit ABI:
// non-dispatchable handles are 64-bit integers).
type VkResult = i32;
type Handle = u64;
type VoidFn = Option<unsafe extern "system" fn()>;
type GetProcAddr = unsafe extern "system" fn(*mut c_void, *const c_char) -> VoidFn;
type UpdateDescriptorSets =
    unsafe extern "system" fn(*mut c_void, u32, *const WriteDescriptorSet, u32, *const c_void);
type CreateDescriptorSetLayout = unsafe extern "system" fn(
    *mut c_void,
    *const DescriptorSetLayoutCreateInfo,
    *const c_void,
    *mut Handle,
) -> VkResult;
type AllocateDescriptorSets = unsafe extern "system" fn(
    *mut c_void,
    *const DescriptorSetAllocateInfo,
    *mut Handle,
) -> VkResult;

const VK_SUCCESS: VkResult = 0;
const VK_DESCRIPTOR_TYPE_STORAGE_BUFFER: i32 = 7;
/// No set layout ggml makes has more bindings than this (it uses 12).
const MAX_BINDINGS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy)]
struct DescriptorBufferInfo {
    buffer: Handle,
    offset: u64,
    range: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct WriteDescriptorSet {
    s_type: i32,
    p_next: *const c_void,
    dst_set: Handle,
    dst_binding: u32,
    dst_array_element: u32,
    descriptor_count: u32,
    descriptor_type: i32,
    p_image_info: *const c_void,
    p_buffer_info: *const DescriptorBufferInfo,
    p_texel_buffer_view: *const c_void,
}

#[repr(C)]
struct DescriptorSetLayoutBinding {
    binding: u32,
    descriptor_type: i32,
    descriptor_count: u32,
    stage_flags: u32,
    p_immutable_samplers: *const c_void,
}

#[repr(C)]
struct DescriptorSetLayoutCreateInfo {
    s_type: i32,
    p_next: *const c_void,
    flags: u32,
    binding_count: u32,
    p_bindings: *const DescriptorSetLayoutBinding,
}

#[repr(C)]
struct DescriptorSetAllocateInfo {
    s_type: i32,
    p_next: *const c_void,
    descriptor_pool: Handle,
    descriptor_set_count: u32,
    p_set_layouts: *const Handle,
}

/// The driver's functions for one device (from `vkGetDeviceProcAddr`), or
/// the loader's trampolines (from `vkGetInstanceProcAddr`), which dispatch
/// on the device themselves.
#[derive(Clone, Copy, Default)]
struct Real {
    update: Option<UpdateDescriptorSets>,
    create_layout: Option<CreateDescriptorSetLayout>,
    allocate: Option<AllocateDescriptorSets>,
}

#[derive(Default)]
struct State {
    /// Per device (`VkDevice` as an address): its driver's functions.
    devices: HashMap<usize, Real>,
    /// The loader's trampolines, for devices not seen through
    /// `vkGetDeviceProcAddr`.
    trampolines: Real,
    /// Layouts made only of single storage buffers at bindings 0..n: n.
    layouts: HashMap<Handle, u32>,
    /// Sets allocated with such a layout: its n. Refreshed at every
    /// allocation, so a handle reused after a pool is destroyed is not read
    /// with its old layout.
    sets: HashMap<Handle, u32>,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(Mutex::default)
}

fn lock() -> std::sync::MutexGuard<'static, State> {
    state().lock().unwrap_or_else(|e| e.into_inner())
}

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("SHARDLINE_VK_PARTIAL_DESCRIPTORS").is_none_or(|v| v != "1")
    })
}

/// Writes extended so far (for tests and logs).
static EXTENDED: AtomicUsize = AtomicUsize::new(0);
static HOOKED: AtomicBool = AtomicBool::new(false);

/// How many descriptor writes were extended to the whole set, and whether
/// ggml's Vulkan function table went through the wrappers at all.
pub fn vk_descriptor_writes_extended() -> (bool, usize) {
    (
        HOOKED.load(Ordering::Relaxed),
        EXTENDED.load(Ordering::Relaxed),
    )
}

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}
/// glibc's `RTLD_NEXT`: the next object after this one in search order,
/// here the Vulkan loader.
const RTLD_NEXT: *mut c_void = -1isize as *mut c_void;

fn real_get_instance_proc_addr() -> Option<GetProcAddr> {
    static REAL: OnceLock<usize> = OnceLock::new();
    let p = *REAL.get_or_init(|| {
        // SAFETY: a NUL-terminated name; dlsym has no other precondition.
        unsafe { dlsym(RTLD_NEXT, c"vkGetInstanceProcAddr".as_ptr()) as usize }
    });
    // SAFETY: a non-null result is the loader's vkGetInstanceProcAddr,
    // whose C signature GetProcAddr spells out.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, GetProcAddr>(p) })
}

fn real_get_device_proc_addr() -> &'static OnceLock<usize> {
    static REAL: OnceLock<usize> = OnceLock::new();
    &REAL
}

/// Our wrapper for `name`, after storing the real function in `real`.
fn wrap(name: &CStr, f: VoidFn, real: &mut Real) -> VoidFn {
    let f = f?;
    // SAFETY (the transmutes): `f` is what the loader returned for `name`, so
    // it has that command's C signature, which the target type spells out.
    unsafe {
        match name.to_bytes() {
            b"vkUpdateDescriptorSets" => {
                real.update = Some(std::mem::transmute::<
                    unsafe extern "system" fn(),
                    UpdateDescriptorSets,
                >(f));
                Some(std::mem::transmute::<
                    UpdateDescriptorSets,
                    unsafe extern "system" fn(),
                >(update_descriptor_sets))
            }
            b"vkCreateDescriptorSetLayout" => {
                real.create_layout = Some(std::mem::transmute::<
                    unsafe extern "system" fn(),
                    CreateDescriptorSetLayout,
                >(f));
                Some(std::mem::transmute::<
                    CreateDescriptorSetLayout,
                    unsafe extern "system" fn(),
                >(create_descriptor_set_layout))
            }
            b"vkAllocateDescriptorSets" => {
                real.allocate = Some(std::mem::transmute::<
                    unsafe extern "system" fn(),
                    AllocateDescriptorSets,
                >(f));
                Some(std::mem::transmute::<
                    AllocateDescriptorSets,
                    unsafe extern "system" fn(),
                >(allocate_descriptor_sets))
            }
            _ => Some(f),
        }
    }
}

fn wrapped(name: &CStr) -> bool {
    matches!(
        name.to_bytes(),
        b"vkUpdateDescriptorSets" | b"vkCreateDescriptorSetLayout" | b"vkAllocateDescriptorSets"
    )
}

/// ggml-vulkan's static build resolves its `vkGetInstanceProcAddr` to this
/// definition; everything is forwarded to the loader's.
///
/// # Safety
/// The Vulkan contract of `vkGetInstanceProcAddr`.
#[no_mangle]
pub unsafe extern "system" fn vkGetInstanceProcAddr(
    instance: *mut c_void,
    name: *const c_char,
) -> VoidFn {
    let real = real_get_instance_proc_addr()?;
    if name.is_null() {
        // SAFETY: forwarded as given.
        return unsafe { real(instance, name) };
    }
    // SAFETY: the caller passes a NUL-terminated name.
    let n = unsafe { CStr::from_ptr(name) };
    if n.to_bytes() == b"vkGetInstanceProcAddr" {
        // SAFETY: a function item with the command's signature.
        return Some(unsafe {
            std::mem::transmute::<GetProcAddr, unsafe extern "system" fn()>(vkGetInstanceProcAddr)
        });
    }
    // SAFETY: forwarded as given.
    let f = unsafe { real(instance, name) };
    if !enabled() {
        return f;
    }
    if n.to_bytes() == b"vkGetDeviceProcAddr" {
        if let Some(f) = f {
            real_get_device_proc_addr().get_or_init(|| f as usize);
            HOOKED.store(true, Ordering::Relaxed);
            // SAFETY: a function item with the command's signature.
            return Some(unsafe {
                std::mem::transmute::<GetProcAddr, unsafe extern "system" fn()>(
                    get_device_proc_addr,
                )
            });
        }
        return None;
    }
    if !wrapped(n) {
        return f;
    }
    let mut st = lock();
    let mut t = st.trampolines;
    let w = wrap(n, f, &mut t);
    st.trampolines = t;
    w
}

unsafe extern "system" fn get_device_proc_addr(device: *mut c_void, name: *const c_char) -> VoidFn {
    let p = *real_get_device_proc_addr().get()?;
    // SAFETY: stored from the loader's vkGetDeviceProcAddr.
    let real = unsafe { std::mem::transmute::<usize, GetProcAddr>(p) };
    // SAFETY: forwarded as given.
    let f = unsafe { real(device, name) };
    if name.is_null() {
        return f;
    }
    // SAFETY: the caller passes a NUL-terminated name.
    let n = unsafe { CStr::from_ptr(name) };
    if n.to_bytes() == b"vkGetDeviceProcAddr" {
        return f.map(|_| {
            // SAFETY: a function item with the command's signature.
            unsafe {
                std::mem::transmute::<GetProcAddr, unsafe extern "system" fn()>(
                    get_device_proc_addr,
                )
            }
        });
    }
    if !wrapped(n) {
        return f;
    }
    let mut st = lock();
    let mut r = st
        .devices
        .get(&(device as usize))
        .copied()
        .unwrap_or_default();
    let w = wrap(n, f, &mut r);
    st.devices.insert(device as usize, r);
    w
}

fn real_for(st: &State, device: *mut c_void) -> Real {
    let d = st
        .devices
        .get(&(device as usize))
        .copied()
        .unwrap_or_default();
    let t = st.trampolines;
    Real {
        update: d.update.or(t.update),
        create_layout: d.create_layout.or(t.create_layout),
        allocate: d.allocate.or(t.allocate),
    }
}

unsafe extern "system" fn create_descriptor_set_layout(
    device: *mut c_void,
    info: *const DescriptorSetLayoutCreateInfo,
    alloc: *const c_void,
    out: *mut Handle,
) -> VkResult {
    let real = real_for(&lock(), device);
    let Some(create) = real.create_layout else {
        return -3; // VK_ERROR_INITIALIZATION_FAILED: no driver function
    };
    // SAFETY: forwarded as given.
    let r = unsafe { create(device, info, alloc, out) };
    if r != VK_SUCCESS || info.is_null() || out.is_null() {
        return r;
    }
    // SAFETY: the caller's create info, valid per the Vulkan contract.
    let info = unsafe { &*info };
    let n = info.binding_count as usize;
    let bindings = if n == 0 || info.p_bindings.is_null() {
        &[][..]
    } else {
        // SAFETY: `binding_count` elements, per the Vulkan contract.
        unsafe { std::slice::from_raw_parts(info.p_bindings, n) }
    };
    // Only layouts of single storage buffers at bindings 0..n, in any order.
    let mut seen = [false; MAX_BINDINGS];
    let plain = n > 0
        && n <= MAX_BINDINGS
        && bindings.iter().all(|b| {
            let i = b.binding as usize;
            let ok = b.descriptor_type == VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
                && b.descriptor_count == 1
                && i < n
                && !seen[i];
            if ok {
                seen[i] = true;
            }
            ok
        });
    // SAFETY: the driver wrote the new handle.
    let handle = unsafe { *out };
    let mut st = lock();
    if plain {
        st.layouts.insert(handle, n as u32);
    } else {
        st.layouts.remove(&handle);
    }
    r
}

unsafe extern "system" fn allocate_descriptor_sets(
    device: *mut c_void,
    info: *const DescriptorSetAllocateInfo,
    out: *mut Handle,
) -> VkResult {
    let real = real_for(&lock(), device);
    let Some(allocate) = real.allocate else {
        return -3;
    };
    // SAFETY: forwarded as given.
    let r = unsafe { allocate(device, info, out) };
    if r != VK_SUCCESS || info.is_null() || out.is_null() {
        return r;
    }
    // SAFETY: the caller's allocate info, valid per the Vulkan contract.
    let info = unsafe { &*info };
    let count = info.descriptor_set_count as usize;
    if count == 0 {
        return r;
    }
    // SAFETY: `count` layouts in, `count` sets written out.
    let (layouts, sets) = unsafe {
        (
            std::slice::from_raw_parts(info.p_set_layouts, count),
            std::slice::from_raw_parts(out, count),
        )
    };
    let mut st = lock();
    for (l, s) in layouts.iter().zip(sets) {
        match st.layouts.get(l).copied() {
            Some(n) => st.sets.insert(*s, n),
            None => st.sets.remove(s),
        };
    }
    r
}

unsafe extern "system" fn update_descriptor_sets(
    device: *mut c_void,
    write_count: u32,
    writes: *const WriteDescriptorSet,
    copy_count: u32,
    copies: *const c_void,
) {
    let st = lock();
    let real = real_for(&st, device);
    let Some(update) = real.update else {
        return;
    };
    let writes_in = if write_count == 0 || writes.is_null() {
        &[][..]
    } else {
        // SAFETY: `write_count` writes, per the Vulkan contract.
        unsafe { std::slice::from_raw_parts(writes, write_count as usize) }
    };
    // Each short write at binding 0 of a plain set, extended to all n.
    let mut out: Vec<WriteDescriptorSet> = writes_in.to_vec();
    let mut infos: Vec<Vec<DescriptorBufferInfo>> = Vec::new();
    let mut extended = Vec::new();
    for (i, w) in writes_in.iter().enumerate() {
        let Some(&n) = st.sets.get(&w.dst_set) else {
            continue;
        };
        if w.descriptor_type != VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
            || w.dst_binding != 0
            || w.dst_array_element != 0
            || w.descriptor_count == 0
            || w.descriptor_count >= n
            || w.p_buffer_info.is_null()
        {
            continue;
        }
        // SAFETY: `descriptor_count` buffer infos, per the Vulkan contract.
        let given =
            unsafe { std::slice::from_raw_parts(w.p_buffer_info, w.descriptor_count as usize) };
        let mut all = given.to_vec();
        all.resize(n as usize, given[0]);
        infos.push(all);
        extended.push(i);
    }
    drop(st);
    for (i, all) in extended.iter().zip(&infos) {
        out[*i].descriptor_count = all.len() as u32;
        out[*i].p_buffer_info = all.as_ptr();
    }
    if !extended.is_empty() {
        EXTENDED.fetch_add(extended.len(), Ordering::Relaxed);
    }
    // SAFETY: the caller's writes, with some pointing at `infos` (alive until
    // the call returns) for as many bindings as their set's layout has.
    unsafe {
        update(
            device,
            write_count,
            if out.is_empty() { writes } else { out.as_ptr() },
            copy_count,
            copies,
        )
    };
}

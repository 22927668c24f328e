//! Reads of kernel memory at run-time offsets. Every failure is counted once, by the caller's
//! `?`, in the ERRORS map ([`crate::emit::count_error`]).
use aya_ebpf::{cty::c_void, helpers::bpf_probe_read_kernel, helpers::generated};
use custos_agent_abi::{ProbeError, SETTING_DIRECT_READS};

use crate::{emit::count_error, globals::setting};

/// A failed read; the probe gives up on the event.
pub struct Fault;

/// Reads a `T` at `base + offset`.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: usize) -> Result<T, Fault> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T) } {
        Ok(value) => Ok(value),
        Err(_) => {
            count_error(ProbeError::KernelRead);
            Err(Fault)
        }
    }
}

/// Reads a non-null pointer at `base + offset`.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: usize) -> Result<*const u8, Fault> {
    let ptr: *const u8 = read(base, offset)?;
    if ptr.is_null() { Err(Fault) } else { Ok(ptr) }
}

/// Reads a `T` at `base + offset`, or zero when the read fails (the helper clears the
/// destination on failure). Branch-free on purpose: a chain of these (a pointer, then a field
/// behind it) costs the verifier one path, where `?` on each read would double its paths for
/// the rest of the program. A null `base` reads as zero.
#[inline(always)]
pub fn read_or_zero<T: Copy>(base: *const u8, offset: usize) -> T {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes size_of::<T>() bytes to value in every case (zeros on failure).
    unsafe {
        generated::bpf_probe_read_kernel(
            value.as_mut_ptr() as *mut c_void,
            core::mem::size_of::<T>() as u32,
            base.wrapping_add(offset) as *const c_void,
        );
        value.assume_init()
    }
}

/// `value`, with its range hidden from the compiler, so that a mask applied to the result stays
/// in the program for the verifier even where the compiler could prove it redundant.
#[inline(always)]
pub fn opaque(value: usize) -> usize {
    // SAFETY: reading a local through a valid reference.
    unsafe { core::ptr::read_volatile(&value) }
}

/// Whether [`typed`] reads are plain loads ([`SETTING_DIRECT_READS`]). A load-time constant:
/// the verifier never looks at the branch not taken.
#[inline(always)]
pub fn direct() -> bool {
    setting!(flags) & SETTING_DIRECT_READS != 0
}

/// Reads a `T` at `base + offset`, or zero, where `base` is a BTF-typed pointer when direct
/// reads are on: the current task from [`crate::gate::current`], its saved registers from
/// [`crate::task::saved_regs`], or a struct pointer read from one of those with [`typed`]
/// (a `void *` or a pointer to a pointer field gives an untyped value: read through that with
/// [`read`]). With direct reads this is one load that the verifier checks against the kernel's
/// BTF (the offset is a load-time constant) and makes fault-tolerant: a bad or null `base`
/// reads as zero, as [`read_or_zero`] does otherwise.
#[inline(always)]
pub fn typed<T: Copy>(base: *const u8, offset: usize) -> T {
    if direct() {
        // SAFETY: the verifier accepts this load only through a typed pointer at the offset of
        // a field of that type's size, and it turns it into a load that cannot fault.
        unsafe { core::ptr::read_volatile(base.wrapping_add(offset) as *const T) }
    } else {
        read_or_zero(base, offset)
    }
}

/// [`typed`], where a failed probe read (no direct reads) is a [`Fault`], counted as
/// [`read`] counts it.
#[inline(always)]
pub fn typed_read<T: Copy>(base: *const u8, offset: usize) -> Result<T, Fault> {
    if direct() {
        Ok(typed(base, offset))
    } else {
        read(base, offset)
    }
}

/// A non-null pointer read with [`typed_read`].
#[inline(always)]
pub fn typed_ptr(base: *const u8, offset: usize) -> Result<*const u8, Fault> {
    let ptr: *const u8 = typed_read(base, offset)?;
    if ptr.is_null() { Err(Fault) } else { Ok(ptr) }
}

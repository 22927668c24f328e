//! Reads of kernel memory at run-time offsets. Every failure is counted once, by the caller's
//! `?`, in the ERRORS map ([`crate::emit::count_error`]).
use aya_ebpf::{cty::c_void, helpers::bpf_probe_read_kernel, helpers::generated};
use custos_agent_abi::ProbeError;

use crate::emit::count_error;

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

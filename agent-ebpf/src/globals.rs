//! Read-only globals: the kernel struct offsets and the settings the agent writes before load.
//! The verifier sees them as constants (frozen .rodata), so unused branches cost nothing.
use custos_agent_abi::{KernelOffsets, Settings};

#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

#[unsafe(no_mangle)]
pub static SETTINGS: Settings = unsafe { core::mem::zeroed() };

/// Reads one field of [`OFFSETS`] as a `usize`.
macro_rules! off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::globals::OFFSETS.$field) } as usize
    };
}
pub(crate) use off;

/// Reads one field of [`SETTINGS`].
macro_rules! setting {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::globals::SETTINGS.$field) }
    };
}
pub(crate) use setting;

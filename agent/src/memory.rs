//! Giving freed heap back to the kernel. Loading the programs parses the kernel's BTF (several
//! MiB) and a burst of events fills buffers; glibc's allocator keeps what was freed mapped, so
//! without this an agent that is idle again keeps the resident size of its busiest moment.
/// Returns the allocator's free memory to the kernel (a no-op where the allocator is not
/// glibc's).
pub fn release_free() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

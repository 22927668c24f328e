//! How much heap the agent keeps resident: few allocator arenas, and freed heap given back.
//! Loading the programs parses the kernel's BTF (several MiB) and a burst of events fills
//! buffers; glibc's allocator keeps what was freed mapped, so without this an agent that is idle
//! again keeps the resident size of its busiest moment.

/// Returns the allocator's free memory to the kernel (a no-op where the allocator is not
/// glibc's).
pub fn release_free() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets glibc's allocator up for a daemon that must stay small:
/// - at most two arenas. By default it makes up to eight per core as threads contend, each
///   keeping its own freed memory, so after a burst the runtime's workers, the ring reader and
///   the blocking pool each held freed heap of their own (the events cross threads anyway, so
///   more arenas buy little);
/// - blocks from 128 KiB up (the BTF tables while loading, batch and compression buffers)
///   mapped on their own, so freeing one gives it back. glibc starts there too, but raises the
///   threshold to the size of each mapped block freed, up to 32 MiB: once loading had freed
///   the kernel BTF's 5.5 MiB buffer, every later buffer up to that size came from the heap
///   and stayed resident after use. Under the capacity benchmark the agent peaked at 40-51 MiB
///   resident before, 36-37 MiB with both settings.
///
/// Call it first, before any thread starts. A no-op where the allocator is not glibc's.
pub fn configure_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; no other thread is allocating yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

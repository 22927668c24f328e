//! Records leave the kernel here: they are assembled in a per-CPU scratch buffer, copied to the
//! ring buffer, and when the ring buffer is full the loss is counted per record kind (`DROPS`) and
//! per session (`SESSION_DROPS`) so that the agent can report it as a gap in that session.
//!
//! Data pieces (terminal bytes, argv) go through [`custos_send_piece`], a global function: the
//! verifier checks it once, however many loop iterations call it, which keeps the programs far
//! below its instruction limit on every kernel.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    cty::c_void,
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user},
    },
    macros::map,
    maps::{Array, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use custos_agent_abi::{
    CHUNK_MAX, DropCount, ExecArgv, ProbeError, RecordHeader, RecordKind, SCRATCH_SIZE,
    SessionDrops, TaskIds, TtyData,
};

use crate::globals::setting;

/// The one ring buffer every program writes to. Its size is set by the agent at load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Entry 0 is non-zero while the agent's reader is parked: it found the ring empty for a while
/// and sleeps until a record wakes it. The next record forces the wake-up and clears the entry,
/// so that an idle agent needs no timer to notice the first record of a new burst.
#[map]
static READER_PARKED: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU scratch space, 8-byte aligned so that headers and payloads are written with whole
/// words (an unaligned copy becomes a byte loop the verifier walks byte by byte).
#[repr(C)]
pub struct Scratch {
    pub words: [u64; SCRATCH_SIZE / 8],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Records (and their bytes) that did not fit in the ring buffer, per [`RecordKind`].
#[map]
static DROPS: PerCpuArray<DropCount> = PerCpuArray::with_max_entries(RecordKind::SLOTS, 0);

/// The same losses per audit session id, for gap records in the right session.
#[map]
static SESSION_DROPS: LruPerCpuHashMap<u32, SessionDrops> =
    LruPerCpuHashMap::with_max_entries(16384, 0);

/// Records written to the ring buffer, per [`RecordKind`].
#[map]
static SUBMITTED: PerCpuArray<u64> = PerCpuArray::with_max_entries(RecordKind::SLOTS, 0);

/// Failed reads, per [`ProbeError`].
#[map]
static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ProbeError::SLOTS, 0);

pub const HEADER_SIZE: usize = core::mem::size_of::<RecordHeader>();

/// A [`custos_send_piece`] flag (above the 16 header flag bits): the source is kernel memory.
pub const PIECE_FROM_KERNEL: u64 = 1 << 32;

#[inline(always)]
pub fn count_error(error: ProbeError) {
    if let Some(counter) = ERRORS.get_ptr_mut(error as u32) {
        // SAFETY: per-CPU slot, programs do not nest on one CPU for these hooks.
        unsafe { *counter += 1 };
    }
}

/// The per-CPU buffer records are built in (8-byte aligned, SCRATCH_SIZE bytes).
#[inline(always)]
pub fn scratch() -> Option<*mut u8> {
    match SCRATCH.get_ptr_mut(0) {
        Some(scratch) => Some(scratch as *mut u8),
        None => {
            count_error(ProbeError::Scratch);
            None
        }
    }
}

/// Writes the record header at the start of `buf`.
#[inline(always)]
pub fn write_header(buf: *mut u8, kind: RecordKind, flags: u16, ids: &TaskIds) {
    let header = RecordHeader {
        kind: kind as u16,
        flags,
        _pad: 0,
        // SAFETY: plain helper call.
        ts_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        task: *ids,
    };
    // SAFETY: buf is the 8-aligned scratch buffer, larger than a header.
    unsafe { core::ptr::write(buf as *mut RecordHeader, header) };
}

/// Writes a payload struct right after the header.
#[inline(always)]
pub fn write_payload<T>(buf: *mut u8, payload: T) {
    // SAFETY: HEADER_SIZE is a multiple of 8 and every payload fits behind the header.
    unsafe { core::ptr::write(buf.add(HEADER_SIZE) as *mut T, payload) };
}

/// Copies the first `size` bytes of `buf` (header included) to the ring buffer.
#[inline(always)]
pub fn submit(buf: *const u8, size: usize, kind: RecordKind, sessionid: u32) {
    // The wake-up decision before the bound check: the helper call it makes spills `size`, and
    // older verifiers (6.1) lose the bound of a value checked before a spill.
    let flags = wakeup_flag(size);
    if size > SCRATCH_SIZE {
        return;
    }
    // SAFETY: buf points at SCRATCH_SIZE bytes of the per-CPU scratch value.
    let data = unsafe { core::slice::from_raw_parts(buf, size) };
    if EVENTS.output::<[u8]>(data, flags).is_err() {
        count_drop(kind, size as u64, sessionid);
    } else if let Some(count) = SUBMITTED.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot of this program run.
        unsafe { *count += 1 };
    }
}

/// Whether this record wakes the agent: when the reader is parked (see [`READER_PARKED`]), or
/// when the record makes the unread data cross a multiple of the `wakeup_bytes` setting.
/// Waking the reader on every record is an interrupt per record (an inter-processor one when
/// the reader sleeps on another CPU, a VM exit in a guest), which costs more than building the
/// record; while records flow the agent drains on a short timer between wake-ups.
#[inline(always)]
fn wakeup_flag(size: usize) -> u64 {
    let step = setting!(wakeup_bytes) as u64;
    if step == 0 {
        return 0; // the kernel's own rule: wake a reader that has caught up
    }
    if let Some(parked) = READER_PARKED.get_ptr_mut(0) {
        // SAFETY: the map's one entry. Programs on other CPUs may clear it at the same time;
        // each then wakes the reader once, which is harmless.
        unsafe {
            if core::ptr::read_volatile(parked) != 0 {
                core::ptr::write_volatile(parked, 0);
                return BPF_RB_FORCE_WAKEUP as u64;
            }
        }
    }
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if unread / step != (unread + size as u64) / step {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Sends one data piece of the record prepared in the scratch buffer: the caller wrote the
/// header (kind [`RecordKind::TtyData`] or [`RecordKind::ExecArgv`]) and the payload fields
/// common to all pieces; this fills in the piece's length and offset, sets the header `flags`,
/// copies `len` (1..=CHUNK_MAX) bytes from user address `src` and submits.
///
/// Returns the bytes sent, or a negative number when reading `src` failed (nothing is sent).
/// `flags` holds the record's header flags, and [`PIECE_FROM_KERNEL`] when `src` is a kernel
/// address.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn custos_send_piece(src: u64, len: u64, offset: u64, flags: u64) -> i64 {
    let Some(buf) = scratch() else {
        return -1;
    };
    // SAFETY: every access below is inside the scratch buffer, at offsets of the ABI structs.
    unsafe {
        let header = buf as *mut RecordHeader;
        let kind = (*header).kind;
        let sessionid = (*header).task.sessionid;
        let n = ((len.wrapping_sub(1)) & (CHUNK_MAX as u64 - 1)) + 1;
        let (kind, payload_size) = if kind == RecordKind::TtyData as u16 {
            let payload = buf.add(HEADER_SIZE) as *mut TtyData;
            (*payload).len = n as u32;
            (*payload).offset = offset;
            (*payload).uncaptured = 0;
            (RecordKind::TtyData, core::mem::size_of::<TtyData>())
        } else {
            let payload = buf.add(HEADER_SIZE) as *mut ExecArgv;
            (*payload).len = n as u32;
            (*payload).offset = offset as u32;
            (RecordKind::ExecArgv, core::mem::size_of::<ExecArgv>())
        };
        let data = buf.add(HEADER_SIZE + payload_size);
        let read = if flags & PIECE_FROM_KERNEL != 0 {
            bpf_probe_read_kernel(data as *mut c_void, n as u32, src as *const c_void)
        } else {
            bpf_probe_read_user(data as *mut c_void, n as u32, src as *const c_void)
        };
        if read < 0 {
            count_error(if flags & PIECE_FROM_KERNEL != 0 {
                ProbeError::KernelRead
            } else {
                ProbeError::UserRead
            });
            return -1;
        }
        (*header).flags = flags as u16;
        (*header).ts_boot_ns = bpf_ktime_get_boot_ns();
        submit(
            buf,
            HEADER_SIZE + payload_size + n as usize,
            kind,
            sessionid,
        );
        n as i64
    }
}

#[inline(always)]
fn count_drop(kind: RecordKind, bytes: u64, sessionid: u32) {
    if let Some(count) = DROPS.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*count).records += 1;
            (*count).bytes += bytes;
        }
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    match SESSION_DROPS.get_ptr_mut(sessionid) {
        Some(drops) => {
            // SAFETY: per-CPU value of this CPU.
            unsafe {
                (*drops).records += 1;
                (*drops).bytes += bytes;
                if (*drops).first_ts == 0 {
                    (*drops).first_ts = now;
                }
                (*drops).last_ts = now;
            }
        }
        None => {
            let drops = SessionDrops {
                records: 1,
                bytes,
                first_ts: now,
                last_ts: now,
            };
            let _ = SESSION_DROPS.insert(sessionid, drops, 0);
        }
    }
}

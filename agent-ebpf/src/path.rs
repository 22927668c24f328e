//! Walking a `struct path` (vfsmount + dentry) up to the root, crossing mount points.
//!
//! Components are written leaf first, each NUL-terminated; the agent reverses them. This keeps
//! the kernel side to forward writes at bounded offsets, which the verifier accepts. The walk is
//! a global function ([`custos_walk_path`]) so that the verifier checks its loop once.
use aya_ebpf::{cty::c_void, helpers::generated::bpf_probe_read_kernel_str};
use custos_agent_abi::{MAX_PATH_DEPTH, NAME_MAX_NUL, PATH_AREA, SCRATCH_SIZE};

use crate::{
    emit,
    globals::off,
    kmem::{self, Fault},
};

/// Outcome of a walk: bytes written and whether the root was reached.
pub struct Walk {
    pub len: usize,
    pub complete: bool,
}

/// Largest offset of a path area in the scratch buffer (header + payload).
const AREA_OFFSET_MASK: u64 = 0xff;
/// Every name is copied to `scratch + (offset & SCRATCH_OFFSET_MASK)`: one mask applied last
/// (kept by [`kmem::opaque`]), which every verifier, 6.1's included, reads as a bound from 0 with
/// room for a whole name after it. Bounds learned from comparisons are not enough there: 6.1
/// loses them when the compiler spills the offset to the stack.
const SCRATCH_OFFSET_MASK: usize = 0x3fff;
const _: () = assert!(SCRATCH_OFFSET_MASK + NAME_MAX_NUL <= SCRATCH_SIZE);
const _: () = assert!(AREA_OFFSET_MASK as usize + PATH_AREA <= SCRATCH_OFFSET_MASK + 1);
const COMPLETE: u64 = 1 << 32;
const FAILED: u64 = u64::MAX;

/// Walks the `struct path` at kernel address `path` into the scratch buffer's area at
/// `area_offset`, from byte `start` of the area.
#[inline(always)]
pub fn walk_path(path: *const u8, area_offset: usize, start: usize) -> Result<Walk, Fault> {
    let result = custos_walk_path(path as u64, area_offset as u64, start as u64);
    if result == FAILED {
        return Err(Fault);
    }
    Ok(Walk {
        len: (result & 0xffff) as usize,
        complete: result & COMPLETE != 0,
    })
}

/// Returns the bytes written (low 32 bits) and [`COMPLETE`] when the root was reached, or
/// [`FAILED`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn custos_walk_path(path: u64, area_offset: u64, start: u64) -> u64 {
    let Some(buf) = emit::scratch() else {
        return FAILED;
    };
    let area_offset = (area_offset & AREA_OFFSET_MASK) as usize;
    let path = path as *const u8;
    let Ok(vfsmount) = kmem::read_ptr(path, off!(path_mnt)) else {
        return FAILED;
    };
    let Ok(dentry) = kmem::read_ptr(path, off!(path_dentry)) else {
        return FAILED;
    };
    match walk(
        vfsmount,
        dentry,
        buf,
        area_offset,
        (start as usize) & (PATH_AREA - 1),
    ) {
        Ok(walk) => walk.len as u64 | if walk.complete { COMPLETE } else { 0 },
        Err(Fault) => FAILED,
    }
}

/// A dentry's `d_parent` and `d_name.name`, both non-null. They sit a word or two apart in
/// every kernel seen (`d_parent`, then `d_name` whose second word is `name`), so one read of
/// three words takes both: per component the walk then costs two helper calls instead of three.
/// The offsets are load-time constants, so the verifier keeps only the branch that applies.
#[inline(always)]
fn parent_and_name(dentry: *const u8) -> Result<(*const u8, *const u8), Fault> {
    let parent_offset = off!(dentry_d_parent);
    let name_offset = off!(dentry_d_name) + off!(qstr_name);
    let (parent, name) = if name_offset == parent_offset + 8 || name_offset == parent_offset + 16 {
        let words: [u64; 3] = kmem::read(dentry, parent_offset)?;
        let name = if name_offset == parent_offset + 8 {
            words[1]
        } else {
            words[2]
        };
        (words[0] as *const u8, name as *const u8)
    } else {
        (
            kmem::read_ptr(dentry, parent_offset)?,
            kmem::read_ptr(dentry, name_offset)?,
        )
    };
    if parent.is_null() || name.is_null() {
        return Err(Fault);
    }
    Ok((parent, name))
}

#[inline(always)]
fn walk(
    vfsmount: *const u8,
    mut dentry: *const u8,
    scratch: *mut u8,
    area_offset: usize,
    start: usize,
) -> Result<Walk, Fault> {
    let mut mount = vfsmount.wrapping_sub(off!(mount_mnt));
    let mut mnt_root = kmem::read_ptr(vfsmount, off!(vfsmount_mnt_root))?;
    let mut pos = start;
    for _ in 0..MAX_PATH_DEPTH {
        if dentry == mnt_root {
            let parent_mount = kmem::read_ptr(mount, off!(mount_mnt_parent))?;
            if parent_mount == mount {
                return Ok(Walk {
                    len: pos - start,
                    complete: true,
                });
            }
            dentry = kmem::read_ptr(mount, off!(mount_mnt_mountpoint))?;
            mount = parent_mount;
            mnt_root = kmem::read_ptr(mount, off!(mount_mnt) + off!(vfsmount_mnt_root))?;
            continue;
        }
        let (parent, name) = parent_and_name(dentry)?;
        if parent == dentry {
            // The root of a filesystem that is not mounted here (a detached mount).
            return Ok(Walk {
                len: pos - start,
                complete: true,
            });
        }
        if pos > PATH_AREA - NAME_MAX_NUL {
            break;
        }
        // SAFETY: the destination is inside the scratch buffer (offset masked, with room for
        // NAME_MAX_NUL bytes after it) and the helper bounds the copy by NAME_MAX_NUL.
        let copied = unsafe {
            bpf_probe_read_kernel_str(
                scratch.add(kmem::opaque(area_offset + pos) & SCRATCH_OFFSET_MASK) as *mut c_void,
                NAME_MAX_NUL as u32,
                name as *const c_void,
            )
        };
        if copied <= 0 {
            return Err(Fault);
        }
        pos += copied as usize;
        dentry = parent;
    }
    Ok(Walk {
        len: pos - start,
        complete: false,
    })
}

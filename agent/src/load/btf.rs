//! Kernel struct offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).
//!
//! Rust eBPF has no CO-RE relocations, so the programs read every field at an offset the agent
//! looks up here at start and hands over in [`KernelOffsets`]. A field that moved is found where
//! it now is; a field that is gone stops the agent with its name.
use std::path::Path;

use btf_rs::{Backend, Btf, Type};
use custos_agent_abi::{KernelOffsets, OFFSETS_MAGIC};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF from {path}: {message} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Read { path: String, message: String },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no field {field}")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: {strukt}.{field} is a bit field")]
    BitField { strukt: String, field: String },
}

/// What the programs need to know of the running kernel.
#[derive(Debug)]
pub struct Kernel {
    pub offsets: KernelOffsets,
    /// The kernel has `bpf_get_current_task_btf` (5.11) and `bpf_task_pt_regs` (5.15), so the
    /// programs can read the current task with plain loads
    /// ([`custos_agent_abi::SETTING_DIRECT_READS`]).
    pub task_btf_helpers: bool,
}

/// Reads what the programs need from the BTF file at `path`.
///
/// The file is mapped and only the types asked for are decoded: parsing all of a kernel's BTF
/// (about 5 MiB, 150,000 types) into memory took the agent's resident size to 48 MiB at start.
/// Kernels before 6.16 cannot map /sys/kernel/btf/vmlinux: there it is parsed whole.
pub fn read_kernel(path: &Path) -> Result<Kernel, BtfError> {
    let btf = Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| Btf::from_file_with_backend(path, Backend::Cache))
        .map_err(|err| BtfError::Read {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
    let kernel = KernelBtf { btf };
    Ok(Kernel {
        offsets: kernel.offsets()?,
        task_btf_helpers: kernel.has_helper("BPF_FUNC_task_pt_regs"),
    })
}

struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    fn offsets(&self) -> Result<KernelOffsets, BtfError> {
        let o = |strukt: &str, field: &str| self.offset(strukt, field);
        let tty_termios = o("tty_struct", "termios")?;
        let ktermios_lflag = o("ktermios", "c_lflag")?;
        let ktermios_oflag = o("ktermios", "c_oflag")?;
        let pt_regs_size = self.size("pt_regs")?;
        Ok(KernelOffsets {
            magic: OFFSETS_MAGIC,
            task_pid: o("task_struct", "pid")?,
            task_tgid: o("task_struct", "tgid")?,
            task_real_parent: o("task_struct", "real_parent")?,
            task_cred: o("task_struct", "cred")?,
            task_loginuid: o("task_struct", "loginuid")?,
            task_sessionid: o("task_struct", "sessionid")?,
            task_files: o("task_struct", "files")?,
            task_fs: o("task_struct", "fs")?,
            task_signal: o("task_struct", "signal")?,
            task_stack: o("task_struct", "stack")?,
            task_mm: o("task_struct", "mm")?,
            task_exit_code: o("task_struct", "exit_code")?,
            cred_uid: o("cred", "uid")?,
            cred_euid: o("cred", "euid")?,
            cred_gid: o("cred", "gid")?,
            mm_arg_start: o("mm_struct", "arg_start")?,
            mm_arg_end: o("mm_struct", "arg_end")?,
            files_fdt: o("files_struct", "fdt")?,
            fdtable_max_fds: o("fdtable", "max_fds")?,
            fdtable_fd: o("fdtable", "fd")?,
            file_f_path: o("file", "f_path")?,
            file_f_inode: o("file", "f_inode")?,
            file_private_data: o("file", "private_data")?,
            inode_i_rdev: o("inode", "i_rdev")?,
            path_mnt: o("path", "mnt")?,
            path_dentry: o("path", "dentry")?,
            dentry_d_parent: o("dentry", "d_parent")?,
            dentry_d_name: o("dentry", "d_name")?,
            qstr_name: o("qstr", "name")?,
            vfsmount_mnt_root: o("vfsmount", "mnt_root")?,
            mount_mnt: o("mount", "mnt")?,
            mount_mnt_parent: o("mount", "mnt_parent")?,
            mount_mnt_mountpoint: o("mount", "mnt_mountpoint")?,
            fs_pwd: o("fs_struct", "pwd")?,
            signal_tty: o("signal_struct", "tty")?,
            signal_live: o("signal_struct", "live")?,
            tty_index: o("tty_struct", "index")?,
            tty_driver: o("tty_struct", "driver")?,
            tty_link: o("tty_struct", "link")?,
            tty_termios_lflag: tty_termios + ktermios_lflag,
            tty_termios_oflag: tty_termios + ktermios_oflag,
            tty_driver_major: o("tty_driver", "major")?,
            tty_driver_minor_start: o("tty_driver", "minor_start")?,
            tty_file_private_tty: o("tty_file_private", "tty")?,
            bprm_filename: o("linux_binprm", "filename")?,
            pt_regs_di: o("pt_regs", "di")?,
            pt_regs_si: o("pt_regs", "si")?,
            pt_regs_dx: o("pt_regs", "dx")?,
            pt_regs_r10: o("pt_regs", "r10")?,
            pt_regs_orig_ax: o("pt_regs", "orig_ax")?,
            pt_regs_size,
            thread_size: self.thread_size(),
        })
    }

    /// Whether the kernel's `enum bpf_func_id` names the helper `name` (a helper's number is
    /// there from the release that added it, or from its backport).
    fn has_helper(&self, name: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name("bpf_func_id") else {
            return false;
        };
        types.iter().any(|ty| match ty {
            Type::Enum(helpers) => helpers
                .members
                .iter()
                .any(|member| self.btf.resolve_name(member).is_ok_and(|n| n == name)),
            _ => false,
        })
    }

    /// x86_64 kernel stacks are 16 KiB, 32 KiB with KASAN (THREAD_SIZE_ORDER grows by one).
    /// The programs check each syscall's saved registers against its number, so a wrong guess
    /// shows up as `regs_mismatch` errors, not as wrong data.
    fn thread_size(&self) -> u32 {
        let kasan = self.offset("kmem_cache", "kasan_info").is_ok();
        if kasan { 32768 } else { 16384 }
    }

    fn strukt(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| BtfError::NoStruct(name.to_owned()))?;
        types
            .into_iter()
            .find_map(|ty| match ty {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    fn size(&self, name: &str) -> Result<u32, BtfError> {
        Ok(self.strukt(name)?.size() as u32)
    }

    /// Byte offset of `field` in `struct strukt`, looking inside anonymous structs and unions.
    fn offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let s = self.strukt(strukt)?;
        let bits = self
            .member_bits(&s, field)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.to_owned(),
                field: field.to_owned(),
            })?;
        if bits % 8 != 0 {
            return Err(BtfError::BitField {
                strukt: strukt.to_owned(),
                field: field.to_owned(),
            });
        }
        Ok(bits / 8)
    }

    fn member_bits(&self, s: &btf_rs::Struct, field: &str) -> Option<u32> {
        for member in &s.members {
            let name = self.btf.resolve_name(member).unwrap_or_default();
            if name == field {
                return Some(member.bit_offset());
            }
            if name.is_empty() {
                let inner = match self.btf.resolve_chained_type(member) {
                    Ok(Type::Struct(inner)) | Ok(Type::Union(inner)) => inner,
                    _ => continue,
                };
                if let Some(bits) = self.member_bits(&inner, field) {
                    return Some(member.bit_offset() + bits);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this machine's BTF: every offset is found, anonymous members included
    /// (dentry.d_name and file.f_path sit in unions on recent kernels).
    #[test]
    fn running_kernel_offsets() {
        if !Path::new(VMLINUX_BTF).exists() {
            panic!("{VMLINUX_BTF} missing: the kernel needs BTF");
        }
        let kernel = read_kernel(Path::new(VMLINUX_BTF)).unwrap();
        assert!(
            kernel.task_btf_helpers,
            "this kernel (6.18) has bpf_task_pt_regs"
        );
        let offsets = kernel.offsets;
        assert_eq!(offsets.magic, OFFSETS_MAGIC);
        assert_eq!(offsets.tty_file_private_tty, 0);
        assert_eq!(offsets.task_tgid, offsets.task_pid + 4);
        assert_eq!(offsets.pt_regs_size, 21 * 8);
        assert!(offsets.dentry_d_name > offsets.dentry_d_parent);
        assert_eq!(offsets.qstr_name, 8);
    }
}

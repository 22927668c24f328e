//! tracefs: mounted where aya looks for tracepoint ids, and the layout of the syscall exit
//! records the programs read (`__syscall_nr` at 8, `ret` at 16) checked against the kernel's own
//! format files.
use std::path::Path;

use anyhow::{Context as _, bail};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at /sys/kernel/tracing when it is not there.
pub fn ensure_mounted() -> anyhow::Result<()> {
    match std::fs::metadata(Path::new(TRACEFS).join("events")) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "cannot read {TRACEFS}: permission denied (the agent needs root, or \
             CAP_DAC_READ_SEARCH as its unit grants)"
        ),
        _ => {}
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!("tracefs is not mounted at {TRACEFS} and mounting it failed (mount -t tracefs tracefs {TRACEFS})")
    })
}

/// Checks that every hooked `sys_exit_*` tracepoint exists and has the expected layout.
pub fn check_syscall_exit_layout(syscalls: &[&str]) -> anyhow::Result<()> {
    for syscall in syscalls {
        let path = Path::new(TRACEFS)
            .join("events/syscalls")
            .join(format!("sys_exit_{syscall}"))
            .join("format");
        let format = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (the kernel needs CONFIG_FTRACE_SYSCALLS)",
                path.display()
            )
        })?;
        for (field, offset) in [("__syscall_nr", 8), ("ret", 16)] {
            if field_offset(&format, field) != Some(offset) {
                bail!(
                    "{}: field {field} is not at offset {offset}; this kernel's syscall \
                     tracepoint layout is not supported",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// The io_uring tracepoint that fires as each request is submitted, and where its record keeps
/// the opcode.
pub struct IoUringSubmit {
    /// `io_uring_submit_req` (5.19 and later) or `io_uring_submit_sqe` (earlier kernels).
    pub event: &'static str,
    pub opcode_offset: u32,
}

/// The kernel's io_uring submit tracepoint, if it has one with an `opcode` field.
pub fn io_uring_submit() -> Option<IoUringSubmit> {
    ["io_uring_submit_req", "io_uring_submit_sqe"]
        .into_iter()
        .find_map(|event| {
            let path = Path::new(TRACEFS)
                .join("events/io_uring")
                .join(event)
                .join("format");
            let format = std::fs::read_to_string(path).ok()?;
            let offset = field_offset(&format, "opcode")?;
            (offset > 0).then_some(IoUringSubmit {
                event,
                opcode_offset: u32::try_from(offset).ok()?,
            })
        })
}

/// Offset of `field` in a tracefs format file.
fn field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.split_whitespace().last()?;
        if name != field {
            return None;
        }
        line.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))
            .and_then(|offset| offset.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_format_files() {
        let format = "name: sys_exit_openat\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
        assert_eq!(field_offset(format, "__syscall_nr"), Some(8));
        assert_eq!(field_offset(format, "ret"), Some(16));
        assert_eq!(field_offset(format, "common_type"), Some(0));
        assert_eq!(field_offset(format, "missing"), None);
    }
}

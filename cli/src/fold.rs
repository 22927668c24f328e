//! Which opens `custos show` folds into one counted line per process: reads of system
//! libraries, locale, time zone and dynamic loader files, the loader's failed probes for a
//! library along its search path, and O_PATH lookups (no data read), which every program makes
//! and which drown the story of a session (an ordinary ssh login opens ~2,000 of them).
//! Writes, reads of anything else, and a library actually loaded from outside the system's
//! folders are always listed; `--all-files` lists everything.
use custos_proto::api::FileInfo;

/// Folders whose reads are routine: what the loader and libc open for any program.
const ROUTINE_PREFIXES: &[&str] = &[
    "/lib/",
    "/lib32/",
    "/lib64/",
    "/libx32/",
    "/usr/lib/",
    "/usr/lib32/",
    "/usr/lib64/",
    "/usr/libx32/",
    "/usr/local/lib/",
    "/usr/share/locale/",
    "/usr/share/i18n/",
    "/usr/share/zoneinfo/",
];

/// Single files whose reads are routine.
const ROUTINE_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.preload",
    "/etc/localtime",
    "/etc/locale.alias",
    "/etc/default/locale",
];

/// A routine open: an O_PATH lookup, a read-only open of a system library, locale or loader
/// file (failed or not), or a failed read-only open of a shared library's name anywhere (the
/// loader probing its search path, LD_LIBRARY_PATH included).
pub fn is_routine(file: &FileInfo) -> bool {
    match file.access.as_str() {
        "path" => true,
        "read" => {
            ROUTINE_FILES.contains(&file.path.as_str())
                || ROUTINE_PREFIXES
                    .iter()
                    .any(|prefix| file.path.starts_with(prefix))
                || (file.result < 0 && is_library_name(&file.path))
        }
        _ => false,
    }
}

/// `libc.so.6`, `libnss_systemd.so.2`, `x.so`: a shared library's file name.
fn is_library_name(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".so") || name.contains(".so.")
}

/// The opens to list and how many routine ones were folded (none with `all`).
pub fn split<'a>(
    files: impl IntoIterator<Item = &'a FileInfo>,
    all: bool,
) -> (Vec<&'a FileInfo>, usize) {
    let mut listed = Vec::new();
    let mut folded = 0;
    for file in files {
        if !all && is_routine(file) {
            folded += 1;
        } else {
            listed.push(file);
        }
    }
    (listed, folded)
}

/// The line standing for `folded` routine opens.
pub fn folded_line(folded: usize) -> String {
    format!(
        "{folded} routine open{} (system libraries, locale, loader probes, path lookups; \
         --all-files lists them)",
        if folded == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use custos_proto::Timestamp;

    use super::*;

    fn open(path: &str, access: &str, result: i64) -> FileInfo {
        FileInfo {
            time: Timestamp(0),
            seq: 0,
            pid: 1,
            path: path.to_owned(),
            access: access.to_owned(),
            flags: 0,
            result,
        }
    }

    #[test]
    fn loader_library_and_locale_reads_fold_and_the_rest_stays() {
        let files = [
            open("/etc/ld.so.cache", "read", 3),
            open("/lib/x86_64-linux-gnu/libc.so.6", "read", 3),
            open(
                "/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libz.so",
                "read",
                -2,
            ),
            open("/usr/lib/locale/locale-archive", "read", 3),
            open("/usr/share/locale/en/LC_MESSAGES/bash.mo", "read", -2),
            open("/etc/shadow", "read", 3),
            open("/lib/x86_64-linux-gnu/libc.so.6", "write", 3),
            open("/usr/lib/evil.so", "read_write", 3),
            open("/home/alice/lib/notes.txt", "read", 3),
            open("/opt/app/lib/tls/libc.so.6", "read", -2),
            open("/opt/app/lib/libnss_files.so", "read", -2),
            open("/tmp/x/libevil.so.1", "read", 3),
            open("/run/userdb", "path", -2),
        ];
        let (listed, folded) = split(&files, false);
        assert_eq!(folded, 8);
        let paths: Vec<&str> = listed.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/shadow",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/evil.so",
                "/home/alice/lib/notes.txt",
                "/tmp/x/libevil.so.1"
            ]
        );
        let (listed, folded) = split(&files, true);
        assert_eq!((listed.len(), folded), (files.len(), 0));
    }
}

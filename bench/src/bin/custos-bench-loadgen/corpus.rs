//! Terminal output of real commands run on this machine, kept as files so every run replays
//! the same bytes.
use super::*;

/// Commands whose output makes the corpus (those missing here are skipped).
const COMMANDS: &[&[&str]] = &[
    &["ls", "-l", "/usr/bin"],
    &["ls", "-la", "/etc"],
    &["ps", "aux"],
    &["dmesg"],
    &["journalctl", "-n", "3000", "--no-pager"],
    &["cat", "/proc/cpuinfo"],
    &["cat", "/etc/services"],
    &["cat", "/usr/include/stdio.h"],
    &["df", "-h"],
    &["mount"],
    &["ip", "addr"],
    &["env"],
    &["man", "-P", "cat", "bash"],
    &["man", "-P", "cat", "ssh"],
    &["man", "-P", "cat", "systemd.exec"],
    &["find", "/etc", "-maxdepth", "2"],
    &["git", "-C", "/work/main", "log", "--stat", "-n", "300"],
    &["ls", "-lR", "/usr/share/doc"],
];
/// Largest output kept per command.
const MAX: usize = 2 << 20;

pub struct Entry {
    pub argv: Vec<String>,
    /// As a terminal shows it: lines ending in CR LF.
    pub lines: Vec<Vec<u8>>,
}

pub struct Corpus {
    pub entries: Vec<Entry>,
}

/// Reads the corpus in `dir`, making it first from the commands if it is not there.
pub fn load(dir: &Path) -> anyhow::Result<Corpus> {
    if !dir.join("done").exists() {
        make(dir)?;
    }
    let mut entries = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "out"))
        .collect();
    names.sort();
    for path in names {
        let argv_path = path.with_extension("argv");
        let argv = std::fs::read_to_string(&argv_path)
            .with_context(|| format!("reading {}", argv_path.display()))?
            .lines()
            .map(str::to_owned)
            .collect();
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let lines = text
            .split(|b| *b == b'\n')
            .map(|line| {
                let mut l = line.to_vec();
                l.extend_from_slice(b"\r\n");
                l
            })
            .collect();
        entries.push(Entry { argv, lines });
    }
    anyhow::ensure!(
        entries.len() >= 4,
        "only {} commands gave output for the corpus in {}",
        entries.len(),
        dir.display()
    );
    Ok(Corpus { entries })
}

fn make(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, argv) in COMMANDS.iter().enumerate() {
        let Ok(output) = Command::new(argv[0])
            .args(&argv[1..])
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "1")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
        else {
            continue;
        };
        let mut out = output.stdout;
        if out.len() < 512 {
            continue;
        }
        out.truncate(MAX);
        std::fs::write(dir.join(format!("{i:02}.out")), &out)
            .with_context(|| format!("writing the corpus in {}", dir.display()))?;
        std::fs::write(dir.join(format!("{i:02}.argv")), argv.join("\n"))
            .with_context(|| format!("writing the corpus in {}", dir.display()))?;
    }
    std::fs::write(dir.join("done"), b"")
        .with_context(|| format!("writing the corpus in {}", dir.display()))
}

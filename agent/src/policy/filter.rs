//! Noise the customer decides to leave out: file opens by path glob (PHI paths always kept) and
//! commands by executable path glob. Every event left out is counted under the rule that left
//! it out.
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::{CommandFilterConfig, FileFilterConfig};

/// A list of globs, each keeping its text as the rule name.
#[derive(Clone, Debug)]
pub struct Globs {
    set: GlobSet,
    names: Vec<String>,
}

impl Globs {
    pub fn new(key: &str, patterns: &[String]) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = Glob::new(pattern).map_err(|err| format!("{key}: {pattern:?}: {err}"))?;
            builder.add(glob);
        }
        Ok(Self {
            set: builder.build().map_err(|err| format!("{key}: {err}"))?,
            names: patterns.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The first pattern `path` matches.
    pub fn first_match(&self, path: &[u8]) -> Option<&str> {
        let path = String::from_utf8_lossy(path);
        self.set
            .matches(path.as_ref())
            .into_iter()
            .min()
            .map(|index| self.names[index].as_str())
    }
}

/// What happens to an open.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenVerdict {
    Keep,
    /// Under a PHI path: kept, every time (never folded into a repeat count).
    KeepPhi,
    /// Left out by this rule.
    Drop(String),
}

#[derive(Clone, Debug)]
pub struct FileFilter {
    include: Globs,
    exclude: Globs,
    phi: Globs,
    pub dedup_read_only: bool,
}

impl FileFilter {
    pub fn new(config: &FileFilterConfig) -> Result<Self, String> {
        Ok(Self {
            include: Globs::new("files.include", &config.include)?,
            exclude: Globs::new("files.exclude", &config.exclude)?,
            phi: Globs::new("files.phi_paths", &config.phi_paths)?,
            dedup_read_only: config.dedup_read_only,
        })
    }

    pub fn judge(&self, path: &[u8]) -> OpenVerdict {
        if self.phi.first_match(path).is_some() {
            return OpenVerdict::KeepPhi;
        }
        if let Some(rule) = self.exclude.first_match(path) {
            return OpenVerdict::Drop(format!("files.exclude {rule}"));
        }
        if !self.include.is_empty() && self.include.first_match(path).is_none() {
            return OpenVerdict::Drop("files.include".into());
        }
        OpenVerdict::Keep
    }
}

#[derive(Clone, Debug)]
pub struct CommandFilter {
    exclude: Globs,
}

impl CommandFilter {
    pub fn new(config: &CommandFilterConfig) -> Result<Self, String> {
        Ok(Self {
            exclude: Globs::new("commands.exclude", &config.exclude)?,
        })
    }

    /// The rule that leaves out commands running `filename`, if any.
    pub fn excluded(&self, filename: &[u8]) -> Option<String> {
        self.exclude
            .first_match(filename)
            .map(|rule| format!("commands.exclude {rule}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_paths_win_then_exclusions_then_the_include_list() {
        let defaults = FileFilterConfig::default();
        let filter = FileFilter::new(&FileFilterConfig {
            phi_paths: vec!["/srv/phi/**".into()],
            ..defaults.clone()
        })
        .expect("filter");
        assert_eq!(filter.judge(b"/srv/phi/a/b.csv"), OpenVerdict::KeepPhi);
        assert_eq!(filter.judge(b"/etc/hostname"), OpenVerdict::Keep);
        assert_eq!(
            filter.judge(b"/proc/self/status"),
            OpenVerdict::Drop("files.exclude /proc/**".into())
        );
        assert!(matches!(
            filter.judge(b"/usr/lib/x86_64-linux-gnu/libc.so.6"),
            OpenVerdict::Drop(_)
        ));
        assert!(matches!(
            filter.judge(b"/etc/ld.so.cache"),
            OpenVerdict::Drop(_)
        ));
        let only_etc = FileFilter::new(&FileFilterConfig {
            include: vec!["/etc/**".into()],
            ..defaults
        })
        .expect("filter");
        assert_eq!(only_etc.judge(b"/etc/passwd"), OpenVerdict::Keep);
        assert_eq!(
            only_etc.judge(b"/tmp/x"),
            OpenVerdict::Drop("files.include".into())
        );
        let err = FileFilter::new(&FileFilterConfig {
            exclude: vec!["/a/[".into()],
            ..FileFilterConfig::default()
        })
        .expect_err("bad glob");
        assert!(err.starts_with("files.exclude: \"/a/[\""), "{err}");
    }
}

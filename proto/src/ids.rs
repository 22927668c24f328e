//! Small types for the ideas events are made of: ids of processes, users, sessions and boots,
//! terminals and sequence numbers.
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A process or thread id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Pid(pub u32);

/// A user id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Uid(pub u32);

/// A group id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Gid(pub u32);

/// The kernel's audit session id: set when a login starts (pam_loginuid writes
/// /proc/self/loginuid), inherited by every process of the login, kept across sudo and su.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuditSessionId(pub u32);

impl AuditSessionId {
    /// The kernel's "no session" value.
    pub const UNSET: AuditSessionId = AuditSessionId(u32::MAX);
}

impl fmt::Display for AuditSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one boot of a host (/proc/sys/kernel/random/boot_id); audit session ids restart
/// at every boot, so a session is (boot id, audit session id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BootId(pub String);

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Position of an event in its session's stream, from 1, assigned by the agent. Consecutive
/// unless a gap record says why not.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

/// A terminal device, in the kernel's dev_t encoding (major << 20 | minor). Written
/// `"major:minor"` in human-readable formats; [`Tty::name`] gives `pts/N`, `ttyN`, `ttySN`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tty(pub u32);

impl Tty {
    pub fn major(self) -> u32 {
        self.0 >> 20
    }

    pub fn minor(self) -> u32 {
        self.0 & 0xfffff
    }

    pub fn from_parts(major: u32, minor: u32) -> Self {
        Self((major << 20) | (minor & 0xfffff))
    }

    /// A pseudo-terminal's slave side (/dev/pts/N), as ssh and terminal emulators give: not
    /// a console (a VT or a serial line).
    pub fn is_pty(self) -> bool {
        (136..=143).contains(&self.major())
    }

    /// The device's name under /dev, where the numbering is standard.
    pub fn name(self) -> String {
        let (major, minor) = (self.major(), self.minor());
        match major {
            _ if self.is_pty() => format!("pts/{}", (major - 136) * 256 + minor),
            4 if minor < 64 => format!("tty{minor}"),
            4 => format!("ttyS{}", minor - 64),
            5 if minor == 0 => "tty".to_owned(),
            5 if minor == 1 => "console".to_owned(),
            _ => format!("{major}:{minor}"),
        }
    }
}

impl fmt::Display for Tty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major(), self.minor())
    }
}

impl fmt::Debug for Tty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tty({self})")
    }
}

impl std::str::FromStr for Tty {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (major, minor) = s
            .split_once(':')
            .ok_or_else(|| format!("terminal {s:?} is not major:minor"))?;
        let major = major.parse().map_err(|_| format!("bad major in {s:?}"))?;
        let minor = minor.parse().map_err(|_| format!("bad minor in {s:?}"))?;
        Ok(Self::from_parts(major, minor))
    }
}

impl Serialize for Tty {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Tty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Tty;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a terminal as \"major:minor\" or a dev_t")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(Tty)
                    .map_err(|_| E::custom("dev_t out of range"))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_names() {
        assert_eq!(Tty::from_parts(136, 3).name(), "pts/3");
        assert_eq!(Tty::from_parts(137, 1).name(), "pts/257");
        assert_eq!(Tty::from_parts(4, 1).name(), "tty1");
        assert_eq!(Tty::from_parts(4, 64).name(), "ttyS0");
        assert_eq!(
            serde_json::to_string(&Tty::from_parts(136, 3)).unwrap(),
            "\"136:3\""
        );
        assert_eq!(
            serde_json::from_str::<Tty>("\"136:3\"").unwrap(),
            Tty::from_parts(136, 3)
        );
    }
}

//! [`SessionKey`]: which session an event belongs to. Most events belong to an audit login
//! session (pam_loginuid's session id). With `[capture] scope = "login_sessions_and_terminals"`
//! a task outside any login session but with a controlling terminal belongs to that terminal's
//! session. Both travel as one `u32` id, the terminal's told apart by the high bit (audit
//! session ids never reach it); this type is the only place that knows the encoding.
use custos_agent_abi::{AUDIT_UNSET, TaskIds};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey(u32);

impl SessionKey {
    /// Set in the id of a terminal's session; the rest is the terminal's dev_t (its low bits).
    const TERMINAL: u32 = 1 << 31;

    /// The session of `task`: its audit session, or else its terminal's.
    pub fn of(task: &TaskIds) -> Self {
        if task.sessionid != AUDIT_UNSET {
            Self(task.sessionid)
        } else {
            Self(Self::TERMINAL | (task.tty & !Self::TERMINAL))
        }
    }

    /// The key of a session id as recordings carry it.
    pub fn from_id(id: u32) -> Self {
        Self(id)
    }

    /// The id recordings carry (`AuditSessionId`).
    pub fn id(self) -> u32 {
        self.0
    }

    /// A terminal's session rather than an audit login session: /proc cannot tell which
    /// processes belong to it.
    pub fn is_terminal(self) -> bool {
        self.0 & Self::TERMINAL != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_sessions_and_terminals_get_distinct_keys() {
        let login = TaskIds {
            sessionid: 42,
            tty: 0x8801,
            ..TaskIds::default()
        };
        let key = SessionKey::of(&login);
        assert_eq!(key.id(), 42);
        assert!(!key.is_terminal());
        let terminal_only = TaskIds {
            sessionid: AUDIT_UNSET,
            tty: 0x8801,
            ..TaskIds::default()
        };
        let key = SessionKey::of(&terminal_only);
        assert!(key.is_terminal());
        assert_eq!(key.id() & 0xffff, 0x8801);
        assert_ne!(key, SessionKey::from_id(0x8801));
        assert_eq!(SessionKey::from_id(key.id()), key);
    }
}

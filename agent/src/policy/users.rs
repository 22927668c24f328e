//! Who is recorded: the user rules, include and exclude lists by user and group (`[scope]`,
//! like SSSD's session recording scope). A login uid's decision is made once (for every local
//! user when the policy is loaded, for others at their first session) and pushed into the
//! kernel's excluded uids, so that sessions not recorded cost nothing there.
use std::collections::HashMap;

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::RecordedUsersConfig;

/// The rules, and decisions made so far.
#[derive(Clone, Debug, Default)]
pub struct UserRules {
    config: RecordedUsersConfig,
    decided: HashMap<u32, bool>,
}

impl UserRules {
    pub fn new(config: RecordedUsersConfig) -> Self {
        Self {
            config,
            decided: HashMap::new(),
        }
    }

    /// Whether any rule narrows the scope (otherwise everyone is recorded and nothing needs
    /// deciding).
    pub fn narrows(&self) -> bool {
        let c = &self.config;
        !(c.users.is_empty()
            && c.groups.is_empty()
            && c.exclude_users.is_empty()
            && c.exclude_groups.is_empty())
    }

    /// Whether sessions of login uid `uid` are recorded. A uid that names no user is recorded:
    /// when in doubt, Custos records.
    pub fn records(&mut self, uid: u32) -> bool {
        if !self.narrows() {
            return true;
        }
        if let Some(decision) = self.decided.get(&uid) {
            return *decision;
        }
        let decision = match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(user)) => self.decide(&user.name, &groups_of(&user)),
            _ => true,
        };
        self.decided.insert(uid, decision);
        decision
    }

    /// The rule itself: excluded by user or group; else included when there is no include
    /// list, or the user or one of the groups is on it.
    pub fn decide(&self, user: &str, groups: &[String]) -> bool {
        let c = &self.config;
        let listed = |names: &[String], name: &str| names.iter().any(|n| n == name);
        if listed(&c.exclude_users, user) || groups.iter().any(|g| listed(&c.exclude_groups, g)) {
            return false;
        }
        if c.users.is_empty() && c.groups.is_empty() {
            return true;
        }
        listed(&c.users, user) || groups.iter().any(|g| listed(&c.groups, g))
    }

    /// Every local user's decision, for the kernel's filter at start: the uids out of scope.
    pub fn excluded_local_uids(&mut self) -> Vec<u32> {
        if !self.narrows() {
            return Vec::new();
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        passwd
            .lines()
            .filter_map(|line| line.split(':').nth(2)?.parse::<u32>().ok())
            .filter(|uid| !self.records(*uid))
            .collect()
    }
}

/// The names of the user's groups (primary and supplementary).
fn groups_of(user: &User) -> Vec<String> {
    let Ok(name) = std::ffi::CString::new(user.name.as_str()) else {
        return Vec::new();
    };
    let gids = nix::unistd::getgrouplist(&name, user.gid).unwrap_or_else(|_| vec![user.gid]);
    gids.into_iter()
        .filter_map(|gid: Gid| Group::from_gid(gid).ok().flatten().map(|g| g.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(
        users: &[&str],
        groups: &[&str],
        exclude_users: &[&str],
        exclude_groups: &[&str],
    ) -> UserRules {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
        UserRules::new(RecordedUsersConfig {
            users: names(users),
            groups: names(groups),
            exclude_users: names(exclude_users),
            exclude_groups: names(exclude_groups),
        })
    }

    #[test]
    fn exclusions_win_and_include_lists_narrow() {
        let everyone = rules(&[], &[], &[], &[]);
        assert!(everyone.decide("alice", &[]));
        let no_robots = rules(&[], &[], &["backup"], &["robots"]);
        assert!(no_robots.decide("alice", &["staff".into()]));
        assert!(!no_robots.decide("backup", &[]));
        assert!(!no_robots.decide("ci", &["robots".into()]));
        let admins = rules(&["root"], &["wheel"], &["svc"], &[]);
        assert!(admins.decide("root", &[]));
        assert!(admins.decide("dana", &["wheel".into()]));
        assert!(!admins.decide("alice", &["staff".into()]));
        assert!(!admins.decide("svc", &["wheel".into()]));
    }
}

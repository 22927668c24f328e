//! User names for uids, through NSS (so LDAP and SSSD users resolve), cached.
use std::collections::HashMap;

#[derive(Default)]
pub struct UserNames {
    cache: HashMap<u32, Option<String>>,
}

/// Bound on cached uids; the cache is cleared when it is reached.
const MAX_CACHED: usize = 4096;

impl UserNames {
    pub fn name(&mut self, uid: u32) -> Option<String> {
        if uid == u32::MAX {
            return None;
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|user| user.name)
            })
            .clone()
    }
}

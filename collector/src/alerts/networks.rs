//! Networks in alert rules: `[alerts] known_networks` (the networks logins are expected from),
//! and the CIDR lists of a rule's `remote_in` / `remote_not_in`, where `known` stands for the
//! known networks.
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// A list of networks (CIDR blocks; a bare address is a /32 or /128).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Networks(Vec<IpNet>);

impl Networks {
    /// Parses `entries`; `known` (when given) is what the word `known` stands for. Errors name
    /// `key` and the entry.
    pub fn parse(key: &str, entries: &[String], known: Option<&Networks>) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in entries {
            let entry = entry.trim();
            if entry == "known" {
                let known = known.ok_or_else(|| format!("{key}: \"known\" is not allowed here"))?;
                if known.0.is_empty() {
                    return Err(format!(
                        "{key}: \"known\" needs alerts.known_networks to list networks"
                    ));
                }
                nets.extend(known.0.iter().copied());
                continue;
            }
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{key}: {entry:?} is not a network (CIDR) or an address"))?;
            nets.push(net);
        }
        Ok(Self(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `address` is in one of the networks (an IPv4-mapped IPv6 address counts as its
    /// IPv4 address).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&address))
    }
}

/// The address of a session's remote end as recorded (`10.1.2.3:51234`, `[fe80::1]:22`, or a
/// bare address).
pub fn remote_address(remote: &str) -> Option<IpAddr> {
    remote
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| remote.parse::<IpAddr>())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| (*e).to_owned()).collect()
    }

    #[test]
    fn networks_addresses_and_the_known_word() {
        let known = Networks::parse("k", &list(&["10.0.0.0/8", "192.168.1.7"]), None).unwrap();
        assert!(known.contains("10.200.3.4".parse().unwrap()));
        assert!(known.contains("192.168.1.7".parse().unwrap()));
        assert!(!known.contains("192.168.1.8".parse().unwrap()));
        assert!(known.contains("::ffff:10.1.1.1".parse().unwrap()));
        let rule = Networks::parse("r", &list(&["known", "2001:db8::/32"]), Some(&known)).unwrap();
        assert!(rule.contains("10.9.9.9".parse().unwrap()));
        assert!(rule.contains("2001:db8::5".parse().unwrap()));
        let err = Networks::parse("k", &list(&["known"]), None).unwrap_err();
        assert!(err.contains("not allowed"), "{err}");
        let err = Networks::parse("r", &list(&["known"]), Some(&Networks::default())).unwrap_err();
        assert!(err.contains("alerts.known_networks"), "{err}");
        let err = Networks::parse("r", &list(&["10.0.0.0/33"]), None).unwrap_err();
        assert!(err.contains("\"10.0.0.0/33\" is not a network"), "{err}");
    }

    #[test]
    fn remote_addresses_as_recorded() {
        assert_eq!(
            remote_address("10.1.2.3:51234"),
            Some("10.1.2.3".parse().unwrap())
        );
        assert_eq!(
            remote_address("[fe80::1]:22"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(
            remote_address("10.1.2.3"),
            Some("10.1.2.3".parse().unwrap())
        );
        assert_eq!(remote_address("tty1"), None);
    }
}

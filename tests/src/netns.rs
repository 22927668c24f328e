//! Two network namespaces joined by a veth pair, with random packet loss on both ends
//! (nftables `numgen random`): the network between an agent and its collector, on one machine.
//! The kernel has no netem; delay comes from `custos-testkit udp-relay`.
use std::process::Command;

/// Address of the collector's end.
pub const COLLECTOR_IP: &str = "10.77.0.1";
/// Address of the agent's end.
pub const AGENT_IP: &str = "10.77.0.2";

pub struct Network {
    pub agent_ns: String,
    pub collector_ns: String,
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|err| panic!("running {args:?}: {err}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

fn nft(ns: &str, interface: &str, loss_one_in: u32) {
    let rules = format!(
        "table inet custos_test {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname \"{interface}\" numgen random mod {loss_one_in} == 0 drop\n  }}\n}}\n"
    );
    let path = std::env::temp_dir().join(format!("custos-nft-{ns}.conf"));
    std::fs::write(&path, rules).expect("writing nft rules");
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "-f",
        &path.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(path);
}

impl Network {
    /// Drops one packet in `loss_one_in` arriving at either end.
    pub fn lossy(loss_one_in: u32) -> Network {
        let id = std::process::id();
        let network = Network {
            agent_ns: format!("custos-a{id}"),
            collector_ns: format!("custos-c{id}"),
        };
        let (a, c) = (network.agent_ns.as_str(), network.collector_ns.as_str());
        let (va, vc) = (format!("va{id}"), format!("vc{id}"));
        run(&["ip", "netns", "add", a]);
        run(&["ip", "netns", "add", c]);
        run(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vc,
        ]);
        run(&["ip", "link", "set", &va, "netns", a]);
        run(&["ip", "link", "set", &vc, "netns", c]);
        run(&[
            "ip",
            "-n",
            a,
            "addr",
            "add",
            &format!("{AGENT_IP}/24"),
            "dev",
            &va,
        ]);
        run(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            &format!("{COLLECTOR_IP}/24"),
            "dev",
            &vc,
        ]);
        for (ns, dev) in [(a, va.as_str()), (c, vc.as_str())] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            nft(ns, dev, loss_one_in);
        }
        network
    }

    /// `ip netns exec NS program`.
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in [&self.agent_ns, &self.collector_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

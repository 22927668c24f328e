//! `cargo xtask run`: the main job on this machine.
use std::process::Command;

use anyhow::bail;

use crate::{cmd, setup};

pub fn run() -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("recording this host loads eBPF programs: run as root");
    }
    setup::setup()?;
    cmd::run(cmd::cargo().args(["build", "--release", "--bins"]))?;
    let agent = cmd::workspace_root().join("target/release/custos-agent");
    println!(
        "run: recording login sessions on this host; events print below as JSON lines.\n\
         run: open a session in another terminal (ssh localhost, or `su - USER`), Ctrl-C stops."
    );
    cmd::run(Command::new(agent).arg("--stdout"))
}

//! Builds the eBPF programs (crate `custos-agent-ebpf`) with the nightly toolchain and
//! bpf-linker, so that `cargo build` of the agent embeds them. `cargo xtask setup` installs both.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == "custos-agent-ebpf")
        .ok_or_else(|| anyhow!("custos-agent-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("custos-agent-ebpf has no manifest directory"))?;
    println!("cargo:rerun-if-changed=../agent-abi/src");
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

//! `cargo xtask`: Custos's developer tasks.
//!
//! - `setup`: the eBPF toolchain (nightly rust-src, bpf-linker built against the nightly's own
//!   LLVM), tracefs and bpffs mounts, and the kernel's prerequisites. Idempotent; every other
//!   task runs it first.
//! - `run`: the main job on this machine.
//! - `test`: the whole suite, as root, on the real kernel.
//! - `lint`: rustfmt and clippy, as CI runs them.
mod cmd;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Custos developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain and check this kernel (safe to run every time).
    Setup,
    /// Build release binaries and record this host.
    Run,
    /// Run the whole test suite (needs root: it loads eBPF programs and starts sshd).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Check formatting and clippy lints (the eBPF crate included).
    Lint,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::setup(),
        Task::Run => run::run(),
        Task::Test { filter } => test::test(filter.as_deref()),
        Task::Lint => test::lint(),
    }
}

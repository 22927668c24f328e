//! `cargo xtask`: Custos's developer tasks.
//!
//! - `setup`: the eBPF toolchain (nightly rust-src, bpf-linker built against the nightly's own
//!   LLVM), tracefs and bpffs mounts, and the kernel's prerequisites. Idempotent; every other
//!   task runs it first.
//! - `run`: the main job on this machine.
//! - `login`: a recorded login session (a login shell in a new audit session), no sshd needed.
//! - `test`: the whole suite, as root, on the real kernel.
//! - `package`: .deb and .rpm packages of the agent and the collector.
//! - `vm-test`: the capture scenario on Debian's kernels under qemu, with each hook backend.
//! - `bench`: every benchmark, written into BENCHMARKS.md.
//! - `lint`: rustfmt and clippy, as CI runs them.
//! - `fuzz`: each fuzz target of fuzz/ for a bounded time, as CI runs them.
mod bench;
mod cmd;
mod fuzz;
mod login;
mod package;
mod pkgtest;
mod run;
mod setup;
mod test;
mod vm;

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
    /// Build release binaries, start a local collector and an agent recording this host.
    Run(run::RunOptions),
    /// Open a recorded login session: a login shell as a user, in a new audit session (as root).
    Login(login::LoginOptions),
    /// Run the whole test suite (needs root: it loads eBPF programs and starts sshd).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
        /// Only the package tests (build the packages, install them in a Debian root).
        #[arg(long, conflicts_with = "filter")]
        packages: bool,
    },
    /// Build the .deb and .rpm packages into target/packages/.
    Package,
    /// Run the capture scenario on Debian's 6.1 and 6.12 kernels under qemu (each hook
    /// backend) and on this host.
    VmTest,
    /// Run the benchmarks and write BENCHMARKS.md (needs root).
    Bench(bench::BenchOptions),
    /// Check formatting and clippy lints (the eBPF crate included).
    Lint,
    /// Run each fuzz target (cargo-fuzz, nightly) for a bounded time on its corpus.
    Fuzz(fuzz::FuzzOptions),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::setup(),
        Task::Run(options) => run::run(options),
        Task::Login(options) => match login::login(options)? {
            0 => Ok(()),
            code => std::process::exit(code),
        },
        Task::Test { packages: true, .. } => pkgtest::test_packages(),
        Task::Test { filter, .. } => test::test(filter.as_deref()),
        Task::Package => package::package().map(|_| ()),
        Task::VmTest => vm::vm_test(),
        Task::Bench(options) => bench::bench(options),
        Task::Lint => test::lint(),
        Task::Fuzz(options) => fuzz::fuzz(options),
    }
}

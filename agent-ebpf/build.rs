//! Rebuild the programs when bpf-linker changes (`cargo xtask setup` installs it), and keep the
//! global helper functions global: the verifier checks a global function once, not once per
//! call, which is what keeps the programs' loops cheap to verify.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup` to install it"
        ),
    }
    println!("cargo:rustc-link-arg-bins=--export=custos_send_piece,custos_walk_path");
}

//! Writes the seed corpus of each fuzz target: valid encoded values of every kind it decodes
//! (`fuzz/corpus/TARGET/seed-N`). Run from the repository's root:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds [DIR]` (DIR: fuzz/corpus).
use std::{fs, path::PathBuf};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or("fuzz/corpus".into()));
    let targets = [
        ("frame", custos_fuzz::sample_frames()),
        ("batch", custos_fuzz::sample_event_arrays()),
        ("spool", custos_fuzz::sample_segments()),
        ("chunk", custos_fuzz::sample_recordings()),
    ];
    for (target, seeds) in targets {
        let target_dir = dir.join(target);
        fs::create_dir_all(&target_dir)?;
        for (i, seed) in seeds.iter().enumerate() {
            fs::write(target_dir.join(format!("seed-{i}")), seed)?;
        }
        println!("{}: {} seeds", target_dir.display(), seeds.len());
    }
    Ok(())
}

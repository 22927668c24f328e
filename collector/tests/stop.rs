//! The collector stops on SIGTERM, promptly and cleanly: every holder of a store handle (ingest,
//! the API, retention) lets go, so that the store writer finishes and the process exits 0.
//! No kernel, no agent: the collector alone on a fresh store.
// An integration test uses the binary, not the library's dependencies.
#![allow(unused_crate_dependencies)]
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_custos-collector");

fn run(args: &[&str]) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("running the collector");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(dir: &Path) -> std::path::PathBuf {
    let d = dir.display();
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "[ingest]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [tls]\nca = \"{d}/pki/ca.pem\"\ncertificate = \"{d}/pki/collector.pem\"\n\
             key = \"{d}/pki/collector.key\"\ncrl = \"{d}/pki/crl.pem\"\n\
             [store]\ndir = \"{d}/store\"\nkey_file = \"{d}/store.key\"\nseal_key = \"{d}/pki/seal.key\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("writing the configuration");
    path
}

#[test]
fn sigterm_stops_the_collector_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    run(&[
        "pki",
        "init",
        "--dir",
        pki.to_str().unwrap(),
        "--name",
        "localhost",
    ]);
    let key = dir.path().join("store.key");
    run(&["store", "keygen", "--key-file", key.to_str().unwrap()]);
    let mut collector = Command::new(BIN)
        .args(["--config", config(dir.path()).to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the collector");
    let (tx, lines) = mpsc::channel();
    for pipe in [
        Box::new(collector.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(collector.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log
        .iter()
        .any(|l: &String| l.contains("collector listening"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = collector.kill();
                panic!("the collector did not start: {log:#?}");
            }
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(collector.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = collector.try_wait().expect("waiting") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = collector.kill();
            log.extend(lines.try_iter());
            panic!("the collector did not stop within 10 s of SIGTERM: {log:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

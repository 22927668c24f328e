//! Taking access away: `custos-collector pki revoke` and `pki issue --replace` write the CA's
//! revocation list; the running collector picks it up by itself, refuses the certificate in
//! new handshakes (QUIC and HTTPS) and cuts off connections already open with it within 5 s.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use custos_proto::wire;
use custos_tests::{
    bin,
    deployment::{Deployment, collector_command},
    free_udp_address, https, quic,
};

/// The bound the issue sets for cutting off an open connection.
const CUT_OFF: Duration = Duration::from_secs(5);

fn pki(deployment: &Deployment, args: &[&str]) -> String {
    let dir = deployment.pki().to_string_lossy().into_owned();
    let mut all = vec!["pki"];
    all.extend_from_slice(args);
    all.extend(["--dir", &dir]);
    collector_command(&all)
}

fn agent_identity(deployment: &Deployment, host: &str) -> (PathBuf, PathBuf) {
    (
        deployment.pki().join(format!("issued/agent-{host}.pem")),
        deployment.pki().join(format!("issued/agent-{host}.key")),
    )
}

fn pair(identity: &(PathBuf, PathBuf)) -> (&std::path::Path, &std::path::Path) {
    (identity.0.as_path(), identity.1.as_path())
}

#[test]
fn a_revoked_auditor_and_agent_are_cut_off_within_five_seconds_and_refused_after() {
    let deployment = Deployment::new(&[]);
    let ca = deployment.pki().join("ca.pem");
    let dana = deployment.auditor("dana", "auditor");
    let erin = deployment.auditor("erin", "auditor");
    let agent = agent_identity(&deployment, &deployment.host);
    pki(&deployment, &["issue", "agent", "other-host"]);
    let other_agent = agent_identity(&deployment, "other-host");
    let listen = free_udp_address();
    let collector = deployment.start_collector(&listen, None);
    let address = listen.parse().expect("address");
    let port = deployment.api_port;

    let mut dana_open = https::Held::open(port, &ca, pair(&dana)).expect("dana connects");
    let mut erin_open = https::Held::open(port, &ca, pair(&erin)).expect("erin connects");
    let agent_open = quic::Held::open(address, &ca, pair(&agent)).expect("the agent connects");
    let other_open =
        quic::Held::open(address, &ca, pair(&other_agent)).expect("the other agent connects");

    let out = pki(
        &deployment,
        &["revoke", "dana", "--reason", "affiliation-changed"],
    );
    assert!(out.contains("revoked auditor dana"), "{out}");
    let out = pki(
        &deployment,
        &[
            "revoke",
            &deployment.host,
            "--role",
            "agent",
            "--reason",
            "key-compromise",
        ],
    );
    assert!(out.contains("revoked agent"), "{out}");
    let revoked = Instant::now();

    // Both open connections end, the agent's with the revocation close code; no restart, no
    // signal.
    let deadline = revoked + CUT_OFF;
    match agent_open.closed_within(deadline.saturating_duration_since(Instant::now())) {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => assert_eq!(
            close.error_code,
            wire::CLOSE_CERTIFICATE_REVOKED.into(),
            "{close:?}"
        ),
        other => panic!("the revoked agent's connection, 5 s after revoking: {other:?}"),
    }
    assert!(
        dana_open.closed_within(deadline.saturating_duration_since(Instant::now())),
        "the revoked auditor's connection is still open 5 s after revoking"
    );
    collector
        .daemon
        .wait_log(&["certificate revoked", "API connection aborted"], CUT_OFF);

    // Refused on reconnect, in the handshake.
    let err = https::get(port, &ca, pair(&dana), "/v1/agents").expect_err("dana refused");
    assert!(!err.starts_with("HTTP/"), "{err}");
    let err = quic::handshake(address, &ca, Some(pair(&agent))).expect_err("agent refused");
    assert!(!err.is_empty());
    collector.daemon.wait_log(&["refused", "Revoked"], CUT_OFF);

    // Everyone else is untouched: their open connections still work, new ones are accepted.
    assert_eq!(
        erin_open.get("/v1/sessions").expect("erin's connection"),
        "HTTP/1.1 200 OK"
    );
    assert!(
        other_open.closed_within(Duration::ZERO).is_none(),
        "the other agent's connection was closed"
    );
    assert_eq!(
        https::get(port, &ca, pair(&erin), "/v1/sessions").expect("erin"),
        "HTTP/1.1 200 OK"
    );
    quic::handshake(address, &ca, Some(pair(&other_agent))).expect("the other agent");
}

#[test]
fn the_certificate_replaced_by_issue_replace_is_refused() {
    let deployment = Deployment::new(&[]);
    let ca = deployment.pki().join("ca.pem");
    let dana = deployment.auditor("dana", "admin");
    let old = (deployment.path("old.pem"), deployment.path("old.key"));
    std::fs::copy(&dana.0, &old.0).expect("copy");
    std::fs::copy(&dana.1, &old.1).expect("copy");
    let collector = deployment.start_collector(&free_udp_address(), None);
    let port = deployment.api_port;
    assert_eq!(
        https::get(port, &ca, pair(&old), "/v1/agents").expect("before"),
        "HTTP/1.1 200 OK"
    );

    pki(
        &deployment,
        &["issue", "auditor", "dana", "--role", "admin", "--replace"],
    );
    collector
        .daemon
        .wait_log(&["revocation list changed: reloaded"], CUT_OFF);
    let err = https::get(port, &ca, pair(&old), "/v1/agents").expect_err("old refused");
    assert!(!err.starts_with("HTTP/"), "{err}");
    assert_eq!(
        https::get(port, &ca, pair(&dana), "/v1/agents").expect("the new certificate"),
        "HTTP/1.1 200 OK"
    );
    let list = pki(&deployment, &["list"]);
    let dana_states: Vec<&str> = list
        .lines()
        .filter(|line| line.contains(" dana "))
        .map(|line| line.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(dana_states, ["revoked", "issued"], "{list}");
    assert!(list.contains("superseded"), "{list}");
}

#[test]
fn pki_list_shows_issued_expired_and_revoked_certificates() {
    let deployment = Deployment::new(&[]);
    pki(&deployment, &["issue", "auditor", "fred", "--days", "0"]);
    pki(&deployment, &["issue", "auditor", "gina"]);
    pki(&deployment, &["issue", "auditor", "hank"]);
    pki(
        &deployment,
        &["revoke", "hank", "--reason", "privilege-withdrawn"],
    );
    let list = pki(&deployment, &["list"]);
    let state = |name: &str| {
        list.lines()
            .find(|line| line.split_whitespace().nth(2) == Some(name))
            .and_then(|line| line.split_whitespace().next())
            .unwrap_or_else(|| panic!("{name} not listed:\n{list}"))
            .to_owned()
    };
    assert_eq!(state("fred"), "expired", "{list}");
    assert_eq!(state("gina"), "issued", "{list}");
    assert_eq!(state("hank"), "revoked", "{list}");
    assert_eq!(state(&deployment.host), "issued", "{list}");
    assert!(list.contains("privilege-withdrawn"), "{list}");

    // Nothing of that name: a clear error naming it.
    let output = Command::new(bin("custos-collector"))
        .args([
            "pki",
            "revoke",
            "nobody",
            "--reason",
            "unspecified",
            "--dir",
        ])
        .arg(deployment.pki())
        .output()
        .expect("running custos-collector");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("\"nobody\"") && stderr.contains("pki list"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_revocation_list_is_named_and_the_previous_one_stays_in_force() {
    let deployment = Deployment::new(&[]);
    let ca = deployment.pki().join("ca.pem");
    let crl = deployment.pki().join("crl.pem");
    let dana = deployment.auditor("dana", "auditor");
    let erin = deployment.auditor("erin", "auditor");
    let collector = deployment.start_collector(&free_udp_address(), None);
    let port = deployment.api_port;
    pki(
        &deployment,
        &["revoke", "dana", "--reason", "key-compromise"],
    );
    collector
        .daemon
        .wait_log(&["revocation list changed: reloaded"], CUT_OFF);
    assert!(https::get(port, &ca, pair(&dana), "/v1/agents").is_err());

    // Damaged in place (a bad edit, a truncated copy): logged naming the file, and the list in
    // force stays: dana still refused, erin still served.
    let from = collector.daemon.log_len();
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n",
    )
    .expect("damaging the list");
    collector.daemon.wait_log_from(
        from,
        &["cannot be used", "crl.pem", "revocation list"],
        CUT_OFF,
    );
    let from = collector.daemon.log_len();
    collector.daemon.signal(libc::SIGHUP);
    collector
        .daemon
        .wait_log_from(from, &["reload failed", "crl.pem"], CUT_OFF);
    assert!(https::get(port, &ca, pair(&dana), "/v1/agents").is_err());
    assert_eq!(
        https::get(port, &ca, pair(&erin), "/v1/sessions").expect("erin"),
        "HTTP/1.1 200 OK"
    );

    // At start, the same list is refused in one line naming it.
    let config = deployment.collector_config(&free_udp_address(), "");
    let output = Command::new(bin("custos-collector"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .expect("running custos-collector");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&crl.display().to_string()) && stderr.contains("revocation list"),
        "{stderr}"
    );
    drop(collector);
}

//! `custos`: the auditor's command line. A thin HTTPS client of the collector's query API; it
//! never opens the store itself, and every request it makes is in the collector's access log.
mod client;
mod escape;
mod fold;
mod offline;
mod render;
mod replay;
mod sanitize;
mod settings;
mod timeexpr;

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use custos_proto::{
    Event,
    api::{
        AccessLog, Agents, Hold, Holds, NewHold, PurgeReport, RetentionInfo, SearchResults,
        SessionDetail, SessionList, SessionSummary, VerifyLine, VerifyReport, path,
    },
};

use crate::{
    client::{Client, StreamLines, encode},
    settings::Given,
};

/// Find, show, replay, export and verify recorded login sessions.
#[derive(Parser, Debug)]
#[command(name = "custos", version, about)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Connection {
    /// The collector's API, https://HOST:7444 (or CUSTOS_COLLECTOR, or cli.toml).
    #[arg(long, global = true)]
    collector: Option<String>,
    /// The deployment CA certificate (or CUSTOS_CA).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Your auditor certificate (or CUSTOS_CERT).
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Its key (or CUSTOS_KEY).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// A cli.toml with `collector`, `ca`, `certificate`, `key`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct Window {
    /// Only sessions of this login user.
    #[arg(long)]
    user: Option<String>,
    /// Only sessions on this host.
    #[arg(long)]
    host: Option<String>,
    /// Sessions active at or after this time: RFC 3339, a date, or "2 hours ago".
    #[arg(long)]
    since: Option<String>,
    /// Sessions active at or before this time.
    #[arg(long)]
    until: Option<String>,
    /// At most this many sessions.
    #[arg(long, default_value_t = 200)]
    limit: usize,
}

impl Window {
    fn query(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut query = vec![("limit", self.limit.to_string())];
        if let Some(user) = &self.user {
            query.push(("user", user.clone()));
        }
        if let Some(host) = &self.host {
            query.push(("host", host.clone()));
        }
        for (name, value) in [("since", &self.since), ("until", &self.until)] {
            if let Some(text) = value {
                let time = timeexpr::parse(text).map_err(|e| anyhow::anyhow!("--{name}: {e}"))?;
                query.push((name, time.to_string()));
            }
        }
        Ok(query)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List recorded sessions.
    Sessions {
        #[command(flatten)]
        window: Window,
        #[arg(long)]
        json: bool,
    },
    /// A session's details and timeline: commands with arguments and exit codes, files opened,
    /// gaps, as a process tree.
    Show {
        id: String,
        /// List every file opened, also the routine opens (system libraries, locale, the
        /// loader's probes, O_PATH lookups) otherwise folded into one counted line per process.
        #[arg(long)]
        all_files: bool,
        #[arg(long)]
        json: bool,
    },
    /// Which sessions ran a command or touched a file.
    Search {
        /// A regular expression matched against command lines.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        command: Option<String>,
        /// A path prefix matched against files opened.
        #[arg(long)]
        file: Option<String>,
        #[command(flatten)]
        window: Window,
        #[arg(long)]
        json: bool,
    },
    /// Play a session in this terminal, with its original timing.
    Replay {
        id: String,
        /// Playback speed (2 is twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Start this far into the session ("90s", "5m").
        #[arg(long, value_parser = custos_proto::time::parse_duration)]
        from: Option<Duration>,
        /// Cut pauses longer than this ("2s").
        #[arg(long, value_parser = custos_proto::time::parse_duration)]
        max_wait: Option<Duration>,
    },
    /// Export a session: asciicast v2 (for asciinema) or JSON lines of every event (for a SIEM).
    Export {
        id: String,
        #[arg(long, value_enum)]
        format: Format,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check recordings' hash chains, seals and agent signatures, and the access log; with
    /// --all, also every agent's chain of batches across the store. With --offline DIR, check an
    /// export bundle or a store directory without the collector, with public material only.
    Verify {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[arg(long)]
        json: bool,
        /// A bundle (`custos-collector export-bundle`) or a store directory, checked from its
        /// files (never its index), without connecting to the collector.
        #[arg(long, conflicts_with_all = ["id", "all"])]
        offline: Option<PathBuf>,
        /// With --offline: the seal public key (default: the bundle's public/seal.pub). The CA
        /// certificate is --ca (default: the bundle's public/ca.pem).
        #[arg(long, requires = "offline")]
        seal_pub: Option<PathBuf>,
        /// With --offline: the store key file, to decrypt every chunk and check its events
        /// against its agent's signature too.
        #[arg(long, requires = "offline")]
        store_key: Option<PathBuf>,
    },
    /// Who read what, when (admin).
    AccessLog {
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Legal holds: sessions kept past retention (admin).
    Holds {
        #[command(subcommand)]
        command: Option<HoldCommand>,
    },
    /// Retention: how long recordings are kept, and purging expired ones now (admin).
    Retention {
        #[command(subcommand)]
        command: Option<RetentionCommand>,
    },
    /// Agents that reported, and when they last did (admin).
    Agents {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Asciicast,
    Jsonl,
}

#[derive(Subcommand, Debug)]
enum HoldCommand {
    List,
    /// Hold a session, or every session of a user.
    Add {
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        session: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        reason: String,
    },
    Remove {
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum RetentionCommand {
    Show,
    /// Remove expired recordings now (held ones stay).
    Purge,
}

fn main() -> ExitCode {
    if let Some(code) = custos_clidoc::generate_if_asked(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // The collector's messages may quote recorded text.
            let message = format!("{err:#}");
            let _ = writeln!(std::io::stderr(), "custos: {}", escape::text(&message));
            ExitCode::from(2)
        }
    }
}

fn client(connection: &Connection) -> anyhow::Result<Client> {
    let settings = settings::Settings::resolve(&Given {
        config: connection.config.clone(),
        collector: connection.collector.clone(),
        ca: connection.ca.clone(),
        certificate: connection.cert.clone(),
        key: connection.key.clone(),
    })?;
    Client::new(&settings)
}

/// Prints a verification report; exit status 1 when anything failed.
fn report_verify(report: &VerifyReport, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(report)?;
    } else {
        print!("{}", render::verify(&report.results, &report.agents));
        if let Some(log) = &report.access_log {
            print!("{}", render::access_log_check(log));
        }
    }
    let failed = report.results.iter().any(|r| !r.ok)
        || report.agents.iter().any(|a| !a.ok)
        || report.access_log.as_ref().is_some_and(|log| !log.ok);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", escape::json(&serde_json::to_string_pretty(value)?));
    Ok(())
}

/// Creates (or truncates) `path` readable by its owner only: an export holds what a session
/// showed and typed (PHI), whatever the umask; an existing file loses wider rights.
fn private_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private (0600)", path.display()))?;
    Ok(file)
}

/// A session's endpoint (`path::SESSION...`) for `id`, encoded.
fn session_path(template: &str, id: &str) -> String {
    path::with_id(template, &encode(id))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Verify {
        offline: Some(dir),
        seal_pub,
        store_key,
        json,
        ..
    } = &cli.command
    {
        let material = offline::Material {
            ca: cli.connection.ca.clone(),
            seal_pub: seal_pub.clone(),
            store_key: store_key.clone(),
        };
        let report = offline::verify(dir, &material)?;
        return report_verify(&report, *json);
    }
    let client = client(&cli.connection)?;
    match cli.command {
        Command::Sessions { window, json } => {
            let list: SessionList = client.get(path::SESSIONS, &window.query()?)?;
            if json {
                print_json(&list)?;
            } else {
                print!("{}", render::sessions(&list.sessions, list.truncated));
            }
        }
        Command::Show {
            id,
            all_files,
            json,
        } => {
            let detail: SessionDetail = client.get(&session_path(path::SESSION, &id), &[])?;
            if json {
                print_json(&detail)?;
            } else {
                print!("{}", render::detail(&detail, all_files));
            }
        }
        Command::Search {
            command,
            file,
            window,
            json,
        } => {
            let mut query = window.query()?;
            match (command, file) {
                (Some(command), _) => query.push(("command", command)),
                (None, Some(file)) => query.push(("file", file)),
                (None, None) => bail!("give --command or --file"),
            }
            let results: SearchResults = client.get(path::SEARCH, &query)?;
            if json {
                print_json(&results)?;
            } else {
                print!("{}", render::search(&results.hits, results.truncated));
            }
        }
        Command::Replay {
            id,
            speed,
            from,
            max_wait,
        } => {
            if !(speed > 0.0 && speed.is_finite()) {
                bail!("--speed must be more than 0");
            }
            let response = client.stream(&session_path(path::SESSION_EVENTS, &id), &[])?;
            let events = StreamLines::of(response, "replay")
                .map(|line| serde_json::from_str::<Event>(&line?).context("unreadable event"));
            let options = replay::Options {
                speed,
                from: from.unwrap_or_default(),
                max_wait,
            };
            let played = replay::play(
                events,
                options,
                &mut std::io::stdout().lock(),
                std::thread::sleep,
            )?;
            let mut notes = Vec::new();
            if played.gaps > 0 {
                notes.push(format!(
                    "{} gaps (custos show {} lists them)",
                    played.gaps,
                    escape::text(&id)
                ));
            }
            if played.suppressed_input > 0 {
                notes.push(format!(
                    "{} inputs typed with echo off, not recorded",
                    played.suppressed_input
                ));
            }
            if played.dropped_sequences > 0 {
                notes.push(format!(
                    "{} terminal queries not played",
                    played.dropped_sequences
                ));
            }
            if !notes.is_empty() {
                eprintln!(
                    "\ncustos: replay of {}: {}",
                    escape::text(&id),
                    notes.join("; ")
                );
            }
        }
        Command::Export { id, format, output } => export(&client, &id, format, output)?,
        Command::Verify { id, all, json, .. } => {
            let query = match (&id, all) {
                (Some(id), _) => vec![("id", id.clone())],
                (None, true) => vec![],
                (None, false) => bail!("give a session id, or --all (or --offline DIR)"),
            };
            // One line per result, as the collector checks them.
            let mut report = VerifyReport {
                results: Vec::new(),
                access_log: None,
                agents: Vec::new(),
            };
            for line in StreamLines::of(client.stream(path::VERIFY, &query)?, "verify") {
                report.add(
                    serde_json::from_str::<VerifyLine>(&line?).context("unreadable verify line")?,
                );
            }
            return report_verify(&report, json);
        }
        Command::AccessLog { since, limit, json } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(since) = since {
                let time = timeexpr::parse(&since).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
                query.push(("since", time.to_string()));
            }
            let response = client.stream(path::ACCESS_LOG, &query)?;
            let broken = response
                .headers()
                .get("x-custos-chain")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let log: AccessLog = crate::client::json(path::ACCESS_LOG, response)?;
            if json {
                print_json(&log)?;
            } else {
                print!("{}", render::access_log(&log.entries));
            }
            if let Some(broken) = broken {
                eprintln!(
                    "custos: WARNING: the access log's chain is broken: {}",
                    escape::text(&broken)
                );
                return Ok(ExitCode::from(1));
            }
        }
        Command::Holds { command } => match command.unwrap_or(HoldCommand::List) {
            HoldCommand::List => {
                let holds: Holds = client.get(path::HOLDS, &[])?;
                for h in &holds.holds {
                    println!(
                        "{}  {} {}  by {} at {}: {}",
                        h.id,
                        h.kind,
                        escape::text(&h.target),
                        escape::text(&h.created_by),
                        h.created,
                        escape::text(&h.reason)
                    );
                }
                if holds.holds.is_empty() {
                    println!("no holds");
                }
            }
            HoldCommand::Add {
                session,
                user,
                reason,
            } => {
                let (kind, target) = match (session, user) {
                    (Some(session), _) => ("session", session),
                    (None, Some(user)) => ("user", user),
                    (None, None) => bail!("give --session or --user"),
                };
                let hold: Hold = client.post(
                    path::HOLDS,
                    &NewHold {
                        kind: kind.into(),
                        target,
                        reason,
                    },
                )?;
                println!(
                    "hold {} placed on {} {}",
                    hold.id,
                    hold.kind,
                    escape::text(&hold.target)
                );
            }
            HoldCommand::Remove { id } => {
                client.delete(&path::with_id(path::HOLD, &encode(&id.to_string())))?;
                println!("hold {id} lifted");
            }
        },
        Command::Retention { command } => match command.unwrap_or(RetentionCommand::Show) {
            RetentionCommand::Show => {
                let info: RetentionInfo = client.get(path::RETENTION, &[])?;
                println!(
                    "recordings are kept {:.0} days after their last batch arrived; {} recordings, {} held",
                    info.keep_days, info.sessions, info.held_sessions
                );
            }
            RetentionCommand::Purge => {
                let report: PurgeReport =
                    client.post(path::RETENTION_PURGE, &serde_json::json!({}))?;
                for id in &report.purged {
                    println!("purged {}", escape::text(id));
                }
                for id in &report.held {
                    println!("kept   {} (held)", escape::text(id));
                }
                println!(
                    "{} purged, {} expired but held",
                    report.purged.len(),
                    report.held.len()
                );
            }
        },
        Command::Agents { json } => {
            let agents: Agents = client.get(path::AGENTS, &[])?;
            if json {
                print_json(&agents)?;
            } else {
                print!("{}", render::agents(&agents.agents));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams an export to a file or stdout, with progress on a terminal.
fn export(
    client: &Client,
    id: &str,
    format: Format,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let summary: SessionSummary = client
        .get::<SessionDetail>(&session_path(path::SESSION, id), &[])?
        .summary;
    let format_name = match format {
        Format::Asciicast => "asciicast",
        Format::Jsonl => "jsonl",
    };
    let response = client.stream(
        &session_path(path::SESSION_EXPORT, id),
        &[("format", format_name.to_owned())],
    )?;
    // A file is written under a `.partial` name and renamed once the collector's end line says
    // the export is whole: a cut or failed export never has the name asked for.
    let partial = output.as_ref().map(|path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".partial");
        PathBuf::from(name)
    });
    let mut sink: Box<dyn Write> = match &partial {
        Some(path) => Box::new(std::io::BufWriter::new(private_file(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let progress = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(summary.events.max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} exporting {msg} [{bar:30}] {pos}/{len} events ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(id.to_owned());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut lines = 0u64;
    let written = (|| -> anyhow::Result<()> {
        for line in StreamLines::of(response, "export") {
            sink.write_all(line?.as_bytes())?;
            sink.write_all(b"\n")?;
            lines += 1;
            progress.set_position(lines);
        }
        sink.flush()?;
        Ok(())
    })();
    progress.finish_and_clear();
    drop(sink);
    if let Err(err) = written {
        return Err(match &partial {
            Some(partial) => err.context(format!(
                "{} holds only the {lines} lines before the failure",
                partial.display()
            )),
            None => err.context(format!("only {lines} lines were written")),
        });
    }
    if let (Some(path), Some(partial)) = (&output, &partial) {
        std::fs::rename(partial, path)
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    }
    if let Some(path) = output {
        eprintln!(
            "custos: wrote {} ({lines} lines, {format_name})",
            path.display()
        );
    }
    Ok(())
}

//! `custos-collector pki`: the deployment's certificates and the collector's seal key.
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use custos_pki::{
    Role,
    issue::{self, PkiDir, Validity},
    registry::{self, Reason, Registry},
};

use crate::trust::keys::SealKey;

pub const DEFAULT_DIR: &str = "/etc/custos/pki";

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create the deployment CA, the collector's certificate and its seal key.
    Init {
        /// Directory for the CA, the collector's files and issued certificates.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Names (DNS names or IP addresses) agents and auditors use to reach the collector;
        /// the first is its certificate's common name. Default: this host's name and localhost.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Validity of the collector's certificate, in days.
        #[arg(long, default_value_t = issue::DEFAULT_DAYS)]
        days: i64,
    },
    /// Issue a certificate signed by the deployment CA.
    Issue {
        #[command(subcommand)]
        what: IssueCommand,
    },
    /// Revoke certificates: add them to the revocation list, which the collector picks up by
    /// itself within tls.crl_check_every (or at once on SIGHUP), closing their connections.
    Revoke {
        /// A certificate's name (every unrevoked certificate of that name) or serial number
        /// (as `pki list` shows it).
        what: String,
        /// Why (recorded in the registry and the list).
        #[arg(long, value_enum)]
        reason: Reason,
        /// Only certificates of this role, when revoking by name.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Rewrite the revocation list (crl.pem) from the registry, e.g. after restoring it.
    Crl {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// List the certificates issued, with their state: issued, expired or revoked.
    List {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Replace the collector's certificate and key (then send the collector SIGHUP).
    RenewCollector {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Names for the new certificate (default: those of the current one).
        #[arg(long = "name")]
        names: Vec<String>,
        #[arg(long, default_value_t = issue::DEFAULT_DAYS)]
        days: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum IssueCommand {
    /// For a recorded host (its certificate's name must be the host's name).
    Agent {
        hostname: String,
        #[command(flatten)]
        common: IssueOptions,
    },
    /// For a person or service that reads recordings.
    Auditor {
        name: String,
        #[arg(long, value_enum, default_value_t = AuditorRole::Auditor)]
        role: AuditorRole,
        #[command(flatten)]
        common: IssueOptions,
    },
}

#[derive(clap::Args, Debug)]
pub struct IssueOptions {
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Where to write the certificate and key (default: DIR/issued).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = issue::DEFAULT_DAYS)]
    days: i64,
    /// Replace an existing certificate of the same name (renewal); the old files are replaced
    /// atomically.
    #[arg(long)]
    replace: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AuditorRole {
    /// Reads recordings.
    Auditor,
    /// Also reads the access log and manages holds and retention.
    Admin,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Agent,
    Auditor,
    Admin,
    Collector,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Agent => Role::Agent,
            RoleArg::Auditor => Role::Auditor,
            RoleArg::Admin => Role::Admin,
            RoleArg::Collector => Role::Collector,
        }
    }
}

pub fn seal_key_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("seal.key"), dir.join("seal.pub"))
}

pub fn run(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init {
            dir,
            mut names,
            days,
        } => {
            if names.is_empty() {
                let host = nix_hostname();
                names = vec![host, "localhost".into(), "127.0.0.1".into()];
            }
            let pki = PkiDir::new(&dir);
            let written = issue::init(&pki, &names, days)?;
            let (seal, seal_pub) = seal_key_paths(&dir);
            SealKey::generate(&seal, &seal_pub)?;
            // The first revocation list, empty: the collector's tls.crl names a file that
            // exists from the start, and `pki revoke` only ever rewrites it.
            let crl = Registry::new(&pki).write_crl()?;
            for path in written.iter().chain([&seal, &seal_pub, &crl]) {
                println!("wrote {}", path.display());
            }
            println!(
                "keep {} offline if you can: it signs every certificate and the revocation list \
                 of this deployment; the collector never needs it",
                pki.ca_key().display()
            );
        }
        PkiCommand::Issue { what } => {
            let (role, name, common) = match what {
                IssueCommand::Agent { hostname, common } => (Role::Agent, hostname, common),
                IssueCommand::Auditor { name, role, common } => (
                    match role {
                        AuditorRole::Auditor => Role::Auditor,
                        AuditorRole::Admin => Role::Admin,
                    },
                    name,
                    common,
                ),
            };
            let pki = PkiDir::new(&common.dir);
            let (cert, key) = issue::issue(
                &pki,
                role,
                &name,
                Validity::days(common.days),
                common.out.as_deref(),
                common.replace,
            )?;
            println!("wrote {}", cert.display());
            println!("wrote {}", key.display());
        }
        PkiCommand::Revoke {
            what,
            reason,
            role,
            dir,
        } => {
            let registry = Registry::new(&PkiDir::new(&dir));
            let revoked = registry.revoke(&what, role.map(Role::from), reason)?;
            if revoked.is_empty() {
                println!("{what}: already revoked");
            }
            for entry in &revoked {
                println!(
                    "revoked {} {} (serial {})",
                    entry.role, entry.name, entry.serial
                );
            }
            println!(
                "wrote {}; the collector uses it within tls.crl_check_every (SIGHUP: at once)",
                PkiDir::new(&dir).crl().display()
            );
        }
        PkiCommand::Crl { dir } => {
            let path = Registry::new(&PkiDir::new(&dir)).write_crl()?;
            println!("wrote {}", path.display());
        }
        PkiCommand::List { dir } => {
            let entries = Registry::new(&PkiDir::new(&dir)).entries()?;
            print!("{}", registry::table(&entries));
        }
        PkiCommand::RenewCollector { dir, names, days } => {
            let (cert, key) =
                issue::renew_collector(&PkiDir::new(&dir), &names, Validity::days(days))?;
            println!("wrote {}", cert.display());
            println!("wrote {}", key.display());
            println!("send the collector SIGHUP to use them (no connection is lost)");
        }
    }
    Ok(())
}

fn nix_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

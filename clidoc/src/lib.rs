//! Man pages and shell completions for Custos's programs, generated from their clap
//! definitions so they never drift from `--help`. Each program takes a hidden
//! `--generate man|bash|zsh|fish` that prints one of them on standard output; the packages are
//! built with them (`cargo xtask package`) and install them where man and the shells look.
use std::io::Write;

/// What `--generate` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// The man page (section 1 or 8, roff).
    Man,
    /// bash completion (for /usr/share/bash-completion/completions).
    Bash,
    /// zsh completion (for /usr/share/zsh/vendor-completions).
    Zsh,
    /// fish completion (for /usr/share/fish/vendor_completions.d).
    Fish,
}

/// Writes `what` for `command` (the program's clap definition, `Cli::command()`).
pub fn generate(
    what: Generate,
    command: clap::Command,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let name = command.get_name().to_owned();
    let mut command = command;
    match what {
        Generate::Man => clap_mangen::Man::new(command).render(out),
        Generate::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut command, name, out);
            Ok(())
        }
        Generate::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut command, name, out);
            Ok(())
        }
        Generate::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut command, name, out);
            Ok(())
        }
    }
}

/// Prints `what` for `command` on standard output (a program's `--generate`).
pub fn print(what: Generate, command: clap::Command) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    generate(what, command, &mut out)?;
    out.flush()
}

/// A program's first step: with `--generate WHAT` as its only arguments, prints that for the
/// program's `command` and says how it went (the caller exits with it); otherwise `None` and
/// the program parses its arguments as usual.
pub fn generate_if_asked(
    command: impl FnOnce() -> clap::Command,
) -> Option<std::process::ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag, what] = args.as_slice() else {
        return None;
    };
    if flag != "--generate" {
        return None;
    }
    let command = command();
    let name = command.get_name().to_owned();
    let result = <Generate as clap::ValueEnum>::from_str(what, false)
        .map_err(|_| format!("--generate {what}: expected man, bash, zsh or fish"))
        .and_then(|what| print(what, command).map_err(|err| format!("--generate: {err}")));
    Some(match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{name}: {message}");
            std::process::ExitCode::from(2)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> clap::Command {
        clap::Command::new("demo")
            .about("A demo program")
            .arg(clap::Arg::new("speed").long("speed").help("How fast"))
            .subcommand(clap::Command::new("replay").about("Play a session"))
    }

    fn text(what: Generate) -> String {
        let mut out = Vec::new();
        generate(what, demo(), &mut out).expect("generated");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn man_page_and_completions_name_the_options_and_subcommands() {
        let man = text(Generate::Man);
        assert!(man.contains(".TH demo") && man.contains("speed") && man.contains("replay"));
        for shell in [Generate::Bash, Generate::Zsh, Generate::Fish] {
            let completion = text(shell);
            assert!(
                completion.contains("speed") && completion.contains("replay"),
                "{shell:?}: {completion}"
            );
        }
    }
}

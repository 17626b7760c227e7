//! `kvmini`: parse the command line, validate it into a config, run the VM,
//! and turn the outcome into an exit code ([`kvmini::outcome`], listed in
//! docs/cli.md) and a one-line message.

use std::process::ExitCode;

use clap::Parser;
use kvmini::cli::{Cli, Command, RunArgs};
use kvmini::config::{self, parse_console};
use kvmini::launch::{self, Notice};
use kvmini::outcome::{code, config_code};
use kvmini::{guest, logger};
use kvmini_flags::FlagsError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // exec passes the command's status through, so its own usage
            // errors use 125 (as documented), not 2.
            let exec = subcommand(std::env::args().skip(1)).as_deref() == Some("exec");
            let code = if e.use_stderr() && exec {
                code::EXEC_ERROR
            } else {
                e.exit_code() as u8
            };
            return ExitCode::from(code);
        }
    };
    let quiet = match &cli.command {
        Command::Run(a) => a.quiet,
        Command::Exec(a) => a.quiet,
        Command::Bench(_) => false,
    };
    let level = cli.log_level.as_deref().or(quiet.then_some("error"));
    if let Err(e) = logger::init(level) {
        eprintln!("kvmini: {e}");
        return ExitCode::from(if matches!(cli.command, Command::Exec(_)) {
            code::EXEC_ERROR
        } else {
            code::USAGE
        });
    }
    guest::set_quiet(quiet);
    ExitCode::from(match cli.command {
        Command::Exec(args) => kvmini::exec::main(args),
        Command::Bench(args) => kvmini_bench::main(args, |relative| {
            guest::build_artefact(relative).map_err(|e| e.to_string())
        }),
        Command::Run(args) => run(args),
    })
}

/// `kvmini run`.
fn run(args: RunArgs) -> u8 {
    let console = match parse_console(&args.console) {
        Ok(c) => c,
        Err(e) => return fail(&e, config_code(&e)),
    };
    // Every flag is checked, and the engine chosen (`--accel kvm` refused
    // where it cannot run), before the default guest is built.
    let host_memory = config::host_memory_bytes();
    let notice = if args.quiet {
        Notice::Quiet
    } else {
        Notice::Stderr
    };
    let engine = match args
        .vm
        .check(console.clone(), 0, host_memory)
        .and_then(|checked| launch::engine(&checked, notice))
    {
        Ok(engine) => engine,
        Err(e) => return fail(&e, config_code(&e)),
    };
    let config = match args
        .vm
        .to_config(console, 0, host_memory, guest::default_guest)
    {
        Ok(c) => c,
        Err(FlagsError::Config(e)) => return fail(&e, config_code(&e)),
        Err(FlagsError::DefaultGuest(e)) => return fail(&e, code::ERROR),
    };
    if let Err(e) = launch::provide_virtiofsd(&config.fs) {
        return fail(&e, code::ERROR);
    }
    match launch::run(&config, engine) {
        Ok(code) => code,
        Err(e) => fail(&e, e.code()),
    }
}

/// The subcommand in kvmini's arguments: the first word that is neither a
/// global flag nor its value.
fn subcommand(mut args: impl Iterator<Item = String>) -> Option<String> {
    while let Some(a) = args.next() {
        if a == "--log-level" {
            args.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

fn fail(e: &dyn std::error::Error, code: u8) -> u8 {
    eprintln!("kvmini: error: {e}");
    code
}

#[cfg(test)]
mod tests {
    use super::subcommand;

    #[test]
    fn subcommand_after_global_flags() {
        let s = |a: &[&str]| subcommand(a.iter().map(|s| s.to_string()));
        assert_eq!(s(&["exec", "uname"]).as_deref(), Some("exec"));
        assert_eq!(
            s(&["--log-level", "info", "exec", "uname"]).as_deref(),
            Some("exec")
        );
        assert_eq!(s(&["--log-level=info", "exec"]).as_deref(), Some("exec"));
        assert_eq!(s(&["--help"]), None);
    }
}

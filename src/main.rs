//! `kvmini`: parse the command line, validate it into a config, run the VM,
//! and turn the outcome into an exit code and a one-line message.

use std::process::ExitCode;

use clap::Parser;
use kvmini::arch::x86_64::cpuid::host_has_hw_virt;
use kvmini::cli::{Cli, Command};
use kvmini::config::{self, Accel};
use kvmini::{logger, vmm};

/// Exit codes, documented in `kvmini --help` and docs/cli.md.
mod code {
    /// The guest powered off or rebooted.
    pub const OK: u8 = 0;
    /// kvmini could not start the VM (bad input, KVM unusable, ...).
    pub const ERROR: u8 = 1;
    /// The guest crashed: triple fault, failed emulation, failed entry.
    pub const GUEST_CRASH: u8 = 3;
    /// The guest kernel panicked.
    pub const GUEST_PANIC: u8 = 4;
    /// Killed from the console with Ctrl-A x.
    pub const USER_QUIT: u8 = 130;
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // exec passes the command's status through, so its own usage
            // errors use 125 (as documented), not clap's 2.
            let exec = std::env::args().nth(1).as_deref() == Some("exec");
            let code = if e.use_stderr() && exec {
                kvmini::exec::code::ERROR
            } else {
                e.exit_code() as u8
            };
            return ExitCode::from(code);
        }
    };
    if let Err(e) = logger::init(cli.log_level.as_deref()) {
        eprintln!("kvmini: {e}");
        return ExitCode::from(code::ERROR);
    }
    match cli.command {
        Command::Exec(args) => ExitCode::from(kvmini::exec::main(args)),
        Command::Bench(args) => ExitCode::from(kvmini_bench::main(args, |relative| {
            kvmini::guest::build_artefact(relative).map_err(|e| e.to_string())
        })),
        Command::Run(mut args) => {
            if args.kernel.is_none() {
                match kvmini::guest::default_guest() {
                    Ok((kernel, initrd)) => {
                        args.kernel = Some(kernel);
                        args.initrd.get_or_insert(initrd);
                    }
                    Err(e) => return fail(&e),
                }
            }
            let config = match kvmini::flags::vm_config(&args, config::host_memory_bytes()) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            match config.accel.resolve(host_has_hw_virt()) {
                Ok(true) => {}
                Ok(false) => {
                    if config.accel == Accel::Auto {
                        kvmini::emulated::announce_fallback();
                    }
                    return match kvmini::emulated::run(&config) {
                        Ok(code) => ExitCode::from(code),
                        Err(e) => fail(&e),
                    };
                }
                Err(e) => return fail(&e),
            }
            match vmm::run(&config) {
                Ok(exit) if exit.is_clean() => {
                    log::info!("{exit}");
                    ExitCode::from(code::OK)
                }
                Ok(exit) => {
                    eprintln!("kvmini: {exit}");
                    ExitCode::from(match (&exit, exit.host_signal()) {
                        (_, Some(s)) => 128u8.saturating_add(s as u8),
                        (vmm::exit::VmExit::UserQuit, _) => code::USER_QUIT,
                        (vmm::exit::VmExit::GuestPanic(_), _) => code::GUEST_PANIC,
                        _ => code::GUEST_CRASH,
                    })
                }
                Err(e) => fail(&e),
            }
        }
    }
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("kvmini: error: {e}");
    ExitCode::from(code::ERROR)
}

//! Command-line interface: clap derive structs only. Validation and defaults
//! live in [`crate::config`], so the CLI stays a thin description of flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
pub use kvmini_flags::{VmArgs, DEFAULT_SHUTDOWN_TIMEOUT};

/// kvmini: boot Linux kernels on KVM, fast and small.
#[derive(Debug, Parser)]
#[command(name = "kvmini", version, about, long_about = None)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace. `RUST_LOG` is read when
    /// this is not given.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a Linux kernel and attach its serial console to this terminal.
    ///
    /// The guest console is shown on standard output and keystrokes are
    /// forwarded to it. Press Ctrl-A x to kill the VM, Ctrl-A Ctrl-A to send
    /// a literal Ctrl-A. kvmini exits 0 when the guest powers off or reboots.
    Run(RunArgs),

    /// Run one command in a throwaway VM and exit with its status.
    ///
    /// Boots the guest, runs COMMAND (argv, no shell: use `sh -c '...'` for
    /// shell syntax) with stdin from /dev/null, streams its stdout and stderr
    /// to ours (separately and byte for byte), powers off, and exits with the
    /// command's exit status. The guest's kernel console is kept out of the
    /// way: its last lines are shown if the VM fails, or all of it goes to
    /// `--console file=PATH`.
    ///
    /// Exit status: the command's own (0-255); 123 the guest kernel
    /// panicked or the VM crashed; 124 `--timeout` expired; 125 kvmini could
    /// not run the command (bad arguments, missing kernel, the guest stopped
    /// without reporting a status); 128+N kvmini was killed by signal N.
    #[command(
        after_help = "Examples:\n  kvmini exec -- uname -r\n  kvmini exec --cpus 2 --memory 1G --timeout 10m \\\n      --share ./build:/mnt/build -- /mnt/build/run-tests.sh"
    )]
    Exec(ExecArgs),

    /// Measure a kvmini VM against a container and the bare host.
    ///
    /// Runs the same workloads (the busybox of the guest's root filesystem)
    /// in a kvmini VM (`kvmini exec`), in a container (crun, an OCI bundle
    /// of the same root tree, cgroup limits matching the VM) and as a plain
    /// host process; prints a table (median [min..max], ratio to the host),
    /// optionally JSON and a PNG chart. Progress goes to stderr. An
    /// environment or workload that cannot run here is shown as "not run"
    /// with the reason, never as a number.
    ///
    /// Exit status: 0 the report is complete; 3 it was written but some
    /// measurements failed (the table says which and why); 1 the bench
    /// could not run.
    #[command(
        after_help = "Examples:\n  kvmini bench\n  kvmini bench --workloads startup,memory,cpu --repeat 10 \\\n      --json results.json --chart results.png"
    )]
    Bench(kvmini_bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub vm: VmArgs,

    /// Root filesystem image (ext4, raw) to run the command in. It is
    /// attached read-only, so several runs can share it; the guest sees it
    /// writable through a tmpfs overlay whose changes are discarded.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,

    /// Kill the VM after this long and exit 124: a number of seconds, or
    /// with an s, m or h suffix (`90s`, `10m`, `1h`). The clock starts
    /// when kvmini starts preparing the VM (packing shares, booting count;
    /// building the default guest on first use does not). Default: no
    /// limit.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// Make host directory HOST visible at GUEST (an absolute path) inside
    /// the VM; `:ro` makes it read-only. Repeatable. On KVM the share is
    /// live (virtio-fs, with a virtiofsd kvmini starts, sandboxed to HOST):
    /// what the command creates, changes, renames and deletes reaches HOST
    /// as it happens, also when it fails or times out. Elsewhere (--accel
    /// tcg or emulated), or with `--share-via image`, HOST is copied into a
    /// disk image and the command's changes are applied to HOST only when
    /// it finishes. See --share-via.
    #[arg(long = "share", value_name = "HOST:GUEST[:ro]")]
    pub shares: Vec<String>,

    /// How --share reaches the guest. `auto`: live through virtio-fs where
    /// the VM runs on KVM (virtiofsd from the host, or built on first use
    /// and cached) and every GUEST is a plain path (letters, digits, `_`,
    /// `.`, `-`), else `image`. `virtio-fs`: live, or an error saying why
    /// not. `image`: a copy in a disk image, changes applied at the end.
    #[arg(long, value_name = "auto|virtio-fs|image", default_value = "auto")]
    pub share_via: String,

    /// Set an environment variable for the command: `NAME=VALUE`, or `NAME`
    /// to pass this process's value. Repeatable. The command starts with
    /// PATH, HOME=/root and TERM=dumb and nothing else from the host.
    #[arg(long = "env", short = 'e', value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,

    /// Working directory of the command inside the guest.
    #[arg(long, short = 'w', value_name = "DIR", default_value = "/")]
    pub workdir: String,

    /// Where the guest's kernel console goes: `none` (kept in memory; the
    /// last lines are shown if the VM fails) or `file=PATH`.
    #[arg(long, value_name = "DEST", default_value = "none")]
    pub console: String,

    /// Print nothing of kvmini's own but errors (no notices, no progress
    /// of first-use builds).
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Internal (the emulated machine's inner kvmini): the initrd already
    /// carries the command and the disks are in place.
    #[arg(long, hide = true)]
    pub prepared: bool,

    /// Internal: write the command's exit status to this file.
    #[arg(long, hide = true, value_name = "PATH")]
    pub status_file: Option<PathBuf>,

    /// Internal: write the guest's share archive (its fourth console) to
    /// this file (the emulated machine's port for it).
    #[arg(long, hide = true, value_name = "PATH")]
    pub share_stream: Option<PathBuf>,

    /// The command to run in the guest, and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: VmArgs,

    /// Where the guest serial console goes: `stdout`, `file=PATH` or `none`.
    #[arg(long, value_name = "DEST", default_value = "stdout")]
    pub console: String,

    /// Print nothing of kvmini's own but errors (no notices, no progress
    /// of first-use builds); the guest console is unaffected.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

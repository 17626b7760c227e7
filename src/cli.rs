//! Command-line interface: clap derive structs only. Validation and defaults
//! live in [`crate::config`], so the CLI stays a thin description of flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Guest kernel (vmlinux or bzImage). Default: kvmini's own guest kernel
    /// (Linux 6.12, built from Debian packages on first use and cached).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs with the guest's userland (needs a POSIX sh, mount, stty
    /// and chroot, e.g. busybox). Default: kvmini's busybox initramfs.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Root filesystem image (ext4, raw) to run the command in. It is
    /// attached read-only, so several runs can share it; the guest sees it
    /// writable through a tmpfs overlay whose changes are discarded.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,

    /// Guest RAM, with an optional K, M or G suffix (a bare number is MiB).
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "512M")]
    pub memory: String,

    /// Number of vCPUs.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1)]
    pub cpus: u32,

    /// Kill the VM after this long and exit 124: a number of seconds, or
    /// with an s, m or h suffix (`90s`, `10m`, `1h`). Default: no limit.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// Make host directory HOST visible at GUEST (an absolute path) inside
    /// the VM; `:ro` makes it read-only. Files the command creates or
    /// changes under a writable share are copied back to HOST when it
    /// finishes (deletions are not). Repeatable.
    #[arg(long = "share", value_name = "HOST:GUEST[:ro]")]
    pub shares: Vec<String>,

    /// Set an environment variable for the command: `NAME=VALUE`, or `NAME`
    /// to pass this process's value. Repeatable. The command starts with
    /// PATH, HOME=/root and TERM=dumb and nothing else from the host.
    #[arg(long = "env", short = 'e', value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,

    /// Working directory of the command inside the guest.
    #[arg(long, short = 'w', value_name = "DIR", default_value = "/")]
    pub workdir: String,

    /// An extra virtio-blk disk: `path=PATH[,readonly=on]`, as for `run`.
    /// Disks come first: /dev/vda, /dev/vdb, ... in order.
    #[arg(long = "disk", value_name = "path=PATH[,readonly=on]")]
    pub disks: Vec<String>,

    /// A virtio-net NIC on the host TAP interface NAME: `tap=NAME[,mac=MAC]`,
    /// as for `run` (configure the guest side with `--cmdline ip=...`).
    /// Needs hardware KVM.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub nets: Vec<String>,

    /// Extra kernel command line (appended to kvmini's defaults).
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub cmdline: Option<String>,

    /// `auto`, `kvm`, `emulated` or `kvm-any`, as for `run`.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub accel: String,

    /// Where the guest's kernel console goes: `none` (kept in memory; the
    /// last lines are shown if the VM fails) or `file=PATH`.
    #[arg(long, value_name = "DEST", default_value = "none")]
    pub console: String,

    /// Internal (the emulated fallback's inner kvmini): the initrd already
    /// carries the command and the disks are in place.
    #[arg(long, hide = true)]
    pub prepared: bool,

    /// Internal: write the command's exit status to this file.
    #[arg(long, hide = true, value_name = "PATH")]
    pub status_file: Option<PathBuf>,

    /// When --timeout expires or kvmini gets SIGTERM, a guest that runs ACPI
    /// gets its power button pressed and this long to shut down before it is
    /// killed (seconds, or with s, m). kvmini's own guest has no ACPI and is
    /// killed at once.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_SHUTDOWN_TIMEOUT)]
    pub shutdown_timeout: String,

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
    /// Guest kernel: an uncompressed vmlinux (ELF) or a bzImage. Without it,
    /// kvmini boots its default guest (a small Linux 6.12 and a busybox
    /// initramfs, built from Debian packages on first use and cached).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk (initramfs cpio archive, optionally compressed).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Guest RAM, with an optional K, M or G suffix (a bare number is MiB).
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "512M")]
    pub memory: String,

    /// Number of vCPUs.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1)]
    pub cpus: u32,

    /// Extra kernel command line, appended to kvmini's defaults
    /// ("console=ttyS0 reboot=k panic=1"). Words after `--` go to the
    /// guest's init.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub cmdline: Option<String>,

    /// How to run the guest. `kvm`: /dev/kvm with hardware virtualization
    /// (refused when the CPU has no vmx/svm). `emulated`: inside an emulated
    /// machine (QEMU TCG with nested KVM), much slower, for hosts without
    /// hardware virtualization. `auto`: `kvm` where possible, else
    /// `emulated`, and says which. `kvm-any`: /dev/kvm even without
    /// hardware virtualization (software KVM runs only simple guests).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub accel: String,

    /// A virtio-blk disk backed by a raw image file:
    /// `path=PATH[,readonly=on|off]`. Repeat for more disks; they appear in
    /// the guest as /dev/vda, /dev/vdb, ... in order.
    #[arg(long = "disk", value_name = "path=PATH[,readonly=on]")]
    pub disks: Vec<String>,

    /// A virtio-net NIC backed by the host TAP interface NAME:
    /// `tap=NAME[,mac=MAC]`. Repeat for more NICs (eth0, eth1, ... in the
    /// guest). Without `mac`, each NIC gets its own 52:54:00:xx:xx:xx
    /// address. If NAME does not exist and kvmini has CAP_NET_ADMIN (e.g.
    /// root), kvmini creates it for the life of the VM; otherwise create
    /// it first: `sudo ip tuntap add dev NAME mode tap user $USER`. The host
    /// side is yours to configure (address, or a bridge); the guest can
    /// configure itself with the kernel's `ip=` parameter. Needs hardware
    /// KVM: not available with --accel emulated.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub nets: Vec<String>,

    /// Where the guest serial console goes: `stdout`, `file=PATH` or `none`.
    #[arg(long, value_name = "DEST", default_value = "stdout")]
    pub console: String,

    /// On SIGTERM, a guest that runs ACPI gets its power button pressed and
    /// this long to shut down (seconds, or with s, m); then it is killed. A
    /// second SIGTERM or SIGINT kills it at once; a guest without ACPI is
    /// stopped at once. kvmini exits 143 either way and says which.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_SHUTDOWN_TIMEOUT)]
    pub shutdown_timeout: String,
}

/// `--shutdown-timeout`'s default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";

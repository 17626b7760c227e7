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
}

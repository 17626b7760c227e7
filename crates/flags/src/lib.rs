//! The VM flags every kvmini command shares: `run`, `exec` and `bench`
//! flatten [`VmArgs`] into their own flags, so a VM flag exists once, with
//! one help text and one validation ([`VmArgs::to_config`], built from the
//! core's [`kvmini_vmm::config`] parsers), and the way back from a
//! [`VmConfig`] to flags ([`vm_args`]) serves every place that starts
//! another kvmini: the emulated machine's inner kvmini and the bench's VM.
//! A round-trip test per flag proves nothing is lost on the way.

use std::path::PathBuf;

use clap::Args;
use kvmini_vmm::config::{
    check_console, check_readable, parse_disk, parse_duration, parse_fs, parse_nets, parse_size,
    Accel, ConfigError, ConsoleConfig, Seccomp, VmConfig, DEFAULT_CMDLINE, MAX_VCPUS, MIN_MEMORY,
};

/// `--shutdown-timeout`'s default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";

/// The flags that describe the VM itself (not where its console goes or
/// what a command does with it).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct VmArgs {
    /// Guest kernel: an uncompressed vmlinux (ELF) or a bzImage. Without it,
    /// kvmini boots its default guest (a small Linux 6.12 and a busybox
    /// initramfs, built from Debian packages on first use and cached).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk (initramfs cpio archive, optionally compressed).
    /// Default with the default guest: its busybox initramfs.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Guest RAM, with an optional K, M or G suffix (a bare number is MiB).
    #[arg(long, short = 'm', value_name = "SIZE", default_value = "512M")]
    pub memory: String,

    /// Number of vCPUs (1 to 253).
    #[arg(long, short = 'c', value_name = "N", default_value_t = 1)]
    pub cpus: u32,

    /// Extra kernel command line, appended to kvmini's defaults
    /// ("console=ttyS0 reboot=k panic=1"). Words after `--` go to the
    /// guest's init (at most 32, Linux's limit).
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub cmdline: Option<String>,

    /// How to run the guest. `kvm`: kvmini's VMM on /dev/kvm with hardware
    /// virtualization (refused when the CPU has no vmx/svm). `tcg`: QEMU's
    /// software CPU runs the guest (qemu-system-x86_64, microvm machine),
    /// much slower, for hosts without hardware virtualization; no --net.
    /// `auto`: `kvm` where possible, else `tcg`, and says which.
    /// `emulated`: kvmini's own VMM nested in an emulated machine (QEMU TCG
    /// with nested KVM), slower still, to test kvmini on such hosts.
    /// `kvm-any`: /dev/kvm even without hardware virtualization (software
    /// KVM runs only simple guests).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub accel: String,

    /// A virtio-blk disk backed by a raw image file or block device:
    /// `path=PATH[,readonly=on|off][,iops=N][,bw=BYTES]` (a comma in PATH
    /// is written twice). `iops` caps requests per second, `bw` bytes per
    /// second (K, M, G suffixes: powers of 1024; with `--accel tcg`,
    /// QEMU's throttling). Repeat for more disks; they appear in the guest
    /// as /dev/vda, /dev/vdb, ... in order.
    #[arg(
        long = "disk",
        value_name = "path=PATH[,readonly=on][,iops=N][,bw=BYTES]"
    )]
    pub disks: Vec<String>,

    /// A virtio-net NIC (eth0, eth1, ... in the guest, in order; repeat
    /// for more). `user[,forward=tcp:HOSTPORT:GUESTPORT]...`: no root
    /// needed; kvmini starts passt (Debian package `passt`) for the NIC,
    /// which gives the guest DHCP, DNS and its connections through your
    /// own sockets; the host's loopback is the guest's gateway address,
    /// and each `forward` makes the host's HOSTPORT reach the guest's
    /// GUESTPORT. kvmini's guests configure such a NIC by DHCP themselves.
    /// `tap=NAME`: the host TAP interface NAME; if it does not exist and
    /// kvmini has CAP_NET_ADMIN (e.g. root), kvmini creates it for the
    /// life of the VM; otherwise create it first: `sudo ip tuntap add dev
    /// NAME mode tap user $USER`. The host side is yours to configure
    /// (address, or a bridge); the guest configures itself with the
    /// kernel's `ip=` parameter; not with --accel tcg or emulated. Both
    /// take `mac=MAC` (default: each NIC its own 52:54:00:xx:xx:xx) and
    /// `bw=BYTES` (bytes per second in each direction, K, M, G suffixes).
    #[arg(
        long = "net",
        value_name = "user[,forward=tcp:H:G] | tap=NAME[,mac=MAC][,bw=BYTES]"
    )]
    pub nets: Vec<String>,

    /// A host directory shared live with the guest (virtio-fs; repeat for
    /// more): `tag=TAG,dir=PATH[,ro=on][,mount=DIR]`. kvmini runs
    /// virtiofsd on PATH for the VM's life, in its namespace sandbox (PATH
    /// is all of the host it sees); `ro=on`: the guest cannot change it.
    /// virtiofsd comes from KVMINI_VIRTIOFSD, PATH or /usr/libexec, else is
    /// built from crates.io on first use and cached (needs cargo). Or
    /// `tag=TAG,socket=PATH[,mount=DIR]`: the vhost-user socket of a
    /// virtiofsd you started (`virtiofsd --socket-path PATH --shared-dir
    /// DIR`; it serves one VM). kvmini's own guests mount TAG at boot at
    /// DIR (default /mnt/TAG); others: `mount -t virtiofs TAG DIR`. Writes,
    /// creates and deletes reach the host at once. Needs KVM (not --accel
    /// tcg or emulated); guest RAM is then a shared memfd, which virtiofsd
    /// maps.
    #[arg(
        long = "fs",
        value_name = "tag=TAG,dir=PATH[,ro=on] | tag=TAG,socket=PATH"
    )]
    pub fs: Vec<String>,

    /// On SIGTERM (and `exec --timeout`), a guest that runs ACPI gets its
    /// power button pressed and this long to shut down (seconds, or with s,
    /// m); then it is killed. A second SIGTERM or SIGINT kills it at once;
    /// a guest without ACPI (kvmini's own), or any guest with `--accel
    /// tcg`, is stopped at once.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_SHUTDOWN_TIMEOUT)]
    pub shutdown_timeout: String,

    /// `on`: every VMM thread (vCPUs, event loop, disk I/O, output
    /// writers) runs under a seccomp allow-list of the system calls its
    /// kind needs, and a call outside it stops kvmini with a message naming
    /// it (exit 159). With `--accel tcg` QEMU's threads run the guest, so
    /// `on` is QEMU's own seccomp sandbox (`-sandbox`) instead. `off`: no
    /// filters, for debugging only.
    #[arg(long, value_name = "on|off", default_value = "on")]
    pub seccomp: String,
}

impl Default for VmArgs {
    fn default() -> Self {
        Self {
            kernel: None,
            initrd: None,
            memory: "512M".into(),
            cpus: 1,
            cmdline: None,
            accel: "auto".into(),
            disks: Vec::new(),
            nets: Vec::new(),
            fs: Vec::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT.into(),
            seccomp: "on".into(),
        }
    }
}

/// Why the flags do not make a VM.
#[derive(Debug)]
pub enum FlagsError<E> {
    /// A flag's value, or the flags together, are wrong (a usage error).
    Config(ConfigError),
    /// No `--kernel`, and the default guest could not be provided.
    DefaultGuest(E),
}

impl<E: std::fmt::Display> std::fmt::Display for FlagsError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "{e}"),
            Self::DefaultGuest(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for FlagsError<E> {}

impl VmArgs {
    /// Validates every flag, then the VM as a whole (`consoles`: the
    /// virtio-consoles the command adds; `host_memory`: bytes of RAM and
    /// swap, when known), and only then, without `--kernel`, asks
    /// `default_guest` for the kernel and initramfs (building the default
    /// guest takes minutes on first use: a typo must not wait for it).
    pub fn to_config<E>(
        &self,
        console: ConsoleConfig,
        consoles: usize,
        host_memory: Option<u64>,
        default_guest: impl FnOnce() -> Result<(PathBuf, PathBuf), E>,
    ) -> Result<VmConfig, FlagsError<E>> {
        let mut config = self
            .check(console, consoles, host_memory)
            .map_err(FlagsError::Config)?;
        if self.kernel.is_none() {
            let (kernel, initrd) = default_guest().map_err(FlagsError::DefaultGuest)?;
            config.kernel = kernel;
            config.initrd.get_or_insert(initrd);
        }
        check_readable(&config.kernel).map_err(|e| {
            FlagsError::Config(ConfigError::KernelMissing(config.kernel.clone(), e))
        })?;
        if let Some(initrd) = &config.initrd {
            check_readable(initrd)
                .map_err(|e| FlagsError::Config(ConfigError::InitrdMissing(initrd.clone(), e)))?;
        }
        Ok(config)
    }

    /// Every check that needs no kernel: the config it returns has an empty
    /// kernel path when `--kernel` was not given.
    pub fn check(
        &self,
        console: ConsoleConfig,
        consoles: usize,
        host_memory: Option<u64>,
    ) -> Result<VmConfig, ConfigError> {
        check_console(&console)?;
        let memory_bytes = parse_size(&self.memory)?;
        if memory_bytes < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(memory_bytes));
        }
        if let Some(host) = host_memory.filter(|&h| memory_bytes > h) {
            return Err(ConfigError::MemoryTooLarge {
                requested: memory_bytes,
                host,
            });
        }
        let vcpus = u8::try_from(self.cpus)
            .ok()
            .filter(|&n| n > 0 && u32::from(n) <= MAX_VCPUS)
            .ok_or(ConfigError::Vcpus(self.cpus))?;
        let accel = Accel::parse(&self.accel)?;
        let disks = self
            .disks
            .iter()
            .map(|d| parse_disk(d))
            .collect::<Result<Vec<_>, _>>()?;
        let nets = parse_nets(&self.nets, std::process::id())?;
        let fs = self
            .fs
            .iter()
            .map(|f| parse_fs(f))
            .collect::<Result<Vec<_>, _>>()?;
        let shutdown_timeout = parse_duration(&self.shutdown_timeout)
            .ok_or_else(|| ConfigError::ShutdownTimeout(self.shutdown_timeout.clone()))?;
        let seccomp = Seccomp::parse(&self.seccomp)
            .ok_or_else(|| ConfigError::Seccomp(self.seccomp.clone()))?;
        let mut cmdline = DEFAULT_CMDLINE.to_string();
        if let Some(extra) = self
            .cmdline
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        let config = VmConfig {
            kernel: self.kernel.clone().unwrap_or_default(),
            initrd: self.initrd.clone(),
            memory_bytes,
            vcpus,
            cmdline,
            console,
            accel,
            disks,
            nets,
            fs,
            shutdown_timeout,
            seccomp,
        };
        config.check(consoles)?;
        Ok(config)
    }
}

/// The flags that describe `config`'s VM to another kvmini: parsed back
/// by [`VmArgs`] they give the same config (its console aside, which each
/// command sets its own way). Every field is named here, so a new one does
/// not compile until it travels too.
pub fn vm_args(config: &VmConfig) -> Vec<String> {
    let VmConfig {
        kernel,
        initrd,
        memory_bytes,
        vcpus,
        cmdline,
        console: _,
        accel,
        disks,
        nets,
        fs,
        shutdown_timeout,
        seccomp,
    } = config;
    let mut a = vec!["--kernel".to_string(), kernel.display().to_string()];
    if let Some(initrd) = initrd {
        a.extend(["--initrd".into(), initrd.display().to_string()]);
    }
    a.extend([
        "--memory".into(),
        memory_arg(*memory_bytes),
        "--cpus".into(),
        vcpus.to_string(),
        "--accel".into(),
        accel.name().into(),
        "--shutdown-timeout".into(),
        format!("{}s", shutdown_timeout.as_secs()),
        "--seccomp".into(),
        seccomp.name().into(),
    ]);
    let extra = cmdline
        .strip_prefix(DEFAULT_CMDLINE)
        .unwrap_or(cmdline)
        .trim();
    if !extra.is_empty() {
        a.extend(["--cmdline".into(), extra.to_string()]);
    }
    for d in disks {
        a.extend(["--disk".into(), d.to_arg()]);
    }
    for n in nets {
        a.extend(["--net".into(), n.to_arg()]);
    }
    for f in fs {
        a.extend(["--fs".into(), f.to_arg()]);
    }
    a
}

/// A byte count as `--memory` takes it, exactly.
fn memory_arg(bytes: u64) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{}M", bytes >> 20)
    } else if bytes % (1 << 10) == 0 {
        format!("{}K", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

#[cfg(test)]
mod tests;

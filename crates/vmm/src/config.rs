//! The validated VM configuration. Every default and every check on user
//! input lives here, so the rest of the VMM can trust what it is given.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Kernel command-line parameters every guest gets; the user's `--cmdline`
/// is appended after them, so the user can override any of them.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// The smallest guest we accept: below this a Linux kernel cannot even
/// decompress itself, and a clear error beats an obscure guest panic.
pub const MIN_MEMORY: u64 = 16 << 20;

/// The most vCPUs the MP table (one 20-byte entry each, below 640 KiB) and
/// 8-bit APIC IDs allow.
pub const MAX_VCPUS: u32 = 253;

/// Every virtio-mmio device (disk or NIC) needs its own IRQ (5..=23).
pub const MAX_VIRTIO_DEVICES: usize = crate::arch::x86_64::layout::VIRTIO_MAX_DEVICES as usize;

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleConfig {
    Stdout,
    File(PathBuf),
    None,
}

/// How the guest runs: see `kvmini run --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Auto,
    Kvm,
    KvmAny,
    Emulated,
    /// QEMU's software CPU (TCG) runs the guest itself, no KVM anywhere.
    Tcg,
}

impl Accel {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "kvm-any" => Ok(Self::KvmAny),
            "emulated" => Ok(Self::Emulated),
            "tcg" => Ok(Self::Tcg),
            _ => Err(ConfigError::Accel(s.to_string())),
        }
    }

    /// The flag value that selects this mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::KvmAny => "kvm-any",
            Self::Emulated => "emulated",
            Self::Tcg => "tcg",
        }
    }

    /// Whether to run on this host's /dev/kvm (`true`) or in software
    /// (`false`: QEMU TCG, directly or as the emulated machine), given
    /// whether the CPU has vmx/svm.
    pub fn resolve(self, hw_virt: bool) -> Result<bool, ConfigError> {
        match (self, hw_virt) {
            (Self::Kvm, false) => Err(ConfigError::NoHardwareVirt),
            (Self::Auto, hw) => Ok(hw),
            (Self::Kvm | Self::KvmAny, _) => Ok(true),
            (Self::Emulated | Self::Tcg, _) => Ok(false),
        }
    }
}

/// One `--disk`: the block device's own config type.
pub use crate::devices::virtio::block::BlockConfig as DiskConfig;

use crate::arch::x86_64::layout;
use crate::devices::rate_limiter::{parse_rate, RateLimit};
/// One `--fs`: the virtio-fs device's own config type.
pub use crate::devices::virtio::fs::{parse_fs, FsBackend, FsConfig};
/// One `--net`: the network device's own config type.
pub use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::net::{tap, MacAddr, NetBackend, PortForward};
pub use crate::seccomp::Seccomp;

/// Splits `key=value,key=value`, rejecting unknown keys, repeated keys and
/// items without `=`. A comma inside a value is written twice (`,,`), as
/// QEMU does, so any path fits: `path=/tmp/a,,b.img`.
pub fn parse_kv(s: &str, known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut items = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' && chars.next_if_eq(&',').is_none() {
            items.push(String::new());
        } else if let Some(item) = items.last_mut() {
            item.push(c);
        }
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not key=value"))?;
        if !known.contains(&k) {
            return Err(format!("unknown key '{k}' (known: {})", known.join(", ")));
        }
        if out.iter().any(|(seen, _)| seen == k) {
            return Err(format!("'{k}' given twice"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// `value` escaped for [`parse_kv`]: commas doubled.
pub fn kv_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// `on`/`off` (and their synonyms) for `key`.
pub fn parse_on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{key}={v}: use on or off")),
    }
}

/// `iops=` or `bw=`: a rate per second ([`parse_rate`]), its key named in
/// the error.
fn parse_limit(key: &str, v: &str) -> Result<u64, String> {
    parse_rate(v).map_err(|e| format!("{key}={v}: {e}"))
}

pub fn parse_disk(s: &str) -> Result<DiskConfig, ConfigError> {
    let err = |why: String| ConfigError::Disk(s.to_string(), why);
    if !s.contains('=') && !s.is_empty() {
        return Err(err(format!(
            "a disk is path=PATH[,readonly=on][,iops=N][,bw=BYTES]: did you mean --disk path={}?",
            kv_escape(s)
        )));
    }
    let mut path = None;
    let mut readonly = false;
    let mut limit = RateLimit::default();
    for (k, v) in parse_kv(s, &["path", "readonly", "iops", "bw"]).map_err(err)? {
        match k.as_str() {
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            "path" => return Err(err("empty path".into())),
            "iops" => limit.ops = Some(parse_limit(&k, &v).map_err(err)?),
            "bw" => limit.bytes = Some(parse_limit(&k, &v).map_err(err)?),
            _ => readonly = parse_on_off(&k, &v).map_err(err)?,
        }
    }
    let path = path.ok_or_else(|| err("path=PATH is required".into()))?;
    Ok(DiskConfig {
        path,
        readonly,
        limit,
    })
}

/// Parses the `index`th `--net`; without `mac=`, the NIC gets
/// [`MacAddr::generated`] from `pid` and `index`.
fn parse_net(s: &str, index: u8, pid: u32) -> Result<NetConfig, ConfigError> {
    let err = |why: String| ConfigError::Net(s.to_string(), why);
    if s == "user" || s.starts_with("user,") {
        return parse_user_net(s, index, pid).map_err(err);
    }
    if !s.contains('=') && tap::valid_name(s) {
        return Err(err(format!(
            "a NIC is tap=NAME[,mac=MAC][,bw=BYTES] or user[,forward=tcp:HOSTPORT:GUESTPORT]: \
             did you mean --net tap={s}?"
        )));
    }
    let mut name = None;
    let mut mac = None;
    let mut bw = None;
    for (k, v) in parse_kv(s, &["tap", "mac", "bw"]).map_err(err)? {
        match k.as_str() {
            "tap" if tap::valid_name(&v) => name = Some(v),
            "tap" => {
                return Err(err(format!(
                    "'{v}' is not an interface name (1 to 15 characters, no '/', ':', '%' \
                     or whitespace)"
                )))
            }
            "bw" => bw = Some(parse_limit(&k, &v).map_err(err)?),
            _ => mac = Some(v.parse::<MacAddr>().map_err(err)?),
        }
    }
    let tap = name.ok_or_else(|| err("tap=NAME is required (or `user`)".into()))?;
    Ok(NetConfig {
        backend: NetBackend::Tap(tap),
        mac: mac.unwrap_or_else(|| MacAddr::generated(pid, index)),
        bw,
    })
}

/// `user[,forward=tcp:H:G]...[,mac=MAC][,bw=BYTES]`: `forward` may repeat.
fn parse_user_net(s: &str, index: u8, pid: u32) -> Result<NetConfig, String> {
    let mut forwards: Vec<PortForward> = Vec::new();
    let mut rest = Vec::new();
    for item in s.split(',').skip(1) {
        match item.strip_prefix("forward=") {
            Some(f) => {
                let f: PortForward = f.parse()?;
                if let Some(o) = forwards.iter().find(|o| o.host == f.host) {
                    return Err(format!(
                        "host port {} is forwarded twice (forward={o} and forward={f})",
                        f.host
                    ));
                }
                forwards.push(f);
            }
            None => rest.push(item),
        }
    }
    let mut mac = None;
    let mut bw = None;
    if !rest.is_empty() {
        for (k, v) in parse_kv(&rest.join(","), &["mac", "bw", "forward"])? {
            match k.as_str() {
                "bw" => bw = Some(parse_limit(&k, &v)?),
                _ => mac = Some(v.parse::<MacAddr>()?),
            }
        }
    }
    Ok(NetConfig {
        backend: NetBackend::User(forwards),
        mac: mac.unwrap_or_else(|| MacAddr::generated(pid, index)),
        bw,
    })
}

impl NetConfig {
    /// This NIC as `--net` takes it.
    pub fn to_arg(&self) -> String {
        let mut a = match &self.backend {
            NetBackend::Tap(name) => format!("tap={name}"),
            NetBackend::User(forwards) => {
                let mut a = "user".to_string();
                for f in forwards {
                    a.push_str(&format!(",forward={f}"));
                }
                a
            }
        };
        a.push_str(&format!(",mac={}", self.mac));
        if let Some(bw) = self.bw {
            a.push_str(&format!(",bw={bw}"));
        }
        a
    }
}

/// What this host must have for `nets`' user-mode NICs (passt, a default
/// route, the forwarded host ports free): checked before anything is
/// built or booted.
pub fn check_nets_available(nets: &[NetConfig]) -> Result<(), ConfigError> {
    for n in nets {
        if let NetBackend::User(forwards) = &n.backend {
            crate::devices::virtio::net::passt::preflight(forwards)
                .map_err(|e| ConfigError::NetUnavailable(e.to_string()))?;
        }
    }
    Ok(())
}

/// What `fs` needs of this host now: each backend's socket, or each
/// shared directory, is there (virtiofsd itself is the caller's to find).
/// Checked before anything is built or booted.
pub fn check_fs_available(fs: &[FsConfig]) -> Result<(), ConfigError> {
    use crate::devices::virtio::fs::{check_socket, FsBackend};
    for f in fs {
        match &f.backend {
            FsBackend::Socket(socket) => check_socket(socket).map_err(|why| {
                ConfigError::FsUnavailable(format!(
                    "tag {}: no vhost-user socket at {why} (start virtiofsd first: \
                     virtiofsd --socket-path PATH --shared-dir DIR)",
                    f.tag
                ))
            })?,
            FsBackend::Dir { path, .. } if !path.is_dir() => {
                return Err(ConfigError::FsUnavailable(format!(
                    "tag {}: {} is not a directory",
                    f.tag,
                    path.display()
                )))
            }
            FsBackend::Dir { .. } => {}
        }
    }
    Ok(())
}

/// All `--net`s: no TAP, MAC or forwarded host port used twice.
pub fn parse_nets(args: &[String], pid: u32) -> Result<Vec<NetConfig>, ConfigError> {
    let mut nets: Vec<NetConfig> = Vec::with_capacity(args.len());
    for (i, s) in args.iter().enumerate() {
        let index = u8::try_from(i).map_err(|_| ConfigError::TooManyDevices(args.len()))?;
        let n = parse_net(s, index, pid)?;
        for other in &nets {
            let clash = match (&other.backend, &n.backend) {
                (NetBackend::Tap(a), NetBackend::Tap(b)) if a == b => Some(format!("TAP '{a}'")),
                (NetBackend::User(a), NetBackend::User(b)) => a
                    .iter()
                    .find(|f| b.iter().any(|g| g.host == f.host))
                    .map(|f| format!("host port {}", f.host)),
                _ => None,
            }
            .or_else(|| (other.mac == n.mac).then(|| format!("MAC {}", n.mac)));
            if let Some(what) = clash {
                return Err(ConfigError::Net(
                    s.clone(),
                    format!("{what} is already used by another --net"),
                ));
            }
        }
        nets.push(n);
    }
    Ok(nets)
}

/// The kernel command line word that asks the default guest's init to
/// configure interface `ifname` by DHCP (a user-mode NIC: passt answers).
pub fn dhcp_word(ifname: &str) -> String {
    format!("kvmini.dhcp={ifname}")
}

/// One [`dhcp_word`] for each user-mode NIC (the `n`th NIC is `ethn`).
pub fn dhcp_words(nets: &[NetConfig]) -> Vec<String> {
    nets.iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.backend, NetBackend::User(_)))
        .map(|(i, _)| dhcp_word(&format!("eth{i}")))
        .collect()
}

/// A fully validated VM description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub memory_bytes: u64,
    pub vcpus: u8,
    /// The whole kernel command line: defaults, then the user's extras.
    pub cmdline: String,
    pub console: ConsoleConfig,
    pub accel: Accel,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    /// Shared host directories (virtio-fs over vhost-user).
    pub fs: Vec<FsConfig>,
    /// How long a guest with ACPI gets to shut down after its power button
    /// was pressed (SIGTERM, `exec --timeout`).
    pub shutdown_timeout: Duration,
    /// Whether the VMM's threads run under their seccomp filters.
    pub seccomp: Seccomp,
}

/// Bytes of the kernel command line kept free for each virtio device's
/// `virtio_mmio.device=4K@0xd0001000:6` word, which kvmini appends.
pub const CMDLINE_BYTES_PER_DEVICE: usize = 40;

/// Linux hands init at most this many words after `--` (MAX_INIT_ARGS);
/// one more makes the guest kernel panic ("Too many boot init vars").
pub const MAX_INIT_WORDS: usize = 32;

impl VmConfig {
    /// Every virtio device the VM gets: its disks and NICs, plus `consoles`
    /// virtio-consoles (`kvmini exec`'s streams). The one count that decides
    /// whether the devices fit (each needs its own IRQ and MMIO slot) and
    /// how much command line they take.
    pub fn virtio_devices(&self, consoles: usize) -> usize {
        self.disks.len() + self.nets.len() + self.fs.len() + consoles
    }

    /// The words kvmini adds before `--` for the default guest's init:
    /// DHCP for user-mode NICs, mounts for shares.
    pub fn guest_words(&self) -> Vec<String> {
        let mut words = dhcp_words(&self.nets);
        words.extend(self.fs.iter().map(FsConfig::cmdline_word));
        words
    }

    /// Checks what only the whole VM can tell: the devices fit, and the
    /// command line with their words fits the kernel's buffer and gives init
    /// no more words than Linux allows.
    pub fn check(&self, consoles: usize) -> Result<(), ConfigError> {
        let devices = self.virtio_devices(consoles);
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        crate::devices::virtio::fs::check_tags(&self.fs)?;
        let words: usize = self.guest_words().iter().map(|w| w.len() + 1).sum();
        check_cmdline(&self.cmdline, devices, words)
    }
}

/// The whole kernel command line (`cmdline`, kvmini's defaults included)
/// with `devices` virtio devices' words and `extra` more bytes (kvmini's
/// other words) appended: printable ASCII, within the kernel's buffer, at
/// most [`MAX_INIT_WORDS`] words for init.
pub fn check_cmdline(cmdline: &str, devices: usize, extra: usize) -> Result<(), ConfigError> {
    if let Some(c) = cmdline.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(ConfigError::Cmdline(format!(
            "{c:?} is not printable ASCII (tabs and newlines included)"
        )));
    }
    let room =
        (layout::CMDLINE_MAX_SIZE - 1).saturating_sub(devices * CMDLINE_BYTES_PER_DEVICE + extra);
    if cmdline.len() > room {
        return Err(ConfigError::Cmdline(format!(
            "{} bytes with kvmini's defaults, more than the {room} that fit \
             (the kernel takes {} with the {devices} device(s)' own words)",
            cmdline.len(),
            layout::CMDLINE_MAX_SIZE - 1
        )));
    }
    let init_words = cmdline
        .split_once(" -- ")
        .map_or(0, |(_, init)| init.split_whitespace().count());
    if init_words > MAX_INIT_WORDS {
        return Err(ConfigError::Cmdline(format!(
            "{init_words} words after `--`; Linux gives init at most {MAX_INIT_WORDS} (more \
             panic the guest): put a longer command in a script"
        )));
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    Accel(String),
    NoHardwareVirt,
    Disk(String, String),
    Net(String, String),
    /// A well-formed `--net user` this host cannot provide now (no passt, a
    /// forwarded port taken): not a usage error.
    NetUnavailable(String),
    /// A malformed `--fs`.
    Fs(String, String),
    /// A well-formed `--fs` whose backend is not there now (no socket).
    FsUnavailable(String),
    TooManyDevices(usize),
    MemorySize(String),
    MemoryTooSmall(u64),
    MemoryTooLarge {
        requested: u64,
        host: u64,
    },
    Vcpus(u32),
    Console(String),
    NoKernel,
    KernelMissing(PathBuf, String),
    InitrdMissing(PathBuf, String),
    RootfsMissing(PathBuf, String),
    ConsoleFile(PathBuf, String),
    ShutdownTimeout(String),
    Cmdline(String),
    Seccomp(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accel(s) => write!(
                f,
                "invalid --accel '{s}': use auto, kvm, tcg, emulated or kvm-any"
            ),
            Self::NoHardwareVirt => write!(
                f,
                "--accel kvm: this host has no hardware virtualization (no vmx/svm in \
                 /proc/cpuinfo), so /dev/kvm cannot run a Linux guest; use --accel auto \
                 or tcg to run it on QEMU's software CPU"
            ),
            Self::Disk(s, why) => write!(f, "invalid --disk '{s}': {why}"),
            Self::Net(s, why) => write!(f, "invalid --net '{s}': {why}"),
            Self::NetUnavailable(why) => write!(f, "--net user: {why}"),
            Self::Fs(s, why) => write!(f, "invalid --fs '{s}': {why}"),
            Self::FsUnavailable(why) => write!(f, "--fs: {why}"),
            Self::TooManyDevices(n) => write!(
                f,
                "{n} disks, NICs and shares is too many: at most {MAX_VIRTIO_DEVICES} virtio devices fit"
            ),
            Self::MemorySize(s) => write!(
                f,
                "invalid --memory '{s}': expected a size such as 512M, 2G or 131072K"
            ),
            Self::MemoryTooSmall(b) => write!(
                f,
                "--memory {} MiB is too small: a Linux guest needs at least {} MiB",
                b >> 20,
                MIN_MEMORY >> 20
            ),
            Self::MemoryTooLarge { requested, host } => write!(
                f,
                "--memory {} MiB is more than this host has ({} MiB of RAM and swap)",
                requested >> 20,
                host >> 20
            ),
            Self::Vcpus(n) => write!(f, "--cpus {n} is out of range: use 1 to {MAX_VCPUS}"),
            Self::Console(s) => write!(f, "invalid --console '{s}': use stdout, none or file=PATH"),
            Self::NoKernel => write!(f, "no kernel: pass --kernel PATH"),
            Self::KernelMissing(p, e) => {
                write!(f, "cannot read kernel '{}': {e}", p.display())
            }
            Self::InitrdMissing(p, e) => {
                write!(f, "cannot read initrd '{}': {e}", p.display())
            }
            Self::Cmdline(why) => write!(f, "invalid --cmdline: {why}"),
            Self::RootfsMissing(p, e) => {
                write!(f, "cannot read --rootfs '{}': {e}", p.display())
            }
            Self::ConsoleFile(p, e) => write!(
                f,
                "invalid --console file={}: cannot write it ({e})",
                p.display()
            ),
            Self::Seccomp(s) => write!(
                f,
                "invalid --seccomp '{s}': use on (the default) or off (no filters, for debugging)"
            ),
            Self::ShutdownTimeout(s) => write!(
                f,
                "invalid --shutdown-timeout '{s}': use seconds, or a number with s, m or h \
                 (e.g. 30s, 2m; 0 kills the guest at once)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A duration: seconds, or a number with s, m or h; 0 is allowed.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b's') => (&t[..t.len() - 1], 1),
        Some(b'm') => (&t[..t.len() - 1], 60),
        Some(b'h') => (&t[..t.len() - 1], 3600),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Duration::from_secs)
}

/// Parses a size such as `512M`, `2G`, `131072K`, `1048576B` or `256`
/// (bare numbers are MiB, as with QEMU's `-m`).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::MemorySize(s.to_string());
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(err()),
            };
            (&t[..i], shift)
        }
        _ => (t, 20),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// `s` as one single-quoted POSIX sh word (`'` becomes `'\''`): guest
/// scripts and command lines built from user strings quote every one.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `--console`: `stdout`, `none` or `file=PATH`.
pub fn parse_console(s: &str) -> Result<ConsoleConfig, ConfigError> {
    match s {
        "stdout" => Ok(ConsoleConfig::Stdout),
        "none" => Ok(ConsoleConfig::None),
        _ => match s.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(ConsoleConfig::File(PathBuf::from(p))),
            _ => Err(ConfigError::Console(s.to_string())),
        },
    }
}

/// Checks that the console file can be written (opened to append, created
/// if missing: nothing it holds is lost before the VM runs).
pub fn check_console(console: &ConsoleConfig) -> Result<(), ConfigError> {
    if let ConsoleConfig::File(p) = console {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .map_err(|e| ConfigError::ConsoleFile(p.clone(), e.to_string()))?;
    }
    Ok(())
}

/// Host RAM plus swap in bytes, from /proc/meminfo; `None` if unreadable.
pub fn host_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some(meminfo_total(&info))
}

fn meminfo_total(info: &str) -> u64 {
    info.lines()
        .filter(|l| l.starts_with("MemTotal:") || l.starts_with("SwapTotal:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| kib << 10)
        .sum()
}

pub fn check_readable(path: &PathBuf) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("131072K").unwrap(), 128 << 20);
        assert_eq!(parse_size("256").unwrap(), 256 << 20);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        for bad in [
            "",
            "M",
            "12X",
            "-1G",
            "1.5G",
            "99999999999999999999G",
            "1 G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn consoles() {
        assert_eq!(parse_console("stdout").unwrap(), ConsoleConfig::Stdout);
        assert_eq!(parse_console("none").unwrap(), ConsoleConfig::None);
        assert_eq!(
            parse_console("file=/tmp/x").unwrap(),
            ConsoleConfig::File("/tmp/x".into())
        );
        assert!(parse_console("file=").is_err());
        assert!(parse_console("stderr").is_err());
    }

    #[test]
    fn accel_modes() {
        use Accel::*;
        assert_eq!(Accel::parse("auto"), Ok(Auto));
        assert_eq!(Accel::parse("kvm-any"), Ok(KvmAny));
        assert_eq!(Accel::parse("tcg"), Ok(Tcg));
        assert!(Accel::parse("qemu").is_err());
        assert_eq!(Auto.resolve(true), Ok(true));
        assert_eq!(Auto.resolve(false), Ok(false));
        assert_eq!(Kvm.resolve(true), Ok(true));
        assert_eq!(Kvm.resolve(false), Err(ConfigError::NoHardwareVirt));
        assert_eq!(KvmAny.resolve(false), Ok(true));
        assert_eq!(Emulated.resolve(true), Ok(false));
        assert_eq!(Tcg.resolve(true), Ok(false));
        for a in [Auto, Kvm, KvmAny, Emulated, Tcg] {
            assert_eq!(Accel::parse(a.name()), Ok(a));
        }
    }

    #[test]
    fn disks() {
        assert_eq!(
            parse_disk("path=/a.img").unwrap(),
            DiskConfig {
                path: "/a.img".into(),
                readonly: false,
                limit: RateLimit::default(),
            }
        );
        assert_eq!(
            parse_disk("path=/a.img,readonly=on").unwrap(),
            DiskConfig {
                path: "/a.img".into(),
                readonly: true,
                limit: RateLimit::default(),
            }
        );
        assert_eq!(
            parse_disk("path=/a.img,iops=500,bw=50M").unwrap().limit,
            RateLimit {
                ops: Some(500),
                bytes: Some(50 << 20)
            }
        );
        for (bad, says) in [
            ("path=/a,iops=0", "iops=0: a rate of 0"),
            ("path=/a,bw=fast", "bw=fast: 'fast' is not a rate"),
            ("path=/a,bw=1.5M", "not a rate"),
            ("path=/a,iops=1,iops=2", "'iops' given twice"),
        ] {
            let e = parse_disk(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("--disk"), "{bad}: {e}");
        }
        for bad in [
            "",
            "/a.img",
            "path=",
            "readonly=on",
            "path=/a,ro=on",
            "path=/a,readonly=maybe",
            "path=/a,path=/b",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn nets() {
        let n = parse_net("tap=tap0,mac=52:54:00:12:34:56", 0, 1).unwrap();
        assert_eq!(n.backend, NetBackend::Tap("tap0".into()));
        assert_eq!(n.mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(n.bw, None);
        assert_eq!(
            parse_net("tap=tap0,bw=10M", 0, 1).unwrap().bw,
            Some(10 << 20)
        );
        let e = parse_net("tap=tap0,bw=0", 0, 1).unwrap_err().to_string();
        assert!(e.contains("--net") && e.contains("bw=0"), "{e}");
        let e = parse_net("tap=tap0,iops=5", 0, 1).unwrap_err().to_string();
        assert!(e.contains("unknown key 'iops'"), "{e}");
        // The default MAC differs per NIC and per process.
        let a = parse_net("tap=tap0", 0, 1000).unwrap().mac;
        assert_eq!(a, MacAddr::generated(1000, 0));
        assert_ne!(a, parse_net("tap=tap1", 1, 1000).unwrap().mac);
        assert_ne!(a, parse_net("tap=tap0", 0, 1001).unwrap().mac);
        for bad in [
            "",
            "tap0",
            "tap=",
            "mac=52:54:00:12:34:56",
            "tap=tap0,mac=nope",
            "tap=tap0,mac=01:00:5e:00:00:01",
            "tap=tap0,model=e1000",
            "tap=tap0,tap=tap1",
            "tap=much-too-long-name",
            "tap=a/b",
        ] {
            assert!(parse_net(bad, 0, 1).is_err(), "{bad:?} should be rejected");
        }
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let two = parse_nets(&list(&["tap=a", "tap=b"]), 7).unwrap();
        assert_ne!(two[0].mac, two[1].mac);
        assert!(parse_nets(&list(&["tap=a", "tap=a"]), 7).is_err());
        assert!(parse_nets(
            &list(&["tap=a,mac=52:54:00:00:00:01", "tap=b,mac=52:54:00:00:00:01"]),
            7
        )
        .is_err());
    }

    #[test]
    fn user_nets() {
        let fw = |host, guest| PortForward { host, guest };
        let n = parse_net("user", 0, 1).unwrap();
        assert_eq!(n.backend, NetBackend::User(vec![]));
        assert_eq!(n.mac, MacAddr::generated(1, 0));
        let n = parse_net(
            "user,forward=tcp:8080:80,mac=52:54:00:12:34:56,forward=tcp:2222:22,bw=1M",
            0,
            1,
        )
        .unwrap();
        assert_eq!(
            n.backend,
            NetBackend::User(vec![fw(8080, 80), fw(2222, 22)])
        );
        assert_eq!(n.mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(n.bw, Some(1 << 20));
        // What vm_args() passes on parses back to the same NIC.
        assert_eq!(parse_net(&n.to_arg(), 0, 99).unwrap(), n);
        for bad in [
            "user,",
            "user,forward=8080:80",
            "user,forward=tcp:8080",
            "user,forward=udp:53:53",
            "user,forward=tcp:0:80",
            "user,forward=tcp:1:2,forward=tcp:1:3",
            "user,tap=t0",
            "user,mac=1,mac=2",
            "users",
        ] {
            assert!(parse_net(bad, 0, 1).is_err(), "{bad:?} should be rejected");
        }
        let e = parse_net("user,forward=tcp:1:2,forward=tcp:1:3", 0, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("host port 1 is forwarded twice"), "{e}");
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Two user NICs are fine; the same host port on both is not.
        assert_eq!(
            parse_nets(&list(&["user", "user", "tap=t0"]), 7)
                .unwrap()
                .len(),
            3
        );
        let e = parse_nets(&list(&["user,forward=tcp:5:6", "user,forward=tcp:5:7"]), 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("host port 5 is already used"), "{e}");
        // Each user NIC asks the guest for DHCP on its interface.
        let nets = parse_nets(&list(&["tap=t0", "user", "user"]), 7).unwrap();
        assert_eq!(dhcp_words(&nets), ["kvmini.dhcp=eth1", "kvmini.dhcp=eth2"]);
    }

    #[test]
    fn meminfo() {
        let info = "MemTotal:       1024 kB\nMemFree: 5 kB\nSwapTotal:  2048 kB\n";
        assert_eq!(meminfo_total(info), 3072 << 10);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration(" 45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "s", "-1", "1d", "1.5s", "99999999999999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sh_quoting_survives_a_real_shell() {
        let nasty = [
            "plain",
            "it's",
            "a b\tc",
            "$(rm -rf /) `x` $HOME \\ \" ;|&<>*?[",
            "line1\nline2",
            "",
            "'",
        ];
        let script = format!(
            "for a in {}; do printf '%s\\0' \"$a\"; done",
            nasty.map(sh_quote).join(" ")
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let expected: Vec<u8> = nasty
            .iter()
            .flat_map(|a| [a.as_bytes(), b"\0"].concat())
            .collect();
        assert_eq!(out.stdout, expected);
    }
}

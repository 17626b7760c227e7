//! The QEMU command line of the direct software-CPU engine: QEMU's
//! `microvm` machine, as close to kvmini's own as QEMU allows. No PCI, no
//! ACPI, no firmware tables beyond the MP table, virtio-mmio devices the
//! kernel learns from `virtio_mmio.device=` words (we put them before
//! `--`, where kernel parameters end), the 8250 serial port as the console
//! (ttyS0), an i8042 for `reboot=k`, the CMOS RTC, and the disks in
//! `--disk` order (/dev/vda, /dev/vdb, ...). `kvmini exec` adds one
//! virtio-serial device with four console ports: /dev/hvc0..3 in the guest,
//! the layout exec's guest init expects.
//!
//! Two of kvmini's own protections become QEMU's: a disk's `iops=`/`bw=`
//! its `-drive` throttling (a bucket of one second's worth, as kvmini's
//! token bucket), and `--seccomp on` QEMU's seccomp sandbox (`-sandbox`),
//! since QEMU's threads, not kvmini's, serve the guest here.

use std::os::unix::io::RawFd;
use std::path::Path;

use crate::config::{ConsoleConfig, DiskConfig, Seccomp, VmConfig};
use crate::qemu::qemu_path;

/// Where microvm's virtio-mmio transports lie: transport N at
/// `MMIO_BASE + N * MMIO_SIZE`, on IRQ `IRQ_BASE + N` (QEMU 7.2, one
/// IO-APIC).
const MMIO_BASE: u64 = 0xfeb0_0000;
const MMIO_SIZE: u64 = 0x200;
const IRQ_BASE: u64 = 5;

/// The transports kvmini uses, in guest order. Of microvm's eight, 3 shares
/// IRQ 8 with the RTC and 7 shares IRQ 12 with the i8042's mouse: a device
/// lowering a shared line could swallow a virtio interrupt.
const TRANSPORTS: [u64; 6] = [0, 1, 2, 4, 5, 6];

/// How many virtio devices (disks, exec's console device) fit.
pub const MAX_DEVICES: usize = TRANSPORTS.len();

/// exec's console ports, in /dev/hvcN order.
pub const EXEC_PORTS: [&str; 4] = ["stdout", "stderr", "status", "share"];

/// Where QEMU puts what kvmini reads afterwards.
pub struct Logs<'a> {
    /// Everything the guest wrote to its console (`logfile=`).
    pub console: &'a Path,
    /// QEMU's CPU-reset log (`-d cpu_reset`): says "Triple fault".
    pub resets: &'a Path,
}

/// The QEMU arguments that run `config` (its console as `console` says;
/// `interactive`: stdin is a terminal, give it QEMU's Ctrl-A multiplexer).
/// With `exec_ports`, the virtio-serial device with exec's four console
/// ports on the chardevs of those ids (which the caller adds).
/// `net_fds`: for each user-mode NIC in order, the descriptor of its
/// passt socket (QEMU's `stream` netdev on it).
pub fn args(
    config: &VmConfig,
    console: &ConsoleConfig,
    interactive: bool,
    logs: &Logs,
    exec_ports: bool,
    net_fds: &[RawFd],
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-M",
        "microvm,acpi=off,auto-kernel-cmdline=off",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        // Reset (reboot=k, a triple fault, panic=N) ends QEMU.
        "-no-reboot",
        "-device",
        "i8042",
        "-d",
        "cpu_reset",
    ]
    .map(String::from)
    .to_vec();
    if config.seccomp == Seccomp::On {
        a.extend(["-sandbox".into(), SANDBOX.into()]);
    }
    a.extend([
        "-D".into(),
        logs.resets.to_string_lossy().into_owned(),
        "-m".into(),
        memory_arg(config.memory_bytes),
        "-smp".into(),
        config.vcpus.to_string(),
    ]);
    let log = format!("logfile={}", qemu_path(logs.console));
    let chardev = match console {
        // signal=off: Ctrl-C goes to the guest, as with hardware KVM.
        ConsoleConfig::Stdout if interactive => format!("stdio,id=con,mux=on,signal=off,{log}"),
        ConsoleConfig::Stdout => format!("stdio,id=con,signal=off,{log}"),
        ConsoleConfig::File(p) => format!("file,id=con,path={},{log}", qemu_path(p)),
        ConsoleConfig::None => format!("null,id=con,{log}"),
    };
    a.extend([
        "-chardev".into(),
        chardev,
        "-serial".into(),
        "chardev:con".into(),
    ]);
    if interactive && *console == ConsoleConfig::Stdout {
        // The multiplexer's monitor: Ctrl-A x quits, Ctrl-A c the monitor.
        a.extend(["-mon".into(), "chardev=con,mode=readline".into()]);
    }
    let mut slots = TRANSPORTS.iter();
    let mut words = Vec::new();
    let mut place = |a: &mut Vec<String>, device: String| {
        // Callers check the count first (`MAX_DEVICES`); a device past the
        // last transport is left to QEMU to refuse.
        let n = slots.next().copied().unwrap_or(TRANSPORTS.len() as u64 + 2);
        words.push(format!(
            "virtio_mmio.device=512@{:#x}:{}",
            MMIO_BASE + n * MMIO_SIZE,
            IRQ_BASE + n
        ));
        a.extend([
            "-device".into(),
            format!("{device},bus=virtio-mmio-bus.{n}"),
        ]);
    };
    for (i, d) in config.disks.iter().enumerate() {
        // Raw; cache=writeback: each guest write goes to the user's file
        // (the host's page cache) as it is made, and the guest's flushes
        // (fsync, sync) become fdatasync on it.
        a.extend([
            "-drive".into(),
            format!(
                "file={},if=none,id=disk{i},format=raw,cache=writeback{}{}",
                qemu_path(&d.path),
                if d.readonly { ",readonly=on" } else { "" },
                throttling(d)
            ),
        ]);
        place(&mut a, format!("virtio-blk-device,drive=disk{i}"));
    }
    let mut fds = net_fds.iter();
    for (i, n) in config.nets.iter().enumerate() {
        // The caller refuses TAP NICs here; a missing descriptor is left to
        // QEMU to refuse.
        let fd = fds.next().map_or(-1, |&fd| fd);
        a.extend([
            "-netdev".into(),
            format!("stream,id=net{i},server=off,addr.type=fd,addr.str={fd}"),
        ]);
        place(
            &mut a,
            format!("virtio-net-device,netdev=net{i},mac={}", n.mac),
        );
    }
    if exec_ports {
        place(
            &mut a,
            "virtio-serial-device,id=kvmini-ports,max_ports=4".into(),
        );
        for (nr, name) in EXEC_PORTS.iter().enumerate() {
            a.extend([
                "-device".into(),
                format!("virtconsole,bus=kvmini-ports.0,nr={nr},chardev={name},name=kvmini.{name}"),
            ]);
        }
    }
    a.extend([
        "-kernel".into(),
        config.kernel.to_string_lossy().into_owned(),
    ]);
    if let Some(i) = &config.initrd {
        a.extend(["-initrd".into(), i.to_string_lossy().into_owned()]);
    }
    words.extend(crate::config::dhcp_words(&config.nets));
    a.extend(["-append".into(), with_kernel_words(&config.cmdline, &words)]);
    a
}

/// QEMU's seccomp sandbox for `--seccomp on`: its default filter (no
/// obsolete system calls) plus no privilege changes, no new processes or
/// programs, no scheduler or resource-limit changes; QEMU as kvmini runs
/// it needs none of them. A call outside it kills QEMU with SIGSYS.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// A disk's `iops=`/`bw=` as QEMU's `-drive` throttling: each limit as the
/// average and the burst rate (with QEMU's default burst length of one
/// second, a bucket of one second's worth, as kvmini's own).
fn throttling(d: &DiskConfig) -> String {
    let mut t = String::new();
    for (key, limit) in [("iops-total", d.limit.ops), ("bps-total", d.limit.bytes)] {
        if let Some(n) = limit {
            t.push_str(&format!(",throttling.{key}={n},throttling.{key}-max={n}"));
        }
    }
    t
}

/// `cmdline` with `words` added to the kernel's parameters: before the
/// `--` that hands the rest to init, or at the end.
pub fn with_kernel_words(cmdline: &str, words: &[String]) -> String {
    if words.is_empty() {
        return cmdline.to_string();
    }
    let words = words.join(" ");
    let padded = format!(" {cmdline}");
    match padded
        .find(" -- ")
        .or_else(|| padded.ends_with(" --").then(|| padded.len() - 3))
    {
        Some(at) => {
            let before = padded[..at].trim();
            let sep = if before.is_empty() { "" } else { " " };
            format!("{before}{sep}{words}{}", &padded[at..])
        }
        None => format!("{} {words}", cmdline.trim_end()),
    }
}

/// A byte count as `-m` takes it.
fn memory_arg(bytes: u64) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{}M", bytes >> 20)
    } else {
        format!("{}K", bytes >> 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Accel;
    use crate::devices::virtio::block::RateLimit;
    use std::time::Duration;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/k/bzImage".into(),
            initrd: Some("/k/initrd".into()),
            memory_bytes: 256 << 20,
            vcpus: 2,
            cmdline: "console=ttyS0 reboot=k panic=1 -- echo a -- b".into(),
            console: ConsoleConfig::Stdout,
            accel: Accel::Tcg,
            disks: vec![
                DiskConfig {
                    path: "/d/a,b.img".into(),
                    readonly: false,
                    limit: RateLimit::default(),
                },
                DiskConfig {
                    path: "/d/ro.img".into(),
                    readonly: true,
                    limit: RateLimit::default(),
                },
            ],
            nets: vec![],
            fs: vec![],
            shutdown_timeout: Duration::from_secs(30),
            seccomp: Seccomp::On,
        }
    }

    fn value_after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn kernel_words_go_before_init_args() {
        let w = ["x=1".to_string(), "y=2".to_string()];
        assert_eq!(
            with_kernel_words("a b -- c -- d", &w),
            "a b x=1 y=2 -- c -- d"
        );
        assert_eq!(with_kernel_words("-- true", &w), "x=1 y=2 -- true");
        assert_eq!(with_kernel_words("a b", &w), "a b x=1 y=2");
        assert_eq!(with_kernel_words("a --", &w), "a x=1 y=2 --");
        assert_eq!(with_kernel_words("a --x b", &w), "a --x b x=1 y=2");
        assert_eq!(with_kernel_words("a -- b", &[]), "a -- b");
    }

    #[test]
    fn user_nics_get_passts_sockets_and_ask_for_dhcp() {
        let logs = Logs {
            console: Path::new("/t/console"),
            resets: Path::new("/t/resets"),
        };
        let mut c = config();
        c.disks.truncate(1);
        c.nets = crate::config::parse_nets(
            &[
                "user,mac=52:54:00:00:00:07".into(),
                "user,forward=tcp:8080:80".into(),
            ],
            1,
        )
        .unwrap();
        let a = args(&c, &ConsoleConfig::None, false, &logs, false, &[41, 42]);
        assert_eq!(
            value_after(&a, "-netdev"),
            [
                "stream,id=net0,server=off,addr.type=fd,addr.str=41",
                "stream,id=net1,server=off,addr.type=fd,addr.str=42"
            ]
        );
        let devices = value_after(&a, "-device");
        assert_eq!(
            devices[2],
            "virtio-net-device,netdev=net0,mac=52:54:00:00:00:07,bus=virtio-mmio-bus.1"
        );
        assert!(devices[3].starts_with("virtio-net-device,netdev=net1,mac=52:54:00:"));
        assert!(devices[3].ends_with(",bus=virtio-mmio-bus.2"));
        assert_eq!(
            value_after(&a, "-append"),
            [
                "console=ttyS0 reboot=k panic=1 virtio_mmio.device=512@0xfeb00000:5 \
              virtio_mmio.device=512@0xfeb00200:6 virtio_mmio.device=512@0xfeb00400:7 \
              kvmini.dhcp=eth0 kvmini.dhcp=eth1 -- echo a -- b"
            ]
        );
    }

    #[test]
    fn disks_in_order_on_free_transports_with_their_words() {
        let logs = Logs {
            console: Path::new("/t/console"),
            resets: Path::new("/t/resets"),
        };
        let a = args(&config(), &ConsoleConfig::None, false, &logs, true, &[]);
        assert_eq!(
            value_after(&a, "-drive"),
            [
                "file=/d/a,,b.img,if=none,id=disk0,format=raw,cache=writeback",
                "file=/d/ro.img,if=none,id=disk1,format=raw,cache=writeback,readonly=on"
            ]
        );
        let devices = value_after(&a, "-device");
        assert_eq!(devices[0], "i8042");
        assert_eq!(
            devices[1],
            "virtio-blk-device,drive=disk0,bus=virtio-mmio-bus.0"
        );
        assert_eq!(
            devices[2],
            "virtio-blk-device,drive=disk1,bus=virtio-mmio-bus.1"
        );
        assert!(
            devices[3].starts_with("virtio-serial-device,")
                && devices[3].ends_with("bus=virtio-mmio-bus.2")
        );
        assert!(devices[4].starts_with("virtconsole,bus=kvmini-ports.0,nr=0,chardev=stdout,"));
        assert!(devices[7].starts_with("virtconsole,bus=kvmini-ports.0,nr=3,chardev=share,"));
        assert_eq!(
            value_after(&a, "-append"),
            [
                "console=ttyS0 reboot=k panic=1 virtio_mmio.device=512@0xfeb00000:5 \
              virtio_mmio.device=512@0xfeb00200:6 virtio_mmio.device=512@0xfeb00400:7 \
              -- echo a -- b"
            ]
        );
        assert_eq!(
            value_after(&a, "-chardev"),
            ["null,id=con,logfile=/t/console"]
        );
        assert_eq!(value_after(&a, "-m"), ["256M"]);
        assert_eq!(value_after(&a, "-smp"), ["2"]);
        assert!(!a.contains(&"-mon".to_string()));
    }

    #[test]
    fn console_destinations() {
        let logs = Logs {
            console: Path::new("/t/c"),
            resets: Path::new("/t/r"),
        };
        let c = config();
        let tty = args(&c, &ConsoleConfig::Stdout, true, &logs, false, &[]);
        assert_eq!(
            value_after(&tty, "-chardev"),
            ["stdio,id=con,mux=on,signal=off,logfile=/t/c"]
        );
        assert_eq!(value_after(&tty, "-mon"), ["chardev=con,mode=readline"]);
        let pipe = args(&c, &ConsoleConfig::Stdout, false, &logs, false, &[]);
        assert_eq!(
            value_after(&pipe, "-chardev"),
            ["stdio,id=con,signal=off,logfile=/t/c"]
        );
        let file = args(
            &c,
            &ConsoleConfig::File("/o/con".into()),
            false,
            &logs,
            false,
            &[],
        );
        assert_eq!(
            value_after(&file, "-chardev"),
            ["file,id=con,path=/o/con,logfile=/t/c"]
        );
        assert!(!file.iter().any(|a| a.starts_with("virtio-serial")));
    }

    #[test]
    fn the_transports_avoid_shared_irqs() {
        assert!(!TRANSPORTS.contains(&3) && !TRANSPORTS.contains(&7));
        assert!(TRANSPORTS
            .iter()
            .all(|n| IRQ_BASE + n != 8 && IRQ_BASE + n != 12));
    }

    #[test]
    fn disk_rate_limits_become_qemu_throttling() {
        let logs = Logs {
            console: Path::new("/t/c"),
            resets: Path::new("/t/r"),
        };
        let mut c = config();
        c.disks[0].limit = RateLimit {
            ops: Some(500),
            bytes: None,
        };
        c.disks[1].limit = RateLimit {
            ops: Some(10),
            bytes: Some(4 << 20),
        };
        let a = args(&c, &ConsoleConfig::None, false, &logs, false, &[]);
        assert_eq!(
            value_after(&a, "-drive"),
            [
                "file=/d/a,,b.img,if=none,id=disk0,format=raw,cache=writeback,\
                 throttling.iops-total=500,throttling.iops-total-max=500",
                "file=/d/ro.img,if=none,id=disk1,format=raw,cache=writeback,readonly=on,\
                 throttling.iops-total=10,throttling.iops-total-max=10,\
                 throttling.bps-total=4194304,throttling.bps-total-max=4194304"
            ]
        );
    }

    #[test]
    fn seccomp_on_is_qemus_sandbox_and_off_runs_without() {
        let logs = Logs {
            console: Path::new("/t/c"),
            resets: Path::new("/t/r"),
        };
        let mut c = config();
        let on = args(&c, &ConsoleConfig::None, false, &logs, false, &[]);
        assert_eq!(value_after(&on, "-sandbox"), [SANDBOX]);
        c.seccomp = Seccomp::Off;
        let off = args(&c, &ConsoleConfig::None, false, &logs, false, &[]);
        assert!(!off.contains(&"-sandbox".to_string()), "{off:?}");
    }
}

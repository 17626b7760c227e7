//! The VM flags: validation (each bad value names its flag, nothing
//! expensive happens before every flag is checked) and the round trip
//! config -> flags -> config, one test per flag.

use super::*;
use clap::Parser;
use kvmini_vmm::config::MAX_VIRTIO_DEVICES;
use std::time::Duration;
use vmm_sys_util::tempfile::TempFile;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    vm: VmArgs,
}

fn parse(argv: &[String]) -> VmArgs {
    Cli::try_parse_from(std::iter::once("kvmini".to_string()).chain(argv.iter().cloned()))
        .unwrap_or_else(|e| panic!("{argv:?} does not parse back: {e}"))
        .vm
}

fn no_guest() -> Result<(PathBuf, PathBuf), String> {
    Err("the default guest was asked for".into())
}

fn config(a: &VmArgs) -> Result<VmConfig, FlagsError<String>> {
    a.to_config(ConsoleConfig::Stdout, 0, Some(1 << 40), no_guest)
}

/// VmArgs with a readable kernel.
fn with_kernel(k: &TempFile) -> VmArgs {
    VmArgs {
        kernel: Some(k.as_path().to_path_buf()),
        ..VmArgs::default()
    }
}

/// config -> vm_args -> VmArgs -> config gives the same config.
fn round_trip(a: &VmArgs) {
    let first = config(a).unwrap_or_else(|e| panic!("{a:?}: {e}"));
    let argv = vm_args(&first);
    let second = config(&parse(&argv)).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert_eq!(first, second, "lost on the way through {argv:?}");
}

#[test]
fn defaults_round_trip() {
    let k = TempFile::new().unwrap();
    round_trip(&with_kernel(&k));
    assert_eq!(
        parse(&[]),
        VmArgs::default(),
        "Default matches clap's defaults"
    );
}

#[test]
fn kernel_and_initrd_round_trip() {
    let (k, i) = (TempFile::new().unwrap(), TempFile::new().unwrap());
    let mut a = with_kernel(&k);
    a.initrd = Some(i.as_path().to_path_buf());
    round_trip(&a);
}

#[test]
fn memory_round_trips_exactly() {
    let k = TempFile::new().unwrap();
    for m in ["16M", "1536M", "131073K", "3G", "17179869184B"] {
        let mut a = with_kernel(&k);
        a.memory = m.into();
        round_trip(&a);
    }
}

#[test]
fn cpus_round_trip() {
    let k = TempFile::new().unwrap();
    for n in [1, 2, 253] {
        let mut a = with_kernel(&k);
        a.cpus = n;
        round_trip(&a);
    }
}

#[test]
fn cmdline_round_trips() {
    let k = TempFile::new().unwrap();
    for c in [
        "root=/dev/vda ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off",
        "-- echo 'a b'; ls -l",
        "quiet",
    ] {
        let mut a = with_kernel(&k);
        a.cmdline = Some(c.into());
        round_trip(&a);
    }
}

#[test]
fn accel_round_trips() {
    let k = TempFile::new().unwrap();
    for mode in ["auto", "kvm", "kvm-any", "emulated", "tcg"] {
        let mut a = with_kernel(&k);
        a.accel = mode.into();
        round_trip(&a);
    }
}

#[test]
fn disks_round_trip_with_any_path() {
    let k = TempFile::new().unwrap();
    let mut a = with_kernel(&k);
    a.disks = vec![
        "path=/tmp/a,,b.img".into(),
        "path=/tmp/c d.img,readonly=on".into(),
        "path=/tmp/e=f.img,readonly=off".into(),
    ];
    let c = config(&a).unwrap();
    assert_eq!(c.disks[0].path, PathBuf::from("/tmp/a,b.img"));
    assert!(c.disks[1].readonly);
    round_trip(&a);
}

#[test]
fn nets_round_trip_with_their_macs() {
    let k = TempFile::new().unwrap();
    let mut a = with_kernel(&k);
    // The second NIC's MAC is generated from this process's pid: it must
    // travel explicitly, or another process would generate another.
    a.nets = vec![
        "tap=tap0,mac=52:54:00:12:34:56".into(),
        "tap=tap1".into(),
        "user,forward=tcp:8080:80,forward=tcp:2222:22,bw=1M".into(),
    ];
    round_trip(&a);
    assert!(vm_args(&config(&a).unwrap())
        .iter()
        .any(|w| w.starts_with("tap=tap1,mac=52:54:00:")));
}

#[test]
fn shutdown_timeout_round_trips() {
    let k = TempFile::new().unwrap();
    for t in ["0", "45s", "2m", "1h"] {
        let mut a = with_kernel(&k);
        a.shutdown_timeout = t.into();
        round_trip(&a);
    }
}

#[test]
fn seccomp_round_trips() {
    let k = TempFile::new().unwrap();
    for mode in ["on", "off"] {
        let mut a = with_kernel(&k);
        a.seccomp = mode.into();
        round_trip(&a);
        assert!(vm_args(&config(&a).unwrap())
            .windows(2)
            .any(|w| w == ["--seccomp", mode]));
    }
    assert_eq!(config(&with_kernel(&k)).unwrap().seccomp, Seccomp::On);
}

#[test]
fn rate_limits_round_trip() {
    let k = TempFile::new().unwrap();
    let mut a = with_kernel(&k);
    a.disks = vec![
        "path=/a.img,iops=500".into(),
        "path=/b.img,bw=64M".into(),
        "path=/c.img,readonly=on,iops=10,bw=4K".into(),
    ];
    a.nets = vec!["tap=t0,bw=1G".into(), "tap=t1".into()];
    let c = config(&a).unwrap();
    assert_eq!(c.disks[1].limit.bytes, Some(64 << 20));
    assert_eq!(c.nets[0].bw, Some(1 << 30));
    round_trip(&a);
}

#[test]
fn every_flag_at_once_round_trips() {
    let (k, i) = (TempFile::new().unwrap(), TempFile::new().unwrap());
    let a = VmArgs {
        kernel: Some(k.as_path().to_path_buf()),
        initrd: Some(i.as_path().to_path_buf()),
        memory: "768M".into(),
        cpus: 3,
        cmdline: Some("root=/dev/vda -- true".into()),
        accel: "kvm-any".into(),
        disks: vec!["path=/x,,y,readonly=on,iops=7,bw=9K".into()],
        nets: vec!["tap=t0,bw=3M".into()],
        fs: vec![
            "tag=src,socket=/run/a,,b.sock".into(),
            "tag=out,socket=/tmp/o.sock,mount=/mnt/o-1".into(),
            "tag=w,dir=/x,,y,ro=on,mount=/w".into(),
        ],
        shutdown_timeout: "7s".into(),
        seccomp: "off".into(),
    };
    round_trip(&a);
}

/// Each bad value is refused with its flag's name, before the default
/// guest (minutes to build on first use) is asked for.
#[test]
fn bad_values_are_refused_before_the_default_guest() {
    type Break = fn(&mut VmArgs);
    let cases: [(&str, Break); 16] = [
        ("--memory", |a| a.memory = "1X".into()),
        ("--memory", |a| a.memory = "1.5G".into()),
        ("--cpus", |a| a.cpus = 0),
        ("--cpus", |a| a.cpus = 254),
        ("--accel", |a| a.accel = "qemu".into()),
        ("--disk", |a| a.disks = vec!["disk.img".into()]),
        ("--net", |a| a.nets = vec!["user,forward=tcp:1:0".into()]),
        ("--shutdown-timeout", |a| a.shutdown_timeout = "soon".into()),
        ("--seccomp", |a| a.seccomp = "maybe".into()),
        ("--disk", |a| a.disks = vec!["path=/a,iops=0".into()]),
        ("--net", |a| a.nets = vec!["tap=t0,bw=lots".into()]),
        ("--cmdline", |a| a.cmdline = Some("x".repeat(3000))),
        ("--fs", |a| a.fs = vec!["socket=/s".into()]),
        ("--fs", |a| a.fs = vec!["tag=a b,socket=/s".into()]),
        ("--fs", |a| {
            a.fs = vec!["tag=t,socket=/s,mount=/a/../etc".into()]
        }),
        ("--fs", |a| {
            a.fs = vec!["tag=t,socket=/s".into(), "tag=t,socket=/u".into()]
        }),
    ];
    for (flag, break_it) in cases {
        let mut a = VmArgs::default();
        break_it(&mut a);
        let asked = std::cell::Cell::new(false);
        let e = a
            .to_config(ConsoleConfig::Stdout, 0, Some(1 << 40), || {
                asked.set(true);
                no_guest()
            })
            .unwrap_err();
        assert!(!asked.get(), "{flag}: the default guest was built first");
        assert!(
            matches!(e, FlagsError::Config(_)) && e.to_string().contains(flag),
            "{flag}: {e}"
        );
    }
}

#[test]
fn messages_suggest_the_fix() {
    let a = VmArgs {
        disks: vec!["disk.img".into()],
        ..VmArgs::default()
    };
    let e = config(&a).unwrap_err().to_string();
    assert!(e.contains("did you mean --disk path=disk.img?"), "{e}");
    let a = VmArgs {
        nets: vec!["tap0".into()],
        ..VmArgs::default()
    };
    let e = config(&a).unwrap_err().to_string();
    assert!(e.contains("did you mean --net tap=tap0?"), "{e}");
    let a = VmArgs {
        nets: vec!["user,forward=8080:80".into()],
        ..VmArgs::default()
    };
    let e = config(&a).unwrap_err().to_string();
    assert!(e.contains("forward=tcp:HOSTPORT:GUESTPORT"), "{e}");
}

#[test]
fn init_words_and_cmdline_room() {
    let k = TempFile::new().unwrap();
    let mut a = with_kernel(&k);
    a.cmdline = Some(format!("--{}", " w".repeat(32)));
    assert!(config(&a).is_ok(), "32 words for init are fine");
    a.cmdline = Some(format!("--{}", " w".repeat(33)));
    let e = config(&a).unwrap_err().to_string();
    assert!(e.contains("33 words after `--`"), "{e}");
    a.cmdline = Some("a\tb".into());
    assert!(config(&a).unwrap_err().to_string().contains("--cmdline"));
    // The devices' own words count: what fits alone may not fit with them.
    a.cmdline = Some("x".repeat(1900));
    assert!(config(&a).is_ok());
    a.disks = (0..8).map(|i| format!("path=/d{i}")).collect();
    assert!(config(&a).unwrap_err().to_string().contains("--cmdline"));
}

#[test]
fn devices_are_counted_once_with_the_commands_consoles() {
    let k = TempFile::new().unwrap();
    let mut a = with_kernel(&k);
    a.nets = (0..MAX_VIRTIO_DEVICES)
        .map(|i| format!("tap=t{i}"))
        .collect();
    assert_eq!(config(&a).unwrap().nets.len(), MAX_VIRTIO_DEVICES);
    let e = a
        .to_config(ConsoleConfig::None, 1, None, no_guest)
        .unwrap_err();
    assert!(
        matches!(e, FlagsError::Config(ConfigError::TooManyDevices(n)) if n == MAX_VIRTIO_DEVICES + 1),
        "{e}"
    );
}

#[test]
fn kernel_and_memory_checks() {
    let k = TempFile::new().unwrap();
    let mut a = with_kernel(&k);
    a.memory = "0".into();
    assert!(matches!(
        config(&a),
        Err(FlagsError::Config(ConfigError::MemoryTooSmall(0)))
    ));
    a.memory = "8G".into();
    assert!(matches!(
        a.to_config(ConsoleConfig::Stdout, 0, Some(4 << 30), no_guest),
        Err(FlagsError::Config(ConfigError::MemoryTooLarge { .. }))
    ));
    a.memory = "128M".into();
    a.kernel = Some("/nonexistent/vmlinux".into());
    assert!(matches!(
        config(&a),
        Err(FlagsError::Config(ConfigError::KernelMissing(..)))
    ));
    a.kernel = Some("/".into());
    assert!(matches!(
        config(&a),
        Err(FlagsError::Config(ConfigError::KernelMissing(..)))
    ));
    a.kernel = Some(k.as_path().to_path_buf());
    a.initrd = Some("/nonexistent/initrd".into());
    assert!(matches!(
        config(&a),
        Err(FlagsError::Config(ConfigError::InitrdMissing(..)))
    ));
    // Without --kernel the default guest fills both in.
    let (dk, di) = (TempFile::new().unwrap(), TempFile::new().unwrap());
    let a = VmArgs::default();
    let c = a
        .to_config(ConsoleConfig::Stdout, 0, None, || {
            Ok::<_, String>((dk.as_path().to_path_buf(), di.as_path().to_path_buf()))
        })
        .unwrap();
    assert_eq!(
        (c.kernel.as_path(), c.initrd.as_deref()),
        (dk.as_path(), Some(di.as_path()))
    );
    assert_eq!(c.cmdline, DEFAULT_CMDLINE);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
}

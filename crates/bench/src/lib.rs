//! `kvmini bench`: the same workloads in a kvmini VM, in a crun container
//! and on the bare host, side by side (see docs/vm-vs-container.md).
//!
//! - [`env`]: the three environments (launch, watch, measure, stop);
//! - [`workloads`]: what runs and how each number is taken;
//! - [`stats`]: min/median/max; [`report`]: table and JSON; [`chart`]: PNG.
//!
//! Nothing is ever reported as a number unless it was measured: an
//! environment that cannot exist here, or a workload that cannot run in it,
//! shows "not run" with the reason; a run that failed shows why.

pub mod args;
pub mod chart;
pub mod env;
pub mod fio;
pub mod net;
pub mod report;
pub mod stats;
pub mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use vmm_sys_util::tempdir::TempDir;

pub use args::BenchArgs;
use env::container::{self, ContainerEnv};
use env::host::HostEnv;
use env::vm::VmEnv;
use env::{Env, EnvKind};
use kvmini_vmm::arch::x86_64::cpuid::host_has_hw_virt;
use kvmini_vmm::config::{self, Accel, ConsoleConfig, VmConfig};
use report::{Cell, HostInfo, Meta, Report, Row};
use stats::Summary;
use workloads::{Context, Ids, Settings, Workload};

/// `kvmini bench`'s exit codes.
pub mod code {
    /// The report is complete: every cell measured or visibly skipped.
    pub const OK: u8 = 0;
    /// The bench could not run at all (bad arguments, no guest).
    pub const ERROR: u8 = 1;
    /// The report was written, but some measurements failed (see it).
    pub const SOME_FAILED: u8 = 3;
}

/// Builds (or finds in the cache) one of kvmini's guest artefacts from its
/// build recipe, named relative to kvmini's resources (`kernel/build.sh`:
/// the kernel directory, `rootfs/build-initramfs.sh`: the initramfs, ...).
/// The `kvmini` binary provides it: it owns guest provisioning.
pub type Artefact = fn(&str) -> Result<PathBuf, String>;

/// Runs `kvmini bench`; returns the exit code.
pub fn main(args: BenchArgs, artefact: Artefact) -> u8 {
    match run(args, artefact) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvmini: error: {e}");
            code::ERROR
        }
    }
}

fn mib(s: &str, what: &str) -> Result<u64, String> {
    config::parse_size(s)
        .map(|b| b >> 20)
        .map_err(|_| format!("invalid {what} '{s}': use a size such as 256M or 4G"))
}

fn duration(s: &str, what: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!("invalid {what} '{s}': use seconds, or a number with s, m or h (90s, 10m)")
        })
}

/// Parsed and checked arguments.
#[derive(Debug)]
struct Plan {
    workloads: Vec<Workload>,
    envs: Vec<EnvKind>,
    repeat: usize,
    warmup: usize,
    settings: Settings,
    memory_mib: u64,
    /// The VM's flags, checked (its kernel path is empty until the
    /// default guest is built, when no --kernel was given).
    vm: VmConfig,
    /// Where the default guest's artefacts come from.
    artefact: Artefact,
}

fn plan(args: &BenchArgs, artefact: Artefact) -> Result<Plan, String> {
    let workloads = Workload::parse_list(&args.workloads)?;
    let mut envs = Vec::new();
    for e in args.envs.split(',').filter(|e| !e.trim().is_empty()) {
        let kind = EnvKind::parse(e)
            .ok_or_else(|| format!("unknown environment '{e}': choose from vm, container, host"))?;
        if !envs.contains(&kind) {
            envs.push(kind);
        }
    }
    if envs.is_empty() {
        return Err("no environment given (--envs vm,container,host)".into());
    }
    envs.sort();
    if args.repeat == 0 {
        return Err("--repeat must be at least 1".into());
    }
    if args.density == 0 {
        return Err("--density must be at least 1".into());
    }
    if !args.vm.disks.is_empty() || !args.vm.nets.is_empty() {
        return Err(
            "kvmini bench makes the VM's disk and NIC for its block and network workloads: \
             leave out --disk and --net"
                .into(),
        );
    }
    // exec's four consoles, the block workload's disk, the network's NIC.
    let vm = args
        .vm
        .check(ConsoleConfig::None, 6, config::host_memory_bytes())
        .map_err(|e| e.to_string())?;
    if envs.contains(&EnvKind::Vm) {
        vm.accel
            .resolve(host_has_hw_virt())
            .map_err(|e| format!("the VM environment cannot run here: {e}"))?;
    }
    for (flag, path) in [("--json", &args.json), ("--chart", &args.chart)] {
        if let Some(p) = path {
            check_output(flag, p)?;
        }
    }
    let memory_mib = vm.memory_bytes >> 20;
    let settings = Settings {
        cpu_mib: mib(&args.cpu_work, "--cpu-work")?.max(1),
        working_set_mib: mib(&args.working_set, "--working-set")?,
        density: args.density,
        budget_mib: mib(&args.budget, "--budget")?,
        run_timeout: duration(&args.timeout, "--timeout")?,
        io_mib: mib(&args.io_size, "--io-size")?,
        net_secs: duration(&args.net_time, "--net-time")?.as_secs(),
    };
    if settings.io_mib == 0 {
        return Err("--io-size must be at least 1M".into());
    }
    if settings.net_secs == 0 {
        return Err("--net-time must be at least 1s".into());
    }
    // awk doubles its string up to the working set, holding both copies at
    // the last step: up to twice the working set, plus the guest kernel.
    if 2 * settings.working_set_mib + 64 > memory_mib {
        return Err(format!(
            "--working-set {} MiB does not fit in --memory {memory_mib} MiB: building it \
             takes up to twice its size, plus 64 MiB for the guest kernel (use at most {} MiB)",
            settings.working_set_mib,
            memory_mib.saturating_sub(64) / 2
        ));
    }
    Ok(Plan {
        workloads,
        envs,
        repeat: args.repeat,
        warmup: args.warmup,
        settings,
        memory_mib,
        vm,
        artefact,
    })
}

/// Refuses an output path that cannot be written before anything runs
/// (not after an hour of measurements).
fn check_output(flag: &str, path: &std::path::Path) -> Result<(), String> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let meta = std::fs::metadata(parent).map_err(|e| {
        format!(
            "{flag} {}: cannot use {}: {e}",
            path.display(),
            parent.display()
        )
    })?;
    if !meta.is_dir() {
        return Err(format!(
            "{flag} {}: {} is not a directory",
            path.display(),
            parent.display()
        ));
    }
    if path.is_dir() {
        return Err(format!("{flag} {}: is a directory", path.display()));
    }
    Ok(())
}

fn host_info() -> HostInfo {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    HostInfo {
        hostname: read("/proc/sys/kernel/hostname"),
        kernel: read("/proc/sys/kernel/osrelease"),
        emulated_cpu: cpu_model.contains("QEMU TCG"),
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_total_mib: config::host_memory_bytes().unwrap_or(0) >> 20,
        hw_virt: host_has_hw_virt(),
    }
}

/// The VM environment, or why there is none.
fn vm_env(args: &BenchArgs, plan: &Plan, host: &HostInfo) -> Result<(VmEnv, String), String> {
    let accel = plan.vm.accel;
    let hw = accel.resolve(host.hw_virt).map_err(|e| e.to_string())?;
    let mode = match (accel, hw) {
        (Accel::KvmAny, _) => "kvm-any (software-assisted /dev/kvm, no vmx/svm)",
        (_, true) if host.emulated_cpu => "kvm, nested inside QEMU TCG (the rig)",
        (_, true) => "kvm (hardware virtualization)",
        (Accel::Emulated, false) => "emulated (kvmini nested in a QEMU TCG machine with KVM)",
        (_, false) => "tcg (QEMU's software CPU runs the guest)",
    };
    let mut vm = plan.vm.clone();
    if args.vm.kernel.is_none() {
        vm.kernel = (plan.artefact)("kernel/build.sh")?.join("vmlinux");
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find kvmini itself: {e}"))?;
    Ok((
        VmEnv {
            exe,
            vm,
            mode: mode.split(" (").next().unwrap_or(mode).to_string(),
            timeout_s: plan.settings.run_timeout.as_secs(),
        },
        mode.to_string(),
    ))
}

fn mode_note(vm_mode: &str, host: &HostInfo) -> String {
    if vm_mode == NO_VM {
        "no VM in this run".into()
    } else if host.emulated_cpu {
        "the whole run is inside QEMU's software CPU: absolute figures are emulated, \
         only ratios between columns count"
            .into()
    } else if vm_mode.starts_with("emulated") {
        "the VM runs inside an emulated machine: its times and memory include QEMU TCG \
         and the emulating machine's kernel; VM figures are emulated, container and host \
         figures are native"
            .into()
    } else if vm_mode.starts_with("tcg") {
        "QEMU's software CPU runs the VM: its times and memory are QEMU TCG's; VM \
         figures are emulated, container and host figures are native"
            .into()
    } else if vm_mode.starts_with("kvm-any") {
        "software-assisted KVM: guest kernel code is emulated instruction by instruction".into()
    } else {
        "hardware KVM: figures are real".into()
    }
}

/// The environments of one root filesystem (`initrd`, unpacked in `root`
/// unless `tree` says why not). Sets `vm_mode` when the VM can run.
#[allow(clippy::too_many_arguments)]
fn make_envs(
    args: &BenchArgs,
    plan: &Plan,
    host: &HostInfo,
    dir: &std::path::Path,
    initrd: &std::path::Path,
    root: &std::path::Path,
    tree: &Result<(), String>,
    vm_mode: &mut String,
) -> Vec<(EnvKind, MadeEnv)> {
    let mut envs: Vec<(EnvKind, MadeEnv)> = Vec::new();
    for kind in &plan.envs {
        let made: MadeEnv = match kind {
            EnvKind::Vm => vm_env(args, plan, host).map(|(mut v, mode)| {
                v.vm.initrd = Some(initrd.to_path_buf());
                *vm_mode = mode;
                Box::new(v) as Box<dyn Env>
            }),
            EnvKind::Container => tree
                .clone()
                .and_then(|()| {
                    // SAFETY: geteuid has no preconditions and touches no memory.
                    if unsafe { libc::geteuid() } != 0 {
                        return Err("needs root: kvmini bench runs crun as root (rootless \
                                    containers are not set up)"
                            .into());
                    }
                    let (crun, version) = container::find_crun()?;
                    let (cgroup, hide_unified) = container::cgroup_mode()?;
                    Ok(ContainerEnv {
                        crun,
                        version,
                        root: root.to_path_buf(),
                        state: dir.join("crun-state"),
                        bundles: dir.join("bundles"),
                        memory_mib: plan.memory_mib,
                        cpus: args.vm.cpus,
                        hide_unified,
                        cgroup,
                        no_pivot: container::root_is_initramfs(),
                    })
                })
                .map(|c| Box::new(c) as Box<dyn Env>),
            EnvKind::Host => tree.clone().map(|()| {
                Box::new(HostEnv {
                    root: root.to_path_buf(),
                    scratch: dir.join("host"),
                }) as Box<dyn Env>
            }),
        };
        if let Err(why) = &made {
            eprintln!("kvmini bench: {} environment skipped: {why}", kind.name());
        }
        envs.push((*kind, made));
    }
    envs
}

/// Why the VM cannot boot `initrd` in `memory_mib` of RAM, if so: the
/// kernel holds the initramfs and its unpacked tree at once while booting.
fn vm_unfit(memory_mib: u64, initrd: &std::path::Path) -> Option<String> {
    let size_mib = std::fs::metadata(initrd).ok()?.len().div_ceil(1 << 20);
    let need = 2 * size_mib + 64;
    (memory_mib < need).then(|| {
        format!(
            "--memory {memory_mib} MiB is too small to boot the {size_mib} MiB initramfs {} \
             (give at least {need}M)",
            initrd.display()
        )
    })
}

/// What the report says about direct I/O.
fn io_direct_note(direct: bool) -> String {
    let rest = if direct {
        "container, host: fio direct=1 on the scratch file (O_DIRECT, no page cache)"
    } else {
        "container, host: buffered (the scratch filesystem refuses O_DIRECT): their \
         figures include the host page cache"
    };
    format!(
        "vm: fio direct=1 on its virtio-blk disk, which kvmini backs with buffered I/O on \
         the scratch file (the host page cache is between the guest and the disk); {rest}"
    )
}

/// `vm_mode` when the VM is not part of the run.
const NO_VM: &str = "not run";

/// An environment ready to run workloads, or why it cannot exist here.
type MadeEnv = Result<Box<dyn Env>, String>;

fn run(args: BenchArgs, artefact: Artefact) -> Result<u8, String> {
    let start = Instant::now();
    let plan = plan(&args, artefact)?;
    // Ctrl-C or SIGTERM between or during measurements: stop after the
    // current one and remove what this run made (TAPs, veths, scratch
    // files, unpacked trees) on the way out, then exit 128 + signal.
    kvmini_vmm::stop::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let host = host_info();
    let tmp = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-bench."))
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let dir = tmp.as_path().to_path_buf();
    // The tree of the container and the host runs.
    let root = dir.join("rootfs");

    let initrd = match &args.vm.initrd {
        Some(i) => i.clone(),
        None => artefact("rootfs/build-initramfs.sh")?,
    };
    eprintln!(
        "kvmini bench: unpacking {} for the container and the host",
        initrd.display()
    );
    let tree = env::extract_initramfs(&initrd, &root);
    let mut vm_mode = String::from(NO_VM);
    let base = make_envs(
        &args,
        &plan,
        &host,
        &dir,
        &initrd,
        &root,
        &tree,
        &mut vm_mode,
    );

    // Block and network need fio and iperf3. Without --initrd, and when
    // the default guest root has none, those two run on the bench
    // initramfs (the default root plus fio, iperf3 and their libraries),
    // so the other workloads keep measuring the small default guest.
    let tools_root = dir.join("tools-rootfs");
    let wants_tools = plan.workloads.iter().any(|w| w.needs_tools());
    let lacks_tools = tree.is_ok()
        && (env::tool_in_tree(&root, "fio").is_none()
            || env::tool_in_tree(&root, "iperf3").is_none());
    let tools_initrd = match &args.tools_initrd {
        Some(t) if wants_tools => Some(Ok(t.clone())),
        None if args.vm.initrd.is_none() && wants_tools && lacks_tools => {
            eprintln!("kvmini bench: block and network run on the bench initramfs (fio, iperf3)");
            Some(artefact("bench/build-initramfs.sh"))
        }
        _ => None,
    };
    let tools = if let Some(made) = tools_initrd {
        match made {
            Ok(ti) => {
                eprintln!(
                    "kvmini bench: unpacking {} for the container and the host",
                    ti.display()
                );
                let tt = env::extract_initramfs(&ti, &tools_root);
                let mut mode = String::new();
                let envs = make_envs(&args, &plan, &host, &dir, &ti, &tools_root, &tt, &mut mode);
                Some((ti, tools_root.clone(), envs))
            }
            Err(e) => {
                eprintln!(
                    "kvmini bench: cannot build the bench initramfs ({e}); block and network \
                     use {}",
                    initrd.display()
                );
                None
            }
        }
    } else {
        None
    };

    let scratch_parent = args.io_dir.clone().unwrap_or_else(|| dir.clone());
    let scratch =
        TempDir::new_with_prefix(scratch_parent.join("kvmini-bench-io.")).map_err(|e| {
            format!(
                "cannot create a scratch directory in {}: {e}",
                scratch_parent.display()
            )
        })?;
    let direct = workloads::supports_direct(scratch.as_path());
    let vm_no_net = (vm_mode.starts_with("emulated")).then(|| {
        "kvmini --net needs hardware KVM: in emulated mode the VM has no link to the host".into()
    });
    let ctx_for = |initrd: &std::path::Path, root: &std::path::Path| Context {
        root: root.to_path_buf(),
        scratch: scratch.as_path().to_path_buf(),
        direct,
        net_admin: net::has_net_admin(),
        vm_no_net: vm_no_net.clone(),
        vm_unfit: vm_unfit(plan.memory_mib, initrd),
    };
    let base_ctx = ctx_for(&initrd, &root);
    let tools_ctx = tools.as_ref().map(|(ti, tr, _)| ctx_for(ti, tr));
    let set_for = |w: &Workload| -> (&Vec<(EnvKind, MadeEnv)>, &Context) {
        match (&tools, &tools_ctx) {
            (Some((_, _, envs)), Some(ctx)) if w.needs_tools() => (envs, ctx),
            _ => (&base, &base_ctx),
        }
    };

    let mut settings = BTreeMap::new();
    settings.insert("repeat".to_string(), plan.repeat.to_string());
    settings.insert("warmup".to_string(), plan.warmup.to_string());
    settings.insert("cpus".to_string(), args.vm.cpus.to_string());
    settings.insert("memory_mib".to_string(), plan.memory_mib.to_string());
    settings.insert("initrd".to_string(), initrd.display().to_string());
    if let Some((ti, _, _)) = &tools {
        settings.insert("initrd_block_network".to_string(), ti.display().to_string());
    }
    if plan.workloads.contains(&Workload::Block) {
        settings.insert("io_size_mib".to_string(), plan.settings.io_mib.to_string());
        settings.insert(
            "io_scratch".to_string(),
            format!(
                "{} ({})",
                scratch_parent.display(),
                workloads::fs_name(scratch.as_path())
            ),
        );
        settings.insert("io_direct".to_string(), io_direct_note(direct));
    }
    if plan.workloads.contains(&Workload::Network) {
        settings.insert("net_secs".to_string(), plan.settings.net_secs.to_string());
        settings.insert(
            "net_links".to_string(),
            "vm: virtio-net on a TAP, container: veth pair, host: loopback; iperf3 server \
             on the host side"
                .to_string(),
        );
    }
    let mut meta = Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        kvmini_version: env!("CARGO_PKG_VERSION").into(),
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        vm_mode_note: mode_note(&vm_mode, &host),
        vm_mode,
        host,
        settings,
        ..Meta::default()
    };
    for (kind, e) in &base {
        let text = match e {
            Ok(env) => env.describe(),
            Err(why) => format!("not run: {why}"),
        };
        meta.environments.insert(*kind, text);
    }

    let ids = Ids::new();
    let steps: usize = plan
        .workloads
        .iter()
        .map(|w| {
            let (envs, ctx) = set_for(w);
            envs.iter()
                .filter(|(k, e)| e.is_ok() && w.unavailable(*k, ctx).is_none())
                .count()
                * (plan.warmup + plan.repeat)
        })
        .sum();
    let mut step = 0;
    let mut rows = Vec::new();
    for w in &plan.workloads {
        let metrics = w.metrics(&plan.settings);
        let mut cells: Vec<BTreeMap<EnvKind, Cell>> = vec![BTreeMap::new(); metrics.len()];
        let (envs, ctx) = set_for(w);
        for (kind, made) in envs {
            let env = match made {
                Ok(env) => env,
                Err(why) => {
                    for c in cells.iter_mut() {
                        c.insert(
                            *kind,
                            Cell::Skipped {
                                reason: why.clone(),
                            },
                        );
                    }
                    continue;
                }
            };
            if let Some(why) = w.unavailable(*kind, ctx) {
                eprintln!(
                    "kvmini bench: {} in {}: not run: {why}",
                    w.name(),
                    kind.name()
                );
                for c in cells.iter_mut() {
                    c.insert(
                        *kind,
                        Cell::Skipped {
                            reason: why.clone(),
                        },
                    );
                }
                continue;
            }
            let mut samples: Vec<Vec<f64>> = vec![Vec::new(); metrics.len()];
            let mut failure = None;
            let total = plan.warmup + plan.repeat;
            for i in 0..total {
                if let Some(code) = kvmini_vmm::stop::signalled() {
                    eprintln!("kvmini bench: interrupted; removing what this run made");
                    return Ok(code);
                }
                step += 1;
                let warm = i < plan.warmup;
                let label = if warm {
                    format!("warm-up {}/{}", i + 1, plan.warmup)
                } else {
                    format!("repeat {}/{}", i + 1 - plan.warmup, plan.repeat)
                };
                eprint!(
                    "[bench {step:>3}/{steps} {:>5.0}s] {:<9} {:<8} {label} ... ",
                    start.elapsed().as_secs_f64(),
                    kind.name(),
                    w.name()
                );
                let t = Instant::now();
                match w.measure(env.as_ref(), &plan.settings, &ids, ctx) {
                    Ok(values) => {
                        let shown: Vec<String> = values
                            .iter()
                            .zip(&metrics)
                            .map(|(v, m)| format!("{} {}", report::fmt_num(*v), m.unit))
                            .collect();
                        eprintln!(
                            "{}{} ({:.1}s)",
                            shown.join(", "),
                            if warm { " (discarded)" } else { "" },
                            t.elapsed().as_secs_f64()
                        );
                        if !warm {
                            for (s, v) in samples.iter_mut().zip(values) {
                                s.push(v);
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("FAILED: {e}");
                        failure = Some(format!("{label} failed: {e}"));
                        step += total - i - 1;
                        break;
                    }
                }
            }
            for (c, s) in cells.iter_mut().zip(&samples) {
                let cell = match (&failure, Summary::of(s)) {
                    (Some(f), _) => Cell::Failed { reason: f.clone() },
                    (None, Some(sum)) => Cell::Measured(sum),
                    (None, None) => Cell::Failed {
                        reason: "no usable sample".into(),
                    },
                };
                c.insert(*kind, cell);
            }
        }
        for (m, c) in metrics.into_iter().zip(cells) {
            rows.push(Row {
                workload: w.name().into(),
                metric: m.name,
                unit: m.unit.into(),
                lower_is_better: m.lower_is_better,
                cells: c,
            });
        }
    }
    meta.duration_s = start.elapsed().as_secs_f64();
    let report = Report {
        meta,
        envs: plan.envs.clone(),
        rows,
    };
    println!("{}", report.to_table());
    if let Some(p) = &args.json {
        std::fs::write(p, report.to_json() + "\n")
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        eprintln!("kvmini bench: JSON written to {}", p.display());
    }
    if let Some(p) = &args.chart {
        chart::write_png(&report, p)?;
        eprintln!("kvmini bench: chart written to {}", p.display());
    }
    drop(scratch);
    drop(tmp);
    Ok(if report.any_failed() {
        code::SOME_FAILED
    } else {
        code::OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    fn no_artefact(_: &str) -> Result<std::path::PathBuf, String> {
        Err("no guest artefacts in unit tests".into())
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["kvmini", "bench"];
        argv.extend_from_slice(extra);
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: Command,
        }
        #[derive(clap::Subcommand)]
        enum Command {
            Bench(BenchArgs),
        }
        let Command::Bench(b) = Cli::parse_from(argv).command;
        b
    }

    #[test]
    fn defaults_and_checks() {
        let p = plan(&args(&[]), no_artefact).unwrap();
        assert_eq!(p.workloads, Workload::ALL);
        assert_eq!(p.envs, EnvKind::ALL);
        assert_eq!((p.repeat, p.warmup, p.memory_mib), (5, 1, 512));
        assert_eq!(p.settings.working_set_mib, 128);
        let p = plan(
            &args(&["--envs", "host,vm", "--workloads", "cpu", "--repeat", "1"]),
            no_artefact,
        )
        .unwrap();
        assert_eq!(p.envs, [EnvKind::Vm, EnvKind::Host]);
        assert!(plan(&args(&["--repeat", "0"]), no_artefact).is_err());
        assert!(plan(&args(&["--envs", "docker"]), no_artefact).is_err());
        assert!(plan(&args(&["--working-set", "1G"]), no_artefact)
            .unwrap_err()
            .contains("does not fit"));
        // Twice the set plus 64 MiB: 224 fits 512, 225 does not.
        assert!(plan(&args(&["--working-set", "224M"]), no_artefact).is_ok());
        assert!(plan(&args(&["--working-set", "225M"]), no_artefact)
            .unwrap_err()
            .contains("at most 224 MiB"));
        assert!(plan(&args(&["--budget", "lots"]), no_artefact).is_err());
    }

    #[test]
    fn io_and_net_knobs() {
        let p = plan(&args(&[]), no_artefact).unwrap();
        assert_eq!((p.settings.io_mib, p.settings.net_secs), (256, 5));
        let p = plan(&args(&["--io-size", "8M", "--net-time", "2m"]), no_artefact).unwrap();
        assert_eq!((p.settings.io_mib, p.settings.net_secs), (8, 120));
        assert!(plan(&args(&["--io-size", "100K"]), no_artefact)
            .unwrap_err()
            .contains("--io-size"));
        assert!(plan(&args(&["--io-size", "big"]), no_artefact).is_err());
        assert!(plan(&args(&["--net-time", "0"]), no_artefact).is_err());
    }

    #[test]
    fn a_vm_too_small_for_its_initramfs_says_so() {
        let tmp = TempDir::new().unwrap();
        let initrd = tmp.as_path().join("big.cpio");
        let f = std::fs::File::create(&initrd).unwrap();
        f.set_len(85 << 20).unwrap();
        let why = vm_unfit(192, &initrd).unwrap();
        assert!(
            why.contains("85 MiB") && why.contains("at least 234M"),
            "{why}"
        );
        assert!(vm_unfit(234, &initrd).is_none());
        assert!(vm_unfit(64, Path::new("/nonexistent")).is_none());
    }

    #[test]
    fn direct_io_note_names_both_cases() {
        assert!(io_direct_note(true).contains("direct=1 on the scratch file"));
        assert!(io_direct_note(false).contains("buffered"));
        assert!(io_direct_note(false).contains("vm: fio direct=1"));
    }

    #[test]
    fn mode_notes_say_what_counts() {
        let mut h = HostInfo::default();
        assert!(mode_note("emulated", &h).contains("VM figures are emulated"));
        assert!(mode_note("kvm (hardware virtualization)", &h).contains("real"));
        h.emulated_cpu = true;
        assert!(mode_note("kvm, nested", &h).contains("only ratios"));
    }
}

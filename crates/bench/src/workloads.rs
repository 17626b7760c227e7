//! The workloads: what each runs inside an environment (a busybox sh
//! script, the same in all three) and how its numbers are taken.
//!
//! - start-up: `echo` as the workload: launch -> its first stdout line
//!   reaching us (the workload's first act in user space), and launch ->
//!   the launcher's exit.
//! - memory: busybox awk builds an N-byte string (touching N bytes), reads
//!   its own VmRSS, prints it and idles; we then read the PSS of the whole
//!   host process tree of the instance (/proc/PID/smaps_rollup) and report
//!   tree PSS - workload RSS: what the environment costs beyond the
//!   workload itself. N = 0 (idle) and N = the working set.
//! - CPU: sha256 of N MiB of zeros (busybox head | sha256sum), timed inside
//!   the environment with /proc/uptime (10 ms resolution) so start-up is
//!   not counted.
//! - density: N idle instances at once (`sleep`), each tree's PSS summed;
//!   per-instance memory and how many fit in the budget.
//! - block I/O: fio ([`super::fio`]) on a scratch file of the host
//!   filesystem: the VM's first virtio-blk disk, the container's
//!   bind-mounted file, the host's file.
//! - network: iperf3 both ways and ping to a server on the host
//!   ([`super::net`]): over a TAP (VM), a veth pair (container), loopback
//!   (host).
//!
//! Block and network need fio / iperf3 in the root filesystem, and the
//! network CAP_NET_ADMIN for the VM's and the container's links; without
//! them they are skipped visibly with the reason.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::env::{tool_in_tree, tree_memory, Env, EnvKind, Job, Launched, TreeMemory};
use super::{fio, net};

/// A workload's knobs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cpu_mib: u64,
    pub working_set_mib: u64,
    pub density: usize,
    pub budget_mib: u64,
    pub run_timeout: Duration,
    /// Size of the block workload's scratch file (and fio's span).
    pub io_mib: u64,
    /// Seconds of iperf3 per direction.
    pub net_secs: u64,
}

/// What the block and network workloads need from the run: where things
/// are and what this host allows.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The root tree the container and the host run (the host-side iperf3
    /// server comes from it too).
    pub root: PathBuf,
    /// Directory of the scratch files (the host filesystem measured).
    pub scratch: PathBuf,
    /// Whether that filesystem takes O_DIRECT (the container's and the
    /// host's fio then bypass the page cache).
    pub direct: bool,
    pub net_admin: bool,
    /// Why the VM can have no NIC here, if so (emulated mode).
    pub vm_no_net: Option<String>,
    /// Why the VM cannot boot this root filesystem, if so (too little RAM).
    pub vm_unfit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Startup,
    Memory,
    Cpu,
    Block,
    Network,
    Density,
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    pub lower_is_better: bool,
}

fn metric(name: impl Into<String>, unit: &'static str, lower_is_better: bool) -> Metric {
    Metric {
        name: name.into(),
        unit,
        lower_is_better,
    }
}

/// Wait between an instance saying it is ready and measuring its memory,
/// so the processes it starts to idle exist and have settled.
pub const SETTLE: Duration = Duration::from_millis(500);

/// The line every workload prints when it is up (memory, density).
pub const READY: &str = "kvmini-bench-ready";

impl Workload {
    pub const ALL: [Workload; 6] = [
        Self::Startup,
        Self::Memory,
        Self::Cpu,
        Self::Block,
        Self::Network,
        Self::Density,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Memory => "memory",
            Self::Cpu => "cpu",
            Self::Block => "block",
            Self::Network => "network",
            Self::Density => "density",
        }
    }

    /// `startup,memory,cpu` (or `all`) -> workloads, in the given order.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        let mut out = Vec::new();
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if w == "all" {
                out.extend(Self::ALL);
                continue;
            }
            let found = Self::ALL
                .into_iter()
                .find(|x| x.name() == w || (w == "start-up" && *x == Self::Startup))
                .ok_or_else(|| {
                    format!(
                        "unknown workload '{w}': choose from {} or all",
                        Self::ALL.map(Self::name).join(", ")
                    )
                })?;
            if !out.contains(&found) {
                out.push(found);
            }
        }
        if out.is_empty() {
            return Err("no workload given".into());
        }
        Ok(out)
    }

    pub fn metrics(self, s: &Settings) -> Vec<Metric> {
        match self {
            Self::Startup => vec![
                metric("launch to first output", "ms", true),
                metric("launch to exit", "ms", true),
            ],
            Self::Memory => vec![
                metric("overhead, idle", "MiB", true),
                metric(
                    format!("overhead, {} MiB working set", s.working_set_mib),
                    "MiB",
                    true,
                ),
                metric("of idle: VMM/runtime outside guest RAM", "MiB", true),
            ],
            Self::Cpu => vec![metric(format!("sha256 of {} MiB", s.cpu_mib), "s", true)],
            Self::Block => vec![
                metric("sequential read", "MiB/s", false),
                metric("sequential write", "MiB/s", false),
                metric("4 KiB random read", "IOPS", false),
                metric("4 KiB random write", "IOPS", false),
            ],
            Self::Network => vec![
                metric("TCP throughput to host", "Mbit/s", false),
                metric("TCP throughput from host", "Mbit/s", false),
                metric("ping RTT to host", "ms", true),
            ],
            Self::Density => vec![
                metric(
                    format!("host memory per idle instance ({} running)", s.density),
                    "MiB",
                    true,
                ),
                metric(
                    format!("idle instances in {} MiB", s.budget_mib),
                    "count",
                    false,
                ),
            ],
        }
    }

    /// Whether this workload runs tools (fio, iperf3) beyond busybox.
    pub fn needs_tools(self) -> bool {
        matches!(self, Self::Block | Self::Network)
    }

    /// Why this workload cannot run in `env` (shown in its cells), if so.
    pub fn unavailable(self, env: EnvKind, ctx: &Context) -> Option<String> {
        if env == EnvKind::Vm {
            if let Some(why) = &ctx.vm_unfit {
                return Some(why.clone());
            }
        }
        match self {
            Self::Block => tool_in_tree(&ctx.root, "fio").is_none().then(|| {
                "the root filesystem has no fio: pass --tools-initrd with an image that has it \
                 (the guest kernel then needs SYSVIPC and AIO)"
                    .into()
            }),
            Self::Network => {
                if tool_in_tree(&ctx.root, "iperf3").is_none() {
                    return Some(
                        "the root filesystem has no iperf3: pass --tools-initrd with an image that \
                         has it"
                            .into(),
                    );
                }
                match env {
                    EnvKind::Host => None,
                    EnvKind::Vm if ctx.vm_no_net.is_some() => ctx.vm_no_net.clone(),
                    _ if !ctx.net_admin => Some(net::NEEDS_NET_ADMIN.into()),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// One measurement: a value per metric, or why not.
    pub fn measure(
        self,
        env: &dyn Env,
        s: &Settings,
        ids: &Ids,
        ctx: &Context,
    ) -> Result<Vec<f64>, String> {
        match self {
            Self::Startup => startup(env, s, ids),
            Self::Memory => {
                let idle = memory_overhead(env, 0, s, ids)?;
                let busy = memory_overhead(env, s.working_set_mib << 20, s, ids)?;
                Ok(vec![idle.total, busy.total, idle.outside_guest_ram])
            }
            Self::Cpu => cpu(env, s, ids),
            Self::Density => density(env, s, ids),
            Self::Block => block(env, s, ids, ctx),
            Self::Network => network(env, s, ids, ctx),
        }
    }
}

/// Unique instance names for this run.
pub struct Ids {
    prefix: String,
    next: AtomicUsize,
}

impl Ids {
    pub fn new() -> Self {
        Self {
            prefix: format!("kb{}", std::process::id()),
            next: AtomicUsize::new(0),
        }
    }

    pub fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn startup(env: &dyn Env, s: &Settings, ids: &Ids) -> Result<Vec<f64>, String> {
    let mut run = Launched::start(env, &Job::new("echo kvmini-bench-up"), &ids.next())?;
    let deadline = Instant::now() + s.run_timeout;
    let first = run.wait_line("kvmini-bench-up", deadline);
    let done = run.finish(env, deadline);
    if !done.success() {
        return Err(done.failure());
    }
    let (first, _) = first?;
    // The line was written before the process exited; a busy host can
    // schedule our reader thread after the exit waiter, so bound it.
    Ok(vec![ms(first.min(done.elapsed)), ms(done.elapsed)])
}

/// The compute kernel: N MiB of zeros through busybox sha256sum, timed
/// inside the environment.
pub fn cpu_script(mib: u64) -> String {
    format!(
        "read t0 x </proc/uptime; head -c {} /dev/zero | sha256sum >/dev/null || exit 1; \
         read t1 x </proc/uptime; echo \"cpu t0=$t0 t1=$t1\"",
        mib << 20
    )
}

/// Seconds between the t0= and t1= /proc/uptime readings of [`cpu_script`].
pub fn cpu_seconds(t0: &str, t1: &str) -> Option<f64> {
    let (a, b) = (t0.parse::<f64>().ok()?, t1.parse::<f64>().ok()?);
    (b >= a).then_some(b - a)
}

fn cpu(env: &dyn Env, s: &Settings, ids: &Ids) -> Result<Vec<f64>, String> {
    let run = Launched::start(env, &Job::new(cpu_script(s.cpu_mib)), &ids.next())?;
    let done = run.finish(env, Instant::now() + s.run_timeout);
    if !done.success() {
        return Err(done.failure());
    }
    let (t0, t1) = (done.value("t0"), done.value("t1"));
    match (t0, t1) {
        (Some(a), Some(b)) => cpu_seconds(&a, &b)
            .map(|v| vec![v])
            .ok_or_else(|| format!("bad /proc/uptime readings t0={a} t1={b}")),
        _ => Err("the workload printed no timing line".into()),
    }
}

/// busybox awk touching `bytes` bytes, then reporting its own VmRSS and
/// idling until stopped.
pub fn memory_script(bytes: u64) -> String {
    format!(
        "awk -v n={bytes} 'BEGIN {{ s = \"x\"; while (length(s) < n) s = s s; \
         while ((getline l < \"/proc/self/status\") > 0) if (l ~ /^VmRSS:/) \
         {{ split(l, f, \" \"); rss = f[2] }} \
         print \"{READY} rss_kb=\" rss \" len=\" length(s); fflush(); system(\"sleep 600\") }}'"
    )
}

/// Host memory of an environment beyond its workload's own, in MiB.
struct Overhead {
    /// The whole process tree's PSS minus the workload's RSS.
    total: f64,
    /// What its processes cost outside guest RAM: the VMM process itself
    /// (its guest RAM, holding the guest kernel and the workload, left
    /// out); for a container or the host, the same as `total`.
    outside_guest_ram: f64,
}

fn memory_overhead(env: &dyn Env, bytes: u64, s: &Settings, ids: &Ids) -> Result<Overhead, String> {
    let mut run = Launched::start(env, &Job::new(memory_script(bytes)), &ids.next())?;
    let ready = run.wait_line(READY, Instant::now() + s.run_timeout);
    // Let the idle part (awk's `system("sleep")`) start before measuring.
    std::thread::sleep(SETTLE);
    let tree = tree_memory(run.pid());
    let done = run.stop_and_finish(env);
    let (_, line) = ready.map_err(|e| format!("{e} ({})", done.failure()))?;
    let rss = super::env::find_value(std::iter::once(line.as_str()), "rss_kb")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("no workload RSS in '{line}'"))?;
    if env.kind() == EnvKind::Vm && tree.guest_ram_pss_kib == 0 {
        return Err(format!(
            "found no guest RAM mapping in the VMM's memory map ({} processes, {} KiB PSS)",
            tree.processes, tree.pss_kib
        ));
    }
    Ok(split_overhead(&tree, rss, env.kind()))
}

fn split_overhead(tree: &TreeMemory, workload_rss_kib: u64, kind: EnvKind) -> Overhead {
    let mib = |kib: f64| kib / 1024.0;
    let total = tree.pss_kib as f64 - workload_rss_kib as f64;
    let outside_guest_ram = if kind == EnvKind::Vm {
        // The workload lives in guest RAM.
        tree.pss_kib.saturating_sub(tree.guest_ram_pss_kib) as f64
    } else {
        total
    };
    Overhead {
        total: mib(total),
        outside_guest_ram: mib(outside_guest_ram),
    }
}

fn density(env: &dyn Env, s: &Settings, ids: &Ids) -> Result<Vec<f64>, String> {
    let job = Job::new(format!("echo {READY}; exec sleep 600"));
    let mut runs = Vec::new();
    let mut err = None;
    for _ in 0..s.density {
        match Launched::start(env, &job, &ids.next()) {
            Ok(r) => runs.push(r),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let deadline = Instant::now() + s.run_timeout;
    let mut pss_kib = 0;
    if err.is_none() {
        for r in runs.iter_mut() {
            if let Err(e) = r.wait_line(READY, deadline) {
                err = Some(format!("instance {}: {e}", r.id));
                break;
            }
        }
    }
    if err.is_none() {
        // All are up: measure them together.
        std::thread::sleep(SETTLE);
        pss_kib = runs
            .iter()
            .map(|r| tree_memory(r.pid()).pss_kib)
            .sum::<u64>();
    }
    for r in runs {
        let done = r.stop_and_finish(env);
        if let Some(e) = err.as_mut() {
            if e.starts_with("instance") && !e.contains('(') {
                e.push_str(&format!(" ({})", done.failure()));
            }
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    let per = pss_kib as f64 / 1024.0 / s.density as f64;
    if per <= 0.0 {
        return Err("measured no memory for the instances".into());
    }
    Ok(vec![per, (s.budget_mib as f64 / per).floor()])
}

/// A scratch file of the host filesystem, filled with data (no holes: reads
/// must reach the disk), flushed, and dropped from the page cache; removed
/// on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn create(path: &Path, bytes: u64) -> Result<Self, String> {
        let err =
            |e: std::io::Error| format!("cannot write the scratch file {}: {e}", path.display());
        let mut f = File::create(path).map_err(err)?;
        let scratch = Scratch(path.to_path_buf());
        let chunk = vec![0x5a_u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).map_err(err)?;
            left -= n as u64;
        }
        f.sync_all().map_err(err)?;
        // SAFETY: posix_fadvise only reads its arguments; `f` is an open
        // file. Clean pages of this file leave the cache, no other's.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether files in `dir` can be opened with O_DIRECT.
pub fn supports_direct(dir: &Path) -> bool {
    let probe = dir.join(".kvmini-odirect-probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The type of the filesystem holding `path` (for the report).
pub fn fs_name(path: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return "unknown filesystem".into();
    };
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid statfs that
    // lives across the call; statfs writes only into it.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown filesystem".into();
    }
    match st.f_type as u64 {
        0xef53 => "ext2/3/4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x8584_58f6 => "ramfs (initramfs)".into(),
        0x794c_7630 => "overlayfs".into(),
        0x2fc1_2fc1 => "zfs".into(),
        t => format!("filesystem type {t:#x}"),
    }
}

fn output_text(done: &super::env::Finished) -> Vec<&str> {
    done.lines.iter().map(|(_, l)| l.as_str()).collect()
}

fn block(env: &dyn Env, s: &Settings, ids: &Ids, ctx: &Context) -> Result<Vec<f64>, String> {
    let id = ids.next();
    let path = ctx.scratch.join(format!("{id}.img"));
    let scratch = Scratch::create(&path, s.io_mib << 20)?;
    // The VM's fio runs on a block device, where O_DIRECT always works.
    let direct = env.kind() == EnvKind::Vm || ctx.direct;
    let mut job = Job::new(fio::command(s.io_mib, direct));
    job.disk = Some(path);
    let run = Launched::start(env, &job, &id)?;
    let done = run.finish(env, Instant::now() + s.run_timeout);
    drop(scratch);
    if !done.success() {
        return Err(done.failure());
    }
    fio::parse(&output_text(&done).join("\n")).map(|v| v.to_vec())
}

fn network(env: &dyn Env, s: &Settings, ids: &Ids, ctx: &Context) -> Result<Vec<f64>, String> {
    let id = ids.next();
    let subnet = net::host_nets(1)?[0];
    let tag = id.strip_prefix("kb").unwrap_or(&id);
    // Dropped in reverse order: the server, then the link.
    let link = net::Link::create(env.kind(), subnet, tag, &ctx.root)?;
    let host = link.host.ok_or("the link has no host address")?;
    let server = net::Server::start(&ctx.root, host)?;
    let mut job = Job::new(net::script(s.net_secs));
    job.vars = vec![
        ("BENCH_SERVER".into(), host.to_string()),
        ("BENCH_PORT".into(), server.port.to_string()),
    ];
    job.tap = link.tap.clone().zip(link.guest_ip_param.clone());
    job.netns = link.netns_path();
    let run = Launched::start(env, &job, &id)?;
    let done = run.finish(env, Instant::now() + s.run_timeout);
    drop(server);
    drop(link);
    let parsed = net::parse(&output_text(&done));
    if !done.success() {
        return Err(match parsed {
            Err(why) => format!("{} ({why})", done.failure()),
            Ok(_) => done.failure(),
        });
    }
    parsed.map(|v| v.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            cpu_mib: 64,
            working_set_mib: 256,
            density: 3,
            budget_mib: 4096,
            run_timeout: Duration::from_secs(60),
            io_mib: 16,
            net_secs: 1,
        }
    }

    #[test]
    fn workload_lists() {
        assert_eq!(
            Workload::parse_list("startup,memory,cpu").unwrap(),
            [Workload::Startup, Workload::Memory, Workload::Cpu]
        );
        assert_eq!(Workload::parse_list("all").unwrap(), Workload::ALL);
        assert_eq!(
            Workload::parse_list("cpu, start-up,cpu").unwrap(),
            [Workload::Cpu, Workload::Startup]
        );
        assert!(Workload::parse_list("gpu").unwrap_err().contains("unknown"));
        assert!(Workload::parse_list(",").is_err());
    }

    #[test]
    fn overhead_splits_off_guest_ram_for_the_vm_only() {
        let tree = TreeMemory {
            pss_kib: 40 * 1024,
            rss_kib: 50 * 1024,
            processes: 1,
            guest_ram_pss_kib: 30 * 1024,
        };
        let vm = split_overhead(&tree, 2 * 1024, EnvKind::Vm);
        assert_eq!((vm.total, vm.outside_guest_ram), (38.0, 10.0));
        let ct = split_overhead(&tree, 2 * 1024, EnvKind::Container);
        assert_eq!((ct.total, ct.outside_guest_ram), (38.0, 38.0));
    }

    #[test]
    fn metrics_name_their_sizes() {
        let s = settings();
        let m = Workload::Memory.metrics(&s);
        assert_eq!(m[1].name, "overhead, 256 MiB working set");
        assert_eq!(Workload::Cpu.metrics(&s)[0].name, "sha256 of 64 MiB");
        assert!(!Workload::Density.metrics(&s)[1].lower_is_better);
        for w in Workload::ALL {
            assert!(!w.metrics(&s).is_empty());
        }
    }

    #[test]
    fn network_and_block_say_why_they_cannot_run() {
        let mut ctx = Context {
            root: "/nonexistent-root".into(),
            ..Context::default()
        };
        assert!(Workload::Network
            .unavailable(EnvKind::Host, &ctx)
            .unwrap()
            .contains("no iperf3"));
        assert!(Workload::Block
            .unavailable(EnvKind::Container, &ctx)
            .unwrap()
            .contains("no fio"));
        assert!(Workload::Cpu.unavailable(EnvKind::Vm, &ctx).is_none());
        // A tree with the tools.
        let tmp = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let bin = tmp.as_path().join("usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("fio"), "").unwrap();
        std::fs::write(bin.join("iperf3"), "").unwrap();
        ctx.root = tmp.as_path().to_path_buf();
        assert!(Workload::Block.unavailable(EnvKind::Vm, &ctx).is_none());
        assert!(Workload::Network.unavailable(EnvKind::Host, &ctx).is_none());
        for env in [EnvKind::Vm, EnvKind::Container] {
            assert_eq!(
                Workload::Network.unavailable(env, &ctx).unwrap(),
                "needs CAP_NET_ADMIN (run as root)"
            );
        }
        ctx.net_admin = true;
        assert!(Workload::Network.unavailable(EnvKind::Vm, &ctx).is_none());
        ctx.vm_no_net = Some("emulated".into());
        assert_eq!(
            Workload::Network.unavailable(EnvKind::Vm, &ctx).as_deref(),
            Some("emulated")
        );
        assert!(Workload::Network
            .unavailable(EnvKind::Container, &ctx)
            .is_none());
        ctx.vm_unfit = Some("too small".into());
        assert_eq!(
            Workload::Cpu.unavailable(EnvKind::Vm, &ctx).as_deref(),
            Some("too small")
        );
    }

    #[test]
    fn scratch_files_are_filled_and_removed() {
        let tmp = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let p = tmp.as_path().join("s.img");
        let s = Scratch::create(&p, (1 << 20) + 512).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), (1 << 20) + 512);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 >= meta.len(), "no holes");
        drop(s);
        assert!(!p.exists());
        assert!(Scratch::create(Path::new("/nonexistent/x.img"), 1).is_err());
        assert_ne!(fs_name(tmp.as_path()), "unknown filesystem");
        assert_eq!(fs_name(Path::new("/nonexistent")), "unknown filesystem");
        // Either answer is fine; it must not leave its probe behind.
        let _ = supports_direct(tmp.as_path());
        assert!(!tmp.as_path().join(".kvmini-odirect-probe").exists());
    }

    #[test]
    fn cpu_timing() {
        assert_eq!(cpu_seconds("100.25", "101.75"), Some(1.5));
        assert_eq!(cpu_seconds("5", "4"), None);
        assert_eq!(cpu_seconds("x", "4"), None);
        assert!(cpu_script(2).contains("head -c 2097152 /dev/zero"));
    }

    /// The scripts run as they are on this host's sh (busybox is what the
    /// environments use; any POSIX sh and awk do here).
    #[test]
    fn scripts_run() {
        let out = std::process::Command::new("sh")
            .args(["-c", &cpu_script(1)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("cpu t0="), "{text}");
        let m = memory_script(4096).replace("sleep 600", "true");
        let out = std::process::Command::new("sh")
            .args(["-c", &m])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(READY), "{text}");
        assert!(text.contains(" len=4096"), "{text}");
        assert!(
            text.contains("rss_kb=") && !text.contains("rss_kb= "),
            "{text}"
        );
    }

    #[test]
    fn ids_are_unique() {
        let ids = Ids::new();
        assert_ne!(ids.next(), ids.next());
    }
}

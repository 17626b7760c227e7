//! The three environments a workload runs in, and what they share:
//! launching one instance, watching its output lines with their arrival
//! times, measuring the host memory of its process tree, stopping it.
//!
//! Every environment runs the same thing: a POSIX sh script executed by the
//! busybox of the guest's root filesystem (the default guest initramfs, or
//! `--initrd`), so the workload binaries are the same bytes everywhere.

pub mod container;
pub mod host;
pub mod vm;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Which environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvKind {
    Vm,
    Container,
    Host,
}

impl EnvKind {
    pub const ALL: [EnvKind; 3] = [EnvKind::Vm, EnvKind::Container, EnvKind::Host];

    pub fn name(self) -> &'static str {
        match self {
            Self::Vm => "vm",
            Self::Container => "container",
            Self::Host => "host",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s.trim())
    }
}

/// What to run: a sh script (`sh -c SCRIPT` inside the environment), with
/// what it needs from the host.
#[derive(Debug, Clone, Default)]
pub struct Job {
    pub script: String,
    /// Environment variables the script reads.
    pub vars: Vec<(String, String)>,
    /// A scratch file on the host: the VM gets it as its first virtio-blk
    /// disk, the container bind-mounted, the host as it is. The script
    /// finds the device or file in `$BENCH_TARGET`.
    pub disk: Option<PathBuf>,
    /// VM: the TAP interface for its NIC and the guest's `ip=` parameter.
    pub tap: Option<(String, String)>,
    /// Container: the network namespace to join.
    pub netns: Option<PathBuf>,
}

impl Job {
    pub fn new(script: impl Into<String>) -> Self {
        Self {
            script: script.into(),
            ..Self::default()
        }
    }
}

/// The variable that names the block workload's target.
pub const TARGET_VAR: &str = "BENCH_TARGET";

/// One environment: turns a job into a command and stops/cleans instances.
pub trait Env: Send + Sync {
    fn kind(&self) -> EnvKind;
    /// Versions, limits, mode: one line for the report.
    fn describe(&self) -> String;
    /// The host command that runs `job` as instance `id`.
    fn command(&self, job: &Job, id: &str) -> Result<Command, String>;
    /// Stops instance `id` whose launcher process is `pid`.
    fn stop(&self, id: &str, pid: u32);
    /// Releases what instance `id` left behind (after it ended).
    fn cleanup(&self, _id: &str) {}
}

/// A stdout line and when it arrived.
type Line = (Instant, String);

/// A running instance.
pub struct Launched {
    pub id: String,
    pub started: Instant,
    pid: u32,
    lines: Receiver<Line>,
    seen: Vec<Line>,
    exited: Receiver<(Instant, std::io::Result<ExitStatus>)>,
    stderr: Receiver<String>,
}

/// How an instance ended.
#[derive(Debug)]
pub struct Finished {
    /// From launch to the launcher process's exit.
    pub elapsed: Duration,
    pub status: Option<ExitStatus>,
    pub lines: Vec<Line>,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Why it failed, with the end of its stderr, for the report.
    pub fn failure(&self) -> String {
        let tail: Vec<&str> = self
            .stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" / ");
        let status = match self.status {
            Some(s) => match s.code() {
                Some(c) => format!("exited {c}"),
                None => format!("ended by {s}"),
            },
            None => "did not end in time and was stopped".into(),
        };
        if tail.is_empty() {
            status
        } else {
            format!("{status}: {tail}")
        }
    }

    /// The value of the first `key=value` word on any stdout line.
    pub fn value(&self, key: &str) -> Option<String> {
        find_value(self.lines.iter().map(|(_, l)| l.as_str()), key)
    }
}

/// The first `key=VALUE` word in `lines`.
pub fn find_value<'a>(lines: impl Iterator<Item = &'a str>, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    lines
        .flat_map(str::split_whitespace)
        .find_map(|w| w.strip_prefix(prefix.as_str()).map(str::to_string))
}

impl Launched {
    /// Starts `job` in `env` as instance `id`.
    pub fn start(env: &dyn Env, job: &Job, id: &str) -> Result<Self, String> {
        let mut cmd = env.command(job, id)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child: Child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        let pid = child.id();
        let (ltx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if ltx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        let (etx, stderr) = mpsc::channel();
        if let Some(mut err) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = err.read_to_end(&mut buf);
                let _ = etx.send(String::from_utf8_lossy(&buf).into_owned());
            });
        }
        let (xtx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let status = child.wait();
            let _ = xtx.send((Instant::now(), status));
        });
        Ok(Self {
            id: id.to_string(),
            started,
            pid,
            lines,
            seen: Vec::new(),
            exited,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for a stdout line starting with `prefix`; returns the time
    /// from launch to its arrival and the line.
    pub fn wait_line(
        &mut self,
        prefix: &str,
        deadline: Instant,
    ) -> Result<(Duration, String), String> {
        if let Some((t, l)) = self.seen.iter().find(|(_, l)| l.starts_with(prefix)) {
            return Ok((*t - self.started, l.clone()));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) => {
                    self.seen.push((t, l.clone()));
                    if l.starts_with(prefix) {
                        return Ok((t - self.started, l));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no '{prefix}' line within the time limit"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("its output ended without a '{prefix}' line"))
                }
            }
        }
    }

    /// Waits for the instance to end (stopping it at `deadline`), then
    /// cleans up after it.
    pub fn finish(mut self, env: &dyn Env, deadline: Instant) -> Finished {
        let left = deadline.saturating_duration_since(Instant::now());
        let (end, status) = match self.exited.recv_timeout(left) {
            Ok((t, s)) => (t, s.ok()),
            Err(_) => {
                env.stop(&self.id, self.pid);
                let end = Instant::now();
                let _ = self.exited.recv_timeout(Duration::from_secs(30));
                (end, None)
            }
        };
        // The reader threads end with the process (its pipes close).
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        env.cleanup(&self.id);
        Finished {
            elapsed: end - self.started,
            status,
            lines: self.seen,
            stderr,
        }
    }

    /// Stops the instance now and waits for it (bounded).
    pub fn stop_and_finish(self, env: &dyn Env) -> Finished {
        env.stop(&self.id, self.pid);
        self.finish(env, Instant::now() + Duration::from_secs(60))
    }
}

/// Host memory of a process tree, from /proc/PID/smaps_rollup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeMemory {
    pub pss_kib: u64,
    pub rss_kib: u64,
    pub processes: usize,
    /// Of `pss_kib`, what lies in guest RAM: the anonymous mappings of a
    /// VMM process (kvmini, or the emulated machine's QEMU) whose sizes are
    /// those of the RAM its command line asks for.
    pub guest_ram_pss_kib: u64,
}

/// One mapping of /proc/PID/smaps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mapping {
    pub bytes: u64,
    /// No file behind it (anonymous memory, or `[anon:...]`).
    pub anon: bool,
    pub pss_kib: u64,
}

/// The mappings of a /proc/PID/smaps text.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                // start-end perms offset dev inode [path]
                let path = words.nth(4);
                out.push(Mapping {
                    bytes: b.saturating_sub(a),
                    anon: path.map_or(true, |p| p.starts_with("[anon:")),
                    pss_kib: 0,
                });
                continue;
            }
        }
        if let (Some(m), Some(v)) = (out.last_mut(), line.strip_prefix("Pss:")) {
            m.pss_kib = v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    out
}

/// The guest RAM mapping sizes a VMM command line asks for: kvmini's
/// `--memory`/`-m` (split around the MMIO gap as kvmini lays it out), or
/// QEMU's `-m` (one block). Empty for anything else.
pub fn guest_ram_sizes(argv: &[String]) -> Vec<u64> {
    let Some(program) = argv.first().map(|p| p.rsplit('/').next().unwrap_or(p)) else {
        return Vec::new();
    };
    let value = |flags: &[&str]| {
        argv.windows(2)
            .find(|w| flags.contains(&w[0].as_str()))
            .and_then(|w| kvmini_vmm::config::parse_size(w[1].split(',').next()?).ok())
    };
    if program.starts_with("qemu-system") {
        value(&["-m"]).into_iter().collect()
    } else if program == "kvmini" {
        value(&["--memory", "-m"])
            .map(|bytes| {
                kvmini_vmm::arch::x86_64::layout::ram_regions(bytes)
                    .into_iter()
                    .map(|(_, len)| len as u64)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// PSS of the anonymous mappings that are guest RAM of `sizes` (each size
/// claims one mapping of exactly that size).
pub fn guest_ram_pss(mappings: &[Mapping], sizes: &[u64]) -> u64 {
    let mut taken = vec![false; mappings.len()];
    let mut pss = 0;
    for &size in sizes {
        if let Some(i) = (0..mappings.len())
            .find(|&i| !taken[i] && mappings[i].anon && mappings[i].bytes == size && size > 0)
        {
            taken[i] = true;
            pss += mappings[i].pss_kib;
        }
    }
    pss
}

/// `root` and all its descendants (found through the parent field of
/// /proc/PID/stat; threads share their process's memory and are not
/// counted twice).
pub fn tree_pids(root: u32) -> Vec<u32> {
    let mut parent_of: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_ppid(&s))
            {
                parent_of.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = parent_of.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// The parent pid from a /proc/PID/stat line (the command name may hold
/// spaces and parentheses, so parse after the last ')').
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Sums `Pss:` and `Rss:` (KiB) from a smaps_rollup text.
pub fn parse_rollup(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

/// Memory of `root`'s process tree right now.
pub fn tree_memory(root: u32) -> TreeMemory {
    let mut m = TreeMemory::default();
    for pid in tree_pids(root) {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            let (pss, rss) = parse_rollup(&text);
            m.pss_kib += pss;
            m.rss_kib += rss;
            m.processes += 1;
        }
        let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let sizes = guest_ram_sizes(&argv);
        if !sizes.is_empty() {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
                m.guest_ram_pss_kib += guest_ram_pss(&parse_smaps(&text), &sizes);
            }
        }
    }
    m
}

/// Runs a short host command and returns its trimmed stdout, or why not.
pub fn host_output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Extracts an initramfs (gzip'd or plain newc cpio) into `dir` with the
/// host's gzip and cpio: the root tree the container and the host run from.
pub fn extract_initramfs(initrd: &Path, dir: &Path) -> Result<(), String> {
    let data =
        std::fs::read(initrd).map_err(|e| format!("cannot read {}: {e}", initrd.display()))?;
    let cpio = if data.starts_with(&[0x1f, 0x8b]) {
        let mut gz = Command::new("gzip")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run gzip (needed to unpack the initramfs): {e}"))?;
        let mut stdin = gz.stdin.take().ok_or("gzip has no stdin")?;
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&data);
        });
        let out = gz.wait_with_output().map_err(|e| e.to_string())?;
        let _ = feeder.join();
        if !out.status.success() {
            return Err(format!("gzip -dc {} failed", initrd.display()));
        }
        out.stdout
    } else {
        data
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut cp = Command::new("cpio")
        .arg("-idm")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cpio (needed to unpack the initramfs): {e}"))?;
    let mut stdin = cp.stdin.take().ok_or("cpio has no stdin")?;
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&cpio);
    });
    let out = cp.wait_with_output().map_err(|e| e.to_string())?;
    let _ = feeder.join();
    if !out.status.success() {
        return Err(format!(
            "cpio -idm of {} failed: {}",
            initrd.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if !dir.join("bin/sh").exists() && !dir.join("bin/busybox").exists() {
        return Err(format!(
            "{} has no /bin/sh or /bin/busybox: not a root filesystem the workloads can run in",
            initrd.display()
        ));
    }
    Ok(())
}

/// The root tree's dynamic loader, and its library path, if it has one.
pub fn tree_loader(root: &Path) -> Option<(PathBuf, String)> {
    let ld = root.join("lib64/ld-linux-x86-64.so.2");
    ld.exists().then(|| {
        let libs = [
            "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu",
            "lib",
            "usr/lib",
        ]
        .iter()
        .map(|d| root.join(d).display().to_string())
        .collect::<Vec<_>>()
        .join(":");
        (ld, libs)
    })
}

/// A host command running the tree's `tool` with the tree's own loader and
/// libraries (not the host's): the same bytes as inside the VM and the
/// container.
pub fn tree_command(root: &Path, tool: &str) -> Option<Command> {
    let bin = tool_in_tree(root, tool)?;
    Some(match tree_loader(root) {
        Some((ld, libs)) => {
            let mut c = Command::new(ld);
            c.arg("--library-path").arg(libs).arg(bin);
            c
        }
        None => Command::new(bin),
    })
}

/// Finds `name` in the root tree's usual binary directories.
pub fn tool_in_tree(root: &Path, name: &str) -> Option<PathBuf> {
    ["bin", "sbin", "usr/bin", "usr/sbin"]
        .iter()
        .map(|d| root.join(d).join(name))
        .find(|p| p.exists() || p.symlink_metadata().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_survives_odd_command_names() {
        assert_eq!(parse_ppid("42 (sh) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("42 (a) b (c)) R 99 1 1"), Some(99));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn rollup_fields() {
        let t =
            "00400000-7ffc [rollup]\nRss:               10240 kB\nPss:                8000 kB\n\
                 Pss_Anon:   1 kB\n";
        assert_eq!(parse_rollup(t), (8000, 10240));
        assert_eq!(parse_rollup(""), (0, 0));
    }

    const SMAPS: &str = "\
00400000-00500000 r-xp 00000000 fe:00 123  /usr/bin/kvmini
Rss:                 800 kB
Pss:                 400 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Size:             262144 kB
Pss:               30000 kB
7f0010000000-7f0020000000 rw-p 00000000 00:00 0
Pss:                 100 kB
7f0020000000-7f0020001000 rw-p 00000000 00:00 0                          [anon:x]
Pss:                   4 kB
7f0030000000-7f0040000000 rw-p 00000000 fe:00 9  /tmp/a file
Pss:                  50 kB
";

    #[test]
    fn smaps_mappings_and_guest_ram() {
        let m = parse_smaps(SMAPS);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[0],
            Mapping {
                bytes: 1 << 20,
                anon: false,
                pss_kib: 400
            }
        );
        assert!(m[1].anon && m[2].anon && m[3].anon && !m[4].anon);
        assert_eq!(m[1].bytes, 256 << 20);
        // One 256 MiB region claims one mapping: the first anonymous one.
        assert_eq!(guest_ram_pss(&m, &[256 << 20]), 30000);
        // Two regions of that size claim both anonymous ones, not the file.
        assert_eq!(guest_ram_pss(&m, &[256 << 20, 256 << 20]), 30100);
        assert_eq!(guest_ram_pss(&m, &[128 << 20]), 0);
        assert_eq!(guest_ram_pss(&m, &[]), 0);
    }

    #[test]
    fn guest_ram_sizes_from_command_lines() {
        let argv = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            guest_ram_sizes(&argv("/x/kvmini exec --memory 512M -- sh -c -m")),
            [512 << 20]
        );
        // Above the MMIO gap kvmini splits RAM in two.
        let big = guest_ram_sizes(&argv("kvmini run -m 5G"));
        assert_eq!(big.len(), 2);
        assert_eq!(big.iter().sum::<u64>(), 5 << 30);
        assert_eq!(
            guest_ram_sizes(&argv("qemu-system-x86_64 -accel tcg -m 648M -smp 1")),
            [648 << 20]
        );
        assert!(guest_ram_sizes(&argv("crun run x")).is_empty());
        assert!(guest_ram_sizes(&argv("kvmini exec --memory")).is_empty());
        assert!(guest_ram_sizes(&[]).is_empty());
    }

    #[test]
    fn values_from_lines() {
        let lines = ["ready rss_kb=123", "cpu t0=1.5 t1=3.25"];
        assert_eq!(
            find_value(lines.iter().copied(), "rss_kb").as_deref(),
            Some("123")
        );
        assert_eq!(
            find_value(lines.iter().copied(), "t1").as_deref(),
            Some("3.25")
        );
        assert_eq!(find_value(lines.iter().copied(), "t2"), None);
    }

    #[test]
    fn our_own_tree_is_measured() {
        let m = tree_memory(std::process::id());
        assert!(m.processes >= 1);
        assert!(m.rss_kib > 0 && m.pss_kib > 0, "{m:?}");
        assert_eq!(EnvKind::parse(" container"), Some(EnvKind::Container));
        assert_eq!(EnvKind::parse("docker"), None);
    }
}

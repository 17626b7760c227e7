//! End-to-end tests: real Linux guests booted by `kvmini`.
//!
//! Each scenario is a shell script in `tests/scenarios/` (POSIX sh; it runs
//! under busybox inside the rig). All scenarios run in ONE batch, shared by
//! the tests through a `OnceLock`:
//! - on hosts whose CPU has `vmx`/`svm`, directly on this host;
//! - otherwise inside the nested rig (`resources/rig/run.sh`): an L1 Linux
//!   under QEMU TCG with emulated SVM, where kvm-amd gives a real `/dev/kvm`.
//!   Booting L1 is the fixed cost, so it happens once.
//!
//! The guest kernel, initramfs and a statically linked kvmini are built
//! first (the build scripts cache by content hash, so this is cheap after the
//! first run). Anything that prevents a scenario from running FAILS its test.
//!
//! Retries (the nested rig's L1 sometimes freezes, docs/testing.md): a
//! scenario runs once. It runs again, in a fresh L1, only if L1 froze while
//! it was under way and no kvmini process was running then (run.sh tells,
//! from L1's heartbeat): that freeze is the rig's own. A freeze while a
//! kvmini process ran is a failed attempt of that scenario, and fails its
//! test, with one exception: run.sh saw L1's timer interrupt pending and
//! deliverable, with interrupts enabled, for a second and never taken
//! (`l1-timer-stuck=yes`), the
//! emulator's failure, which Firecracker booting the same guest in the same
//! rig met too (docs/testing.md): that attempt is not judged and the
//! scenario runs again in a fresh L1, announced. Every attempt is kept,
//! and a summary of the attempts per scenario is printed at the end of the
//! batch.
//!
//! Environment knobs:
//! - `KVMINI_E2E_MODE=rig|host`: force where scenarios run.
//! - `KVMINI_E2E_TIMEOUT=SECS`: per-scenario timeout (default 90; the slowest scenario takes ~20 s in the rig).
//! - `KVMINI_E2E_KVMINI=PATH`: use this static kvmini instead of building one.
//! - `KVMINI_E2E_RIG_SMP=N`: vCPUs of the rig's L1 (default 1, see below).
//! - `KVMINI_E2E_ONLY=a,b`: run only these scenarios, and not the rig's
//!   self-test (for a quick check by hand): every other test fails as not
//!   run.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const TAIL_LINES: usize = 40;

/// Output of one scenario in one rig run, as framed by
/// `resources/rig/scenario-runner.sh`.
#[derive(Debug, Default, Clone)]
struct Scenario {
    lines: Vec<String>,
    rc: Option<i32>,
    timed_out: bool,
    /// Its END marker came.
    ended: bool,
}

/// run.sh's `@@KVMINI-RIG-FROZE` line: L1 froze or broke and was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Froze {
    /// A kvmini process was (or may have been) running at the time.
    kvmini_running: bool,
    /// L1's timer interrupt was pending and deliverable for a second but
    /// never taken (`l1-timer-stuck=yes`): the emulator's failure.
    timer_stuck: bool,
    why: String,
}

/// One rig run's console, split up.
#[derive(Debug, Default)]
struct RigRun {
    scenarios: HashMap<String, Scenario>,
    froze: Option<Froze>,
}

/// How one attempt of a scenario ended.
#[derive(Debug, Clone)]
enum Outcome {
    /// It ended (END marker), or its runner timed it out: judged by its test.
    Ran(Scenario),
    /// L1 froze while it was under way and a kvmini process was running:
    /// a failed attempt of kvmini.
    FrozeDuringKvmini(Scenario, String),
    /// L1 froze while it was under way and no kvmini process was running:
    /// the rig's failure; the scenario runs again in a fresh L1.
    FrozeWithoutKvmini(Scenario, String),
    /// L1 froze while it was under way, a kvmini process running, with
    /// L1's timer interrupt pending and never taken (the emulator's failure,
    /// reproduced with Firecracker): the scenario runs again in a fresh L1.
    FrozeTimerStuck(Scenario, String),
}

#[derive(Debug, Clone)]
struct Attempt {
    /// Which rig run (1-based).
    run: u32,
    /// That run's console log.
    log: PathBuf,
    outcome: Outcome,
}

impl Scenario {
    /// How often run.sh revived L1's lost timer while it ran (its
    /// `@@KVMINI-RIG-REVIVED` lines): the run went on, but says so.
    fn revivals(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| l.contains("@@KVMINI-RIG-REVIVED "))
            .count()
    }
}

impl Attempt {
    fn describe(&self) -> String {
        let (Outcome::Ran(s)
        | Outcome::FrozeDuringKvmini(s, _)
        | Outcome::FrozeWithoutKvmini(s, _)
        | Outcome::FrozeTimerStuck(s, _)) = &self.outcome;
        match s.revivals() {
            0 => self.ending(),
            n => format!(
                "{} (L1's lost timer revived {n} time(s) meanwhile)",
                self.ending()
            ),
        }
    }

    fn ending(&self) -> String {
        match &self.outcome {
            Outcome::Ran(s) if s.timed_out => format!("run {}: timed out", self.run),
            Outcome::Ran(s) => match s.rc {
                Some(rc) => format!("run {}: rc={rc}", self.run),
                None => format!("run {}: no exit status", self.run),
            },
            Outcome::FrozeDuringKvmini(_, why) => {
                format!("run {}: L1 froze while kvmini ran ({why})", self.run)
            }
            Outcome::FrozeWithoutKvmini(_, why) => {
                format!("run {}: L1 froze, no kvmini running ({why})", self.run)
            }
            Outcome::FrozeTimerStuck(_, why) => format!(
                "run {}: L1 froze with its timer interrupt stuck, the emulator's failure ({why})",
                self.run
            ),
        }
    }
}

/// Result of the batch: every attempt of every scenario.
struct Batch {
    attempts: HashMap<String, Vec<Attempt>>,
    console: Vec<String>,
    /// Rig runs made, and what made the batch stop short, if anything.
    runs: u32,
    /// What run.sh did with an L1 that stops its heartbeat (see
    /// `frozen_l1_check`).
    frozen_l1: Result<(), String>,
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run a build script; its stdout is the artefact path (contract of every
/// script under resources/). Progress goes straight to our stderr.
/// A cached test artefact, built on first use by its resources/ script.
fn build_artefact(script: &str) -> Result<String, String> {
    let relative = script.strip_prefix("resources/").unwrap_or(script);
    kvmini::guest::build_artefact(relative)
        .map(|p| p.display().to_string())
        .map_err(|e| e.to_string())
}

/// Build kvmini statically (it runs inside the rig's minimal L1). A separate
/// target dir keeps this from waiting on the `cargo test` build lock.
fn build_static_kvmini() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("KVMINI_E2E_KVMINI") {
        return Ok(PathBuf::from(p));
    }
    let target = "x86_64-unknown-linux-gnu";
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("e2e: building static kvmini in {}", target_dir.display());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "kvmini", "--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(repo_root())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("static build of kvmini failed: {status}"));
    }
    Ok(target_dir.join(target).join("release").join("kvmini"))
}

fn host_has_hw_virt() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false)
}

/// Split the console into scenarios by the `@@KVMINI-SCENARIO-*` markers,
/// and find run.sh's `@@KVMINI-RIG-FROZE` line. Markers are searched
/// anywhere in a line: a kernel message may precede them.
fn parse_console(console: &[String]) -> RigRun {
    let mut run = RigRun::default();
    let map = &mut run.scenarios;
    let mut current: Option<String> = None;
    for line in console {
        if let Some(i) = line.find("@@KVMINI-SCENARIO-BEGIN ") {
            let name = line[i + 24..].trim().to_string();
            map.insert(name.clone(), Scenario::default());
            current = Some(name);
        } else if let Some(i) = line.find("@@KVMINI-SCENARIO-END ") {
            let mut words = line[i + 22..].split_whitespace();
            let name = words.next().unwrap_or_default().to_string();
            let rc = words
                .find_map(|w| w.strip_prefix("rc="))
                .and_then(|v| v.parse().ok());
            if let Some(s) = map.get_mut(&name) {
                s.rc = rc;
                s.ended = true;
            }
            current = None;
        } else if let Some(i) = line.find("@@KVMINI-RIG-FROZE ") {
            let rest = &line[i + 19..];
            let (flag, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (stuck, why) = match rest.trim_start().split_once(' ') {
                Some((w, why)) if w.starts_with("l1-timer-stuck=") => {
                    (w == "l1-timer-stuck=yes", why)
                }
                _ => (false, rest),
            };
            run.froze = Some(Froze {
                // Anything but a clear "no" counts against kvmini.
                kvmini_running: flag.trim() != "kvmini-running=no",
                timer_stuck: stuck,
                why: why.trim().to_string(),
            });
        } else if let Some(name) = &current {
            if let Some(s) = map.get_mut(name) {
                if line.contains("@@KVMINI-SCENARIO-TIMEOUT ") {
                    s.timed_out = true;
                }
                s.lines.push(line.clone());
            }
        }
    }
    run
}

/// The attempts one rig run made: every scenario that began in it. One that
/// began but never ended was under way when L1 froze; the freeze is blamed
/// on kvmini unless run.sh says for certain that no kvmini process was
/// running (or the runner had already timed the scenario out: a failure).
fn attempts_of(run: RigRun, number: u32, log: &Path) -> Vec<(String, Attempt)> {
    let froze = run.froze;
    run.scenarios
        .into_iter()
        .map(|(name, s)| {
            let outcome = if s.ended || s.timed_out {
                Outcome::Ran(s)
            } else {
                match &froze {
                    Some(f) if !f.kvmini_running => Outcome::FrozeWithoutKvmini(s, f.why.clone()),
                    Some(f) if f.timer_stuck => Outcome::FrozeTimerStuck(s, f.why.clone()),
                    Some(f) => Outcome::FrozeDuringKvmini(s, f.why.clone()),
                    None => Outcome::FrozeDuringKvmini(
                        s,
                        "the rig run ended with this scenario unfinished".into(),
                    ),
                }
            };
            let attempt = Attempt {
                run: number,
                log: log.to_path_buf(),
                outcome,
            };
            (name, attempt)
        })
        .collect()
}

/// The scenarios that need (another) rig run: those never begun, and those
/// whose every attempt so far was cut short by a freeze of the rig's own.
fn to_run(names: &[String], attempts: &HashMap<String, Vec<Attempt>>) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            attempts.get(*n).map_or(true, |a| {
                a.iter().all(|a| {
                    matches!(
                        a.outcome,
                        Outcome::FrozeWithoutKvmini(..) | Outcome::FrozeTimerStuck(..)
                    )
                })
            })
        })
        .cloned()
        .collect()
}

/// run.sh's exit code when the rig itself broke (EX_TEMPFAIL).
const RIG_BROKE: i32 = 75;

/// How many times at most the rig is booted for one batch: the first run of
/// every scenario, then fresh L1s for the scenarios that never began or
/// were cut short by a freeze of the rig's own (no kvmini running).
const MAX_RIG_RUNS: u32 = 5;

/// Writes a message straight to stderr, past the test harness's output
/// capture: what the rig did wrong must be seen even when the tests pass.
fn warn(msg: &str) {
    let _ = writeln!(std::io::stderr(), "e2e: WARNING: {msg}");
}

/// A new Command with `base`'s program, arguments and environment.
fn copy_command(base: &Command) -> Command {
    let mut cmd = Command::new(base.get_program());
    cmd.args(base.get_args());
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd
}

/// One run of resources/rig/run.sh over the scenarios in `dir`; returns the
/// console lines and where they were saved. A broken rig (exit 75) is not
/// an error here: its console ends with run.sh's `@@KVMINI-RIG-FROZE` line,
/// which says whether a kvmini process was running.
fn run_rig(base: &Command, dir: &Path, attempt: u32) -> Result<(Vec<String>, PathBuf), String> {
    let mut cmd = copy_command(base);
    cmd.arg("--scenarios")
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run resources/rig/run.sh: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Serial consoles end lines with \r\n.
    let console: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    let log_path = std::env::temp_dir().join(format!(
        "kvmini-e2e-console-{}-{attempt}.log",
        std::process::id()
    ));
    let _ = std::fs::write(&log_path, console.join("\n"));
    eprintln!("e2e: full console log in {}", log_path.display());
    if out.status.code() == Some(RIG_BROKE) {
        let froze = parse_console(&console).froze;
        warn(&format!(
            "the nested rig's L1 froze or broke ({}); console in {}",
            froze.map_or("run.sh did not say why".into(), |f| format!(
                "{}; a kvmini process was {}running",
                f.why,
                if f.kvmini_running { "" } else { "not " }
            )),
            log_path.display()
        ));
    } else if !out.status.success() {
        return Err(format!(
            "rig run failed ({}); last console lines:\n{}",
            out.status,
            tail(&console, TAIL_LINES)
        ));
    }
    Ok((console, log_path))
}

fn scenario_names(dir: &Path) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".sh").map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

fn run_batch() -> Result<Batch, String> {
    let kernel_dir = build_artefact("resources/kernel/build.sh")?;
    let initrd = build_artefact("resources/rootfs/build-initramfs.sh")?;
    let ext4 = build_artefact("resources/rootfs/build-ext4.sh")?;
    // fio and iperf3 for kvmini bench's block and network workloads.
    let bench_initrd = build_artefact("resources/bench/build-initramfs.sh")?;
    // Debian 12 with its own kernel and initrd (the debian_* scenarios).
    let debian = build_artefact("resources/debian/build.sh")?;
    // virtio-fs's backend for --fs (the fs_* scenarios).
    let virtiofsd = build_artefact("resources/virtiofsd/build.sh")?;
    let kvmini = build_static_kvmini()?;
    let host = match std::env::var("KVMINI_E2E_MODE").as_deref() {
        Ok("host") => true,
        Ok("rig") => false,
        Ok(other) => {
            return Err(format!(
                "KVMINI_E2E_MODE must be rig or host, not {other:?}"
            ))
        }
        Err(_) => host_has_hw_virt(),
    };
    let timeout = std::env::var("KVMINI_E2E_TIMEOUT").unwrap_or_else(|_| "90".into());
    let rig_smp = std::env::var("KVMINI_E2E_RIG_SMP").unwrap_or_else(|_| "1".into());
    eprintln!(
        "e2e: running scenarios {}",
        if host {
            "on this host (hardware KVM)"
        } else {
            "in the nested rig (no vmx/svm here)"
        }
    );
    let mut base = Command::new(repo_root().join("resources/rig/run.sh"));
    base.arg("--kvmini")
        .arg(&kvmini)
        .args(["--timeout", &timeout])
        // One L1 vCPU: with two, L1 froze within 16 single-vCPU guests
        // (nested KVM under multi-threaded TCG), and ran them slower
        // (docs/testing.md, "Known rig problem").
        .args(["--smp", &rig_smp])
        .env("GUEST_VMLINUX", Path::new(&kernel_dir).join("vmlinux"))
        .env("GUEST_BZIMAGE", Path::new(&kernel_dir).join("bzImage"))
        .env("GUEST_INITRD", &initrd)
        .env("GUEST_EXT4", &ext4)
        .env("GUEST_BENCH_INITRD", &bench_initrd)
        .env("GUEST_DEBIAN", &debian)
        .env("VIRTIOFSD", &virtiofsd)
        // L1 records every kvmini start, so a freeze can be told apart.
        .arg("--track-kvmini");
    // Before the scenarios, and on their own (two L1s at once would slow
    // both on small hosts): the rig's freeze detection and its verdict on
    // whether kvmini was running, which the reruns below rely on. It needs
    // no hardware, so it runs in host mode too.
    let only: Option<Vec<String>> = std::env::var("KVMINI_E2E_ONLY")
        .ok()
        .map(|v| v.split(',').map(|n| n.trim().to_string()).collect());
    let frozen_l1 = match &only {
        Some(_) => Err("NOT RUN: KVMINI_E2E_ONLY is set".to_string()),
        None => frozen_l1_check(&base, "tests/rig-frozen", false)
            .and_then(|()| frozen_l1_check(&base, "tests/rig-frozen-kvmini", true)),
    };
    if host {
        base.arg("--host");
    }
    let all = repo_root().join("tests/scenarios");
    let mut names = scenario_names(&all)?;
    if let Some(only) = &only {
        if let Some(n) = only.iter().find(|n| !names.contains(n)) {
            return Err(format!("KVMINI_E2E_ONLY names no scenario {n:?}"));
        }
        names.retain(|n| only.contains(n));
    }
    let mut attempts: HashMap<String, Vec<Attempt>> = HashMap::new();
    let mut console = Vec::new();
    let mut runs = 0;
    // The nested rig is not fully stable (docs/testing.md: L1 livelocks under
    // TCG). A fresh L1 runs what never began and what a freeze of the rig's
    // own (no kvmini running) cut short; nothing else is ever run twice.
    for run in 1..=MAX_RIG_RUNS {
        let todo = to_run(&names, &attempts);
        if todo.is_empty() {
            break;
        }
        let dir = if run == 1 && only.is_none() {
            all.clone()
        } else {
            if run > 1 {
                warn(&format!(
                    "scenarios {todo:?} never began or were cut short by a freeze of the \
                     rig with no kvmini running; running them in a fresh L1 (rig run {run} of \
                     at most {MAX_RIG_RUNS})"
                ));
            }
            let dir = std::env::temp_dir().join(format!("kvmini-e2e-run-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for n in &todo {
                std::fs::copy(all.join(format!("{n}.sh")), dir.join(format!("{n}.sh")))
                    .map_err(|e| format!("cannot copy scenario {n}: {e}"))?;
            }
            dir
        };
        let (more, log) = run_rig(&base, &dir, run)?;
        if dir != all {
            let _ = std::fs::remove_dir_all(&dir);
        }
        runs = run;
        for (name, attempt) in attempts_of(parse_console(&more), run, &log) {
            attempts.entry(name).or_default().push(attempt);
        }
        console.extend(more);
    }
    print_summary(&names, &attempts, runs);
    Ok(Batch {
        attempts,
        console,
        runs,
        frozen_l1,
    })
}

/// How many attempts each scenario took and how each ended, on stderr past
/// the harness's capture (it matters most when the tests pass).
fn print_summary(names: &[String], attempts: &HashMap<String, Vec<Attempt>>, runs: u32) {
    let mut text = format!("e2e: attempts per scenario ({runs} rig run(s)):\n");
    for n in names {
        let a = attempts.get(n).map_or(&[][..], Vec::as_slice);
        let what: Vec<String> = a.iter().map(Attempt::describe).collect();
        text += &format!(
            "  {n:<22} {} attempt(s): {}\n",
            a.len(),
            if what.is_empty() {
                "never began".to_string()
            } else {
                what.join("; ")
            }
        );
    }
    let _ = write!(std::io::stderr(), "{text}");
}

/// Runs the rig self-test in `dir` (a scenario that stops L1's heartbeat
/// and goes silent for 15 minutes; in tests/rig-frozen-kvmini with a kvmini
/// running) and checks that run.sh stops that L1 as broken (exit 75, naming
/// the missing heartbeat) well before the scenario ends, and says whether a
/// kvmini process was running as `kvmini_running` expects.
fn frozen_l1_check(base: &Command, dir: &str, kvmini_running: bool) -> Result<(), String> {
    let mut cmd = copy_command(base);
    cmd.args(["--timeout", "1200", "--scenarios"])
        .arg(repo_root().join(dir))
        // Shorter than the scenarios' 60 s: nothing heavy runs in L1 here.
        .env("KVMINI_RIG_STALL", "30")
        .stdin(Stdio::null());
    eprintln!("e2e: checking that the rig stops an L1 whose heartbeat stops ({dir}, ~1 min)");
    let started = std::time::Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run resources/rig/run.sh: {e}"))?;
    let secs = started.elapsed().as_secs();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = |text: &str| {
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        tail(&lines, TAIL_LINES)
    };
    let report = || {
        format!(
            "{dir}: run.sh exited {} after {secs} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            last(&stdout),
            last(&stderr)
        )
    };
    if !stdout.contains("stopping the heartbeat") {
        return Err(format!("the scenario never ran: {}", report()));
    }
    if out.status.code() != Some(RIG_BROKE) || !stderr.contains("no heartbeat from L1") {
        return Err(format!(
            "expected exit {RIG_BROKE} and \"no heartbeat from L1\": {}",
            report()
        ));
    }
    let console: Vec<String> = stdout.lines().map(str::to_string).collect();
    match parse_console(&console).froze {
        // A healthy L1 whose heartbeat was stopped on purpose: its timer
        // works, so the stuck-timer verdict must not fire here.
        Some(f) if f.kvmini_running == kvmini_running && !f.timer_stuck => {}
        other => {
            return Err(format!(
                "expected @@KVMINI-RIG-FROZE kvmini-running={}, got {other:?}: {}",
                if kvmini_running { "yes" } else { "no" },
                report()
            ))
        }
    }
    // The heartbeat gap was sampled while it lasted (12 s in), and a
    // working timer was not taken for a stuck one then either.
    if !stderr.contains("L1 (sampled) timer-stuck: no") {
        return Err(format!(
            "expected run.sh to sample L1 during the heartbeat gap (timer-stuck: no): {}",
            report()
        ));
    }
    if secs > 600 {
        return Err(format!("run.sh took too long to notice: {}", report()));
    }
    Ok(())
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn batch() -> &'static Batch {
    static BATCH: OnceLock<Result<Batch, String>> = OnceLock::new();
    match BATCH.get_or_init(run_batch) {
        Ok(b) => b,
        Err(e) => panic!("e2e: could not run the scenarios: {e}"),
    }
}

/// A scenario's result plus assertion helpers that show the console on failure.
struct Check<'a> {
    name: &'a str,
    s: &'a Scenario,
    log: &'a Path,
    /// How many attempts it took (more than one only after freezes of the
    /// rig's own), for the failure message.
    attempts: &'a [Attempt],
}

impl Check<'_> {
    fn fail(&self, what: &str) -> ! {
        let history: Vec<String> = self.attempts.iter().map(Attempt::describe).collect();
        panic!(
            "scenario {}: {what}\nattempts: {}\n---- last {TAIL_LINES} lines of its output (full log: {}) ----\n{}",
            self.name,
            history.join("; "),
            self.log.display(),
            tail(&self.s.lines, TAIL_LINES)
        );
    }

    fn rc(&self, want: i32) -> &Self {
        if self.s.timed_out {
            self.fail("timed out");
        }
        match self.s.rc {
            Some(rc) if rc == want => self,
            Some(rc) => self.fail(&format!("exit code {rc}, expected {want}")),
            None => self.fail("never finished (no END marker)"),
        }
    }

    /// Some output line contains `text`.
    fn shows(&self, text: &str) -> &Self {
        if !self.s.lines.iter().any(|l| l.contains(text)) {
            self.fail(&format!("output lacks {text:?}"));
        }
        self
    }

    /// Some output line is exactly `text` (trimmed): "one" is not "done".
    fn line(&self, text: &str) -> &Self {
        if !self.s.lines.iter().any(|l| l.trim() == text) {
            self.fail(&format!("no output line is exactly {text:?}"));
        }
        self
    }

    /// The rest of the first output line that starts with `prefix` (lines
    /// that merely contain it, like the echoed command line, do not count).
    fn after(&self, prefix: &str) -> String {
        self.value(prefix, self.s.lines.iter())
    }

    /// The rest of the first line starting with `prefix` after the last
    /// line starting with `marker`: the judged attempt of a scenario that
    /// tries again within itself, none of the earlier attempts' lines.
    fn after_in_last(&self, marker: &str, prefix: &str) -> String {
        let from = self
            .s
            .lines
            .iter()
            .rposition(|l| l.trim_start().starts_with(marker))
            .unwrap_or_else(|| self.fail(&format!("no output line starts with {marker:?}")));
        self.value(prefix, self.s.lines[from..].iter())
    }

    fn value<'l>(&self, prefix: &str, mut lines: impl Iterator<Item = &'l String>) -> String {
        lines
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(prefix)
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| self.fail(&format!("no output line starts with {prefix:?}")))
    }
}

/// The result of scenario `name` for its test to judge. Fails at once if
/// any attempt froze L1 while kvmini ran (a failed attempt of kvmini,
/// whatever another attempt did), or if it never got a result.
fn scenario(name: &'static str) -> Check<'static> {
    let b = batch();
    let attempts = b.attempts.get(name).map_or(&[][..], Vec::as_slice);
    let history = || {
        let d: Vec<String> = attempts.iter().map(Attempt::describe).collect();
        d.join("; ")
    };
    if attempts.is_empty() {
        panic!(
            "scenario {name} never began in {} rig run(s) (tests/scenarios/{name}.sh missing, \
             left out by KVMINI_E2E_ONLY, or the rig froze before it every time); last \
             console lines:\n{}",
            b.runs,
            tail(&b.console, TAIL_LINES)
        );
    }
    for a in attempts {
        if let Outcome::FrozeDuringKvmini(s, why) = &a.outcome {
            panic!(
                "scenario {name}: L1 froze while a kvmini process was running ({why}); this \
                 counts as a failed attempt of kvmini, not as the rig's failure\nattempts: {}\n\
                 ---- last {TAIL_LINES} lines of its output (full log: {}) ----\n{}",
                history(),
                a.log.display(),
                tail(&s.lines, TAIL_LINES)
            );
        }
    }
    match attempts.iter().find_map(|a| match &a.outcome {
        Outcome::Ran(s) => Some((s, a)),
        _ => None,
    }) {
        Some((s, a)) => Check {
            name,
            s,
            log: &a.log,
            attempts,
        },
        None => {
            // Not empty (checked above).
            let a = &attempts[attempts.len() - 1];
            let s = match &a.outcome {
                Outcome::Ran(s) | Outcome::FrozeDuringKvmini(s, _) => s,
                Outcome::FrozeWithoutKvmini(s, _) | Outcome::FrozeTimerStuck(s, _) => s,
            };
            let (lines, log) = (tail(&s.lines, TAIL_LINES), &a.log);
            panic!(
                "scenario {name} NOT RUN: every attempt was cut short by a freeze of the rig \
                 (no kvmini running, or L1's timer stuck; {MAX_RIG_RUNS} rig runs at most)\nattempts: {}\n\
                 ---- last {TAIL_LINES} lines of its last attempt (full log: {}) ----\n{lines}",
                history(),
                log.display()
            )
        }
    }
}

fn assert_booted(name: &'static str, cpus: &str) {
    let c = scenario(name);
    c.rc(0)
        .shows("kvmini-guest: init reached")
        .shows("kvmini-guest: exit status 0");
    // What the guest read from /proc/cmdline (not the kernel's own log of
    // its command line): kvmini's defaults, then the user's words.
    let cmdline = c.after("cmdline=");
    let kernel_words: Vec<&str> = cmdline
        .split(" -- ")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    for want in ["console=ttyS0", "kvmini.test=hello"] {
        if !kernel_words.contains(&want) {
            c.fail(&format!(
                "/proc/cmdline in the guest lacks {want}: {cmdline:?}"
            ));
        }
    }
    let got = c.after("kvmini-cpus=");
    if got != cpus {
        c.fail(&format!("guest saw {got} CPUs, expected {cpus}"));
    }
}

#[test]
fn boot_vmlinux_1cpu() {
    assert_booted("boot_vmlinux_1cpu", "1");
    // L1's CPU has SVM; the guest must not see it (nor VMX).
    let c = scenario("boot_vmlinux_1cpu");
    let got = c.after("kvmini-hwvirt=");
    if got != "0" {
        c.fail(&format!(
            "{got} guest CPU(s) list vmx or svm; kvmini hides both"
        ));
    }
}

#[test]
fn boot_vmlinux_2cpu() {
    assert_booted("boot_vmlinux_2cpu", "2");
}

#[test]
fn boot_bzimage_2cpu() {
    assert_booted("boot_bzimage_2cpu", "2");
}

#[test]
fn guest_exit_status() {
    scenario("guest_exit_status")
        .rc(0)
        .shows("about-to-fail")
        .shows("kvmini-guest: exit status 7");
}

#[test]
fn cmdline_quoting() {
    let c = scenario("cmdline_quoting");
    // Whole lines: `;` kept "one" apart, `|` reached tr, `||` and `&&`
    // chose, `>` wrote the file.
    c.rc(0)
        .line("one")
        .line("TWO")
        .line("alt-ok")
        .line("and-ok")
        .line("kvmini-guest: exit status 0");
    expect(&c, "file=", "redirected");
}

#[test]
fn memory_size() {
    let c = scenario("memory_size");
    c.rc(0);
    let line = c.after("MemTotal:");
    let kib: u64 = line
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|_| c.fail(&format!("cannot parse MemTotal {line:?}")));
    // 512 MiB minus what the kernel keeps for itself; well above 256 MiB.
    if !(400 * 1024..=512 * 1024).contains(&kib) {
        c.fail(&format!("MemTotal {kib} kB, expected about 512 MiB"));
    }
}

#[test]
fn bad_kernel_path() {
    let c = scenario("bad_kernel_path");
    c.rc(0).shows("nonexistent/vmlinux");
    if c.after("kvmini-rc=") == "0" {
        c.fail("kvmini exited 0 for a missing kernel");
    }
}

#[test]
fn interactive_shell() {
    scenario("interactive_shell")
        .rc(0)
        .shows("kvmini-guest: init reached")
        .shows("typed-ok");
}

#[test]
fn rig_parser_splits_scenarios() {
    let console: Vec<String> = [
        "noise",
        "@@KVMINI-SCENARIO-BEGIN a",
        "hello",
        "[ 1.0] kernel msg @@KVMINI-SCENARIO-END a rc=3 secs=1",
        "@@KVMINI-SCENARIO-BEGIN b",
        "@@KVMINI-SCENARIO-TIMEOUT b after 5s",
        "@@KVMINI-SCENARIO-END b rc=137 secs=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = parse_console(&console);
    let m = &run.scenarios;
    assert_eq!(m["a"].rc, Some(3));
    assert!(m["a"].ended);
    assert_eq!(m["a"].lines, vec!["hello".to_string()]);
    assert!(m["b"].timed_out);
    assert_eq!(m["b"].rc, Some(137));
    assert_eq!(run.froze, None);
}

/// A scenario during which run.sh revived L1's lost timer is judged as
/// any other (it ran to its end), and its attempt says so.
#[test]
fn revived_timer_is_said_not_judged() {
    let console = lines(&[
        "@@KVMINI-SCENARIO-BEGIN a",
        "@@KVMINI-RIG-STALL l1-timer-stuck=yes sampled 12s into a heartbeat gap",
        "[   40.1] @@KVMINI-RIG-REVIVED after 14s without a heartbeat: L1's pending timer interrupt was taken after a key press",
        "@@KVMINI-SCENARIO-END a rc=0 secs=50",
        "@@KVMINI-SCENARIO-BEGIN b",
        "@@KVMINI-SCENARIO-END b rc=1 secs=5",
    ]);
    let got: HashMap<String, Attempt> = attempts_of(parse_console(&console), 2, Path::new("x"))
        .into_iter()
        .collect();
    assert!(matches!(&got["a"].outcome, Outcome::Ran(s) if s.rc == Some(0)));
    assert_eq!(
        got["a"].describe(),
        "run 2: rc=0 (L1's lost timer revived 1 time(s) meanwhile)"
    );
    assert_eq!(got["b"].describe(), "run 2: rc=1");
}

fn lines(text: &[&str]) -> Vec<String> {
    text.iter().map(|s| s.to_string()).collect()
}

/// The retry policy, on made-up consoles: only a freeze with no kvmini
/// running earns another run; a freeze while kvmini ran is a failed
/// attempt; a finished attempt is never rerun, failed or not.
#[test]
fn retry_policy_reruns_only_freezes_of_the_rig() {
    let names = lines(&["done_ok", "done_failed", "cut", "never"]);
    // `flags`: what follows the FROZE marker before the reason.
    let froze = |flags: &str| {
        lines(&[
            "@@KVMINI-SCENARIO-BEGIN done_ok",
            "@@KVMINI-SCENARIO-END done_ok rc=0 secs=1",
            "@@KVMINI-SCENARIO-BEGIN done_failed",
            "@@KVMINI-SCENARIO-END done_failed rc=1 secs=1",
            "@@KVMINI-SCENARIO-BEGIN cut",
            "half a line",
            &format!("@@KVMINI-RIG-FROZE {flags} no heartbeat from L1 for 60s"),
        ])
    };
    let log = Path::new("/dev/null");
    let collect = |console: &[String]| {
        let mut m: HashMap<String, Vec<Attempt>> = HashMap::new();
        for (n, a) in attempts_of(parse_console(console), 1, log) {
            m.entry(n).or_default().push(a);
        }
        m
    };

    // No kvmini running: the rig's freeze; "cut" runs again, "never" for
    // the first time, the finished ones (failed or not) never again.
    let m = collect(&froze("kvmini-running=no"));
    assert!(matches!(
        m["cut"][0].outcome,
        Outcome::FrozeWithoutKvmini(..)
    ));
    assert_eq!(to_run(&names, &m), lines(&["cut", "never"]));

    // kvmini running: a failed attempt of "cut", which is not run again.
    let m = collect(&froze("kvmini-running=yes"));
    assert!(matches!(
        m["cut"][0].outcome,
        Outcome::FrozeDuringKvmini(..)
    ));
    assert_eq!(to_run(&names, &m), lines(&["never"]));

    // run.sh said nothing clear: blamed on kvmini.
    let mut console = froze("kvmini-running=no");
    console.pop();
    console.push("@@KVMINI-RIG-FROZE something else".into());
    let m = collect(&console);
    assert!(matches!(
        m["cut"][0].outcome,
        Outcome::FrozeDuringKvmini(..)
    ));

    // kvmini running, but L1's timer interrupt stuck (the emulator's
    // failure): "cut" runs again.
    let m = collect(&froze("kvmini-running=yes l1-timer-stuck=yes"));
    assert!(
        matches!(&m["cut"][0].outcome, Outcome::FrozeTimerStuck(_, why) if why == "no heartbeat from L1 for 60s")
    );
    assert_eq!(to_run(&names, &m), lines(&["cut", "never"]));
    // ... and with l1-timer-stuck=no it is kvmini's failed attempt.
    let m = collect(&froze("kvmini-running=yes l1-timer-stuck=no"));
    assert!(matches!(
        m["cut"][0].outcome,
        Outcome::FrozeDuringKvmini(..)
    ));
    assert_eq!(to_run(&names, &m), lines(&["never"]));

    // A scenario the runner timed out is judged (and fails), not rerun,
    // even if L1 broke afterwards with no kvmini left.
    let m = collect(&lines(&[
        "@@KVMINI-SCENARIO-BEGIN cut",
        "@@KVMINI-SCENARIO-TIMEOUT cut after 90s",
        "@@KVMINI-RIG-FROZE kvmini-running=no a scenario's processes survived SIGKILL in L1",
    ]));
    assert!(matches!(&m["cut"][0].outcome, Outcome::Ran(s) if s.timed_out));
    assert!(!to_run(&names, &m).contains(&"cut".to_string()));
}

/// The reruns after a frozen L1 depend on run.sh noticing the freeze.
#[test]
fn rig_stops_a_frozen_l1() {
    if let Err(e) = &batch().frozen_l1 {
        panic!("the rig did not stop an L1 that stopped its heartbeat: {e}");
    }
}

#[test]
fn disk_ext4_root() {
    let c = scenario("disk_ext4_root");
    c.rc(0)
        .shows("VFS: Mounted root (ext4 filesystem)")
        .shows("kvmini-guest: exit status 0");
    for (key, want) in [("second-boot=", "persisted-by-guest"), ("root-ro=", "1")] {
        let got = c.after(key);
        if got != want {
            c.fail(&format!("{key}{got}, expected {want}"));
        }
    }
}

#[test]
fn guest_panic() {
    let c = scenario("guest_panic");
    c.rc(0)
        .shows("the guest kernel panicked: Kernel panic - not syncing");
    let rc = c.after("kvmini-rc=");
    if rc != "4" {
        c.fail(&format!(
            "kvmini exited {rc} after a guest panic, expected 4"
        ));
    }
}

fn assert_kvmini_rc(c: &Check, want: &str) {
    let rc = c.after("kvmini-rc=");
    if rc != want {
        c.fail(&format!("kvmini exited {rc}, expected {want}"));
    }
}

#[test]
fn poweroff_shell() {
    let c = scenario("poweroff_shell");
    // What /init prints when busybox's poweroff signals it: a shell that
    // merely exits (end of input) gives exit 0 too, but not this. (It may
    // follow the shell's prompt on the same console line.)
    c.rc(0)
        .shows("kvmini-guest: init reached")
        .shows("kvmini-guest: poweroff requested");
    assert_kvmini_rc(&c, "0");
}

#[test]
fn poweroff_force() {
    let c = scenario("poweroff_force");
    c.rc(0).shows("reboot: Power off not available");
    assert_kvmini_rc(&c, "0");
}

/// `key` is followed by exactly `want` on its line.
fn expect(c: &Check, key: &str, want: &str) {
    let got = c.after(key);
    if got != want {
        c.fail(&format!("{key}{got}, expected {key}{want}"));
    }
}

#[test]
fn exec_status() {
    let c = scenario("exec_status");
    c.rc(0);
    expect(&c, "exec-rc-true=", "0");
    expect(&c, "exec-rc-false=", "1");
    expect(&c, "exec-rc-42=", "42");
    // The guest kernel's release comes from Debian's linux-source package,
    // which moves with its updates: read it from the build's config.
    let kernel_dir = build_artefact("resources/kernel/build.sh").unwrap_or_else(|e| panic!("{e}"));
    let release = common::kernel_release(Path::new(&kernel_dir));
    expect(
        &c,
        "env=",
        &format!("[hello world] [by-name] pwd=/proc secret=[] release={release}"),
    );
}

#[test]
fn exec_streams() {
    let c = scenario("exec_streams");
    c.rc(0).shows("stdout-identical").shows("stderr-identical");
    expect(&c, "exec-rc=", "0");
    expect(&c, "stdout-bytes=", "1048576 stderr-bytes=65536");
}

#[test]
fn exec_timeout() {
    let c = scenario("exec_timeout");
    c.rc(0).shows("did not finish within 8s (--timeout)");
    expect(&c, "exec-rc=", "124");
}

#[test]
fn exec_panic() {
    let c = scenario("exec_panic");
    c.rc(0)
        .shows("the guest kernel panicked: Kernel panic - not syncing");
    expect(&c, "exec-rc=", "123");
}

#[test]
fn exec_concurrent() {
    let c = scenario("exec_concurrent");
    c.rc(0);
    for i in 1..=4 {
        expect(
            &c,
            &format!("run-{i}-rc="),
            &format!("{} output=run-{i}-says-hi", 40 + i),
        );
    }
}

#[test]
fn exec_share() {
    let c = scenario("exec_share");
    c.rc(0).shows("guest read: from-the-host");
    // The read-only share was mounted (the guest read it), and the kernel
    // refused the write as read-only (not "no such directory").
    expect(&c, "ro-read=", "read-only-content");
    let refused = c.after("ro-refused=");
    if !refused.contains("Read-only file system") {
        c.fail(&format!("ro-refused={refused}: not refused as read-only"));
    }
    expect(&c, "host-ro-content=", "read-only-content");
    expect(&c, "exec-rc=", "0");
    expect(&c, "host-result=", "written-by-guest");
    expect(&c, "host-input=", "changed");
    expect(&c, "host-bin=", "0001ff0d0a");
    expect(&c, "host-ro=", "keep.txt");
    // Deleted (del.txt, gone/), renamed (old-name.txt, olddir/), a
    // directory replaced by a file (dirfile), no lost+found or staging dir.
    expect(
        &c,
        "host-tree=",
        ". ./dirfile ./input.txt ./new-name.txt ./newdir ./newdir/sub ./newdir/sub/y ./out \
         ./out/bin ./out/deeper ./out/deeper/result.txt ./script.sh",
    );
    expect(&c, "host-moved=", "moved y now-a-file");
    expect(&c, "host-mode=", "755");
}

/// Issue 13: a hostile guest's symlinks come back as symlinks and are
/// never followed, a hand-made `../` archive entry is refused whole, and
/// nothing outside the share changes.
#[test]
fn exec_share_attacks() {
    let c = scenario("exec_share_attacks");
    c.rc(0).shows(
        "refused the guest's changes to the shares, nothing was copied back: archive entry \
         '1/upper/../../../../tmp/attack/canary/evil'",
    );
    expect(&c, "plant-rc=", "0");
    expect(
        &c,
        "host-d=",
        "/tmp/attack/canary/.ssh host-copy=/tmp/attack/victim",
    );
    expect(&c, "write-rc=", "0");
    expect(&c, "host-written=", "pwned directory pwned");
    expect(&c, "raw-rc=", "125");
    expect(&c, "canary=", "unchanged");
    expect(&c, "host-raw=", "1");
    expect(&c, "host-outside=", ". .. canary share victim");
}

#[test]
fn exec_rootfs() {
    let c = scenario("exec_rootfs");
    c.rc(0).shows("image-unchanged");
    expect(&c, "root=", "overlay");
    expect(&c, "wrote=", "scratch");
    expect(&c, "exec-rc=", "0");
}

/// `key=` from the output, which must be 64 hex digits (a SHA-256).
fn sha(c: &Check, key: &str) -> String {
    let v = c.after(key);
    if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        c.fail(&format!("{key}{v} is not a SHA-256"));
    }
    v
}

/// MiB/s from `secs=T0-T1` (guest uptimes) and a size in MiB, if the times parse.
fn rate(c: &Check, secs_key: &str, mib: u64) -> Option<f64> {
    let secs = c.after(secs_key);
    let (t0, t1) = secs.split_once('-')?;
    let dt = t1.parse::<f64>().ok()? - t0.parse::<f64>().ok()?;
    Some(mib as f64 / dt)
}

#[test]
fn net_ping_tcp() {
    // The scenario's transfer sizes (tests/scenarios/net_ping_tcp.sh), as
    // the guest reports them.
    const UP_MIB: u64 = 16;
    const DOWN_MIB: u64 = 16;
    let c = scenario("net_ping_tcp");
    c.rc(0).shows("kvmini-guest: exit status 0");
    c.shows(&format!("up-mib={UP_MIB} down-mib={DOWN_MIB}"));
    // The guest got its MAC from the device's config space.
    c.after("52:54:00:12:34:56");
    if c.after("net-ping=") != "ok" {
        c.fail("the guest could not ping the host side of its TAP");
    }
    if c.after("up-nc-rc=") != "0" {
        c.fail("the guest's upload failed");
    }
    let (up, up_host) = (sha(&c, "guest-up-sha="), sha(&c, "host-up-sha="));
    if up != up_host {
        c.fail(&format!("upload: guest sent {up}, host got {up_host}"));
    }
    let (down, down_host) = (sha(&c, "guest-down-sha="), sha(&c, "host-down-sha="));
    if down != down_host {
        c.fail(&format!(
            "download: host sent {down_host}, guest got {down}"
        ));
    }
    // What arrived, counted at the receiving end (the SHA-256 pairs above
    // would also match for two empty files).
    const MIB: u64 = 1 << 20;
    for (key, mib) in [("host-up-bytes=", UP_MIB), ("guest-down-bytes=", DOWN_MIB)] {
        let got = c.after(key);
        if got.parse::<u64>().ok() != Some(mib * MIB) {
            c.fail(&format!("{key}{got}, expected {} ({mib} MiB)", mib * MIB));
        }
    }
    // Not asserted (emulated time in the rig), but worth seeing.
    eprintln!(
        "net_ping_tcp: upload {UP_MIB} MiB at {:.1?} MiB/s, download {DOWN_MIB} MiB at {:.1?} MiB/s (guest clock)",
        rate(&c, "up-secs=", UP_MIB),
        rate(&c, "down-secs=", DOWN_MIB)
    );
}

/// `--fs`: the guest's changes reach the host's directory while it runs.
#[test]
fn fs_live() {
    let c = scenario("fs_live");
    c.rc(0).shows("kvmini-guest: exit status 0");
    expect(&c, "guest-mounted=", "1");
    let (got, seeded) = (sha(&c, "guest-seed-sha="), sha(&c, "host-seed-sha="));
    if got != seeded {
        c.fail(&format!("the guest read {got}, L1 seeded {seeded}"));
    }
    expect(&c, "guest-changed=", "0");
    // Written, renamed (file and directory) and deleted, all seen by L1
    // before the VM ended; the guest then saw L1's answer.
    expect(
        &c,
        "host-while-running=",
        "yes new=from-guest old=gone moved=inner tmp=gone",
    );
    expect(&c, "guest-saw-ack=", "acked");
    expect(&c, "kvmini-rc=", "0");
    expect(&c, "virtiofsd-rc=", "0");
    // exec --fs: stopped by its --timeout (124), its changes on L1.
    c.shows("exec-wrote-it");
    expect(&c, "exec-rc=", "124");
    expect(&c, "host-after-exec=", "from-exec new=gone");
}

/// `exec --share` on KVM: live (virtio-fs), confined to the share.
#[test]
fn exec_share_live() {
    let c = scenario("exec_share_live");
    c.rc(0);
    expect(&c, "changed=", "0");
    expect(&c, "exec-rc=", "0");
    expect(&c, "host-new=", "from-exec old=gone");
    // The guest's `..` of the share is its own /, without L1's files.
    expect(&c, "guest-dotdot=", "/ 0");
    // Symlinks are resolved in the guest: L1's canary is out of reach.
    expect(&c, "guest-host-abs=", "unreadable");
    expect(&c, "guest-host-up=", "unreadable");
    expect(&c, "host-hard=", "from-exec links=2");
    c.shows("hard-inside=ok");
    expect(&c, "hard-out=", "refused");
    expect(&c, "host-guest-abs=", "/etc/hostname");
    // kvmini as root: the guest's files are the share owner's, no devices.
    expect(&c, "mknod=", "refused");
    expect(&c, "host-owner=", "1000:1000 null=absent");
    expect(&c, "host-outside=", "unchanged");
    expect(&c, "host-outside-files=", "canary");
    // Read-only: the write fails in the guest, nothing reaches L1.
    let ro = c.after("ro-write-rc=");
    if ro == "0" || ro.is_empty() {
        c.fail(&format!(
            "ro-write-rc={ro}: the read-only share took a write"
        ));
    }
    expect(&c, "ro-exec-rc=", "0");
    expect(&c, "host-ro=", "refused");
    c.shows("wrote-late");
    expect(&c, "timeout-rc=", "124");
    expect(&c, "host-late=", "late");
    expect(&c, "image-rc=", "0 host-img=via-image");
}

/// `--net user` (passt) on kvmini's own virtio-net, run by a user without
/// privileges: DHCP, a fetch from L1's loopback through the gateway
/// address, an upload into the guest through a forward.
#[test]
fn net_user() {
    let c = scenario("net_user");
    c.rc(0).shows("kvmini-guest: exit status 0");
    if c.after("runner-uid=") != "65534 runner-caps=0000000000000000" {
        c.fail("kvmini did not run as an unprivileged user without capabilities");
    }
    // The address passt handed out by DHCP: the one of L1's interface.
    if c.after("guest-addr=") != "10.77.0.1/24" {
        c.fail("the guest did not get passt's address by DHCP");
    }
    let (got, sent) = (sha(&c, "guest-got-sha="), sha(&c, "host-file-sha="));
    if got != sent {
        c.fail(&format!("fetch: L1 served {sent}, the guest got {got}"));
    }
    let (answer, up) = (sha(&c, "upload-answer="), sha(&c, "host-up-sha="));
    if answer != up {
        c.fail(&format!(
            "forward: L1 uploaded {up}, the guest got {answer}"
        ));
    }
    if c.after("guest-served=") != "0" {
        c.fail("the guest's server did not end cleanly");
    }
}

#[test]
fn net_two_guests() {
    let c = scenario("net_two_guests");
    c.rc(0)
        .shows("created TAP device 'ktapa'")
        .shows("created TAP device 'ktapb'");
    for (key, want) in [
        ("a-ping=", "ok"),
        ("a-sent=", "ok"),
        ("b-got=", "hello-from-a"),
    ] {
        let got = c.after(key);
        if got != want {
            c.fail(&format!("{key}{got}, expected {want}"));
        }
    }
}

/// The cells of one table row of `kvmini bench` (columns are separated by
/// at least two spaces; metric names use single spaces).
fn bench_row<'a>(c: &Check<'a>, workload: &str, metric_prefix: &str) -> Vec<String> {
    let line =
        c.s.lines
            .iter()
            .find(|l| {
                l.strip_prefix(workload)
                    .is_some_and(|rest| rest.trim_start().starts_with(metric_prefix))
            })
            .unwrap_or_else(|| c.fail(&format!("no table row {workload} / {metric_prefix}")));
    line.split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bench_smoke() {
    let c = scenario("bench_smoke");
    c.rc(0);
    expect(&c, "bench-rc=", "0");
    // 15 rows (startup 2, memory 3, cpu 1, block 4, network 3, density 2)
    // x 3 environments.
    expect(&c, "bench-measured-cells=", "45");
    expect(&c, "bench-leftover-links=", "0");
    let measured = [
        ("startup", "launch to first output"),
        ("startup", "launch to exit"),
        ("memory", "overhead, idle"),
        ("memory", "overhead, 64 MiB"),
        ("memory", "of idle: VMM/runtime outside guest RAM"),
        ("cpu", "sha256 of 4 MiB"),
        ("block", "sequential read"),
        ("block", "sequential write"),
        ("block", "4 KiB random read"),
        ("block", "4 KiB random write"),
        ("network", "TCP throughput to host"),
        ("network", "TCP throughput from host"),
        ("network", "ping RTT to host"),
        ("density", "host memory per idle"),
        ("density", "idle instances in"),
    ];
    let mut values: HashMap<&str, Vec<f64>> = HashMap::new();
    for (w, m) in measured {
        let cells = bench_row(&c, w, m);
        // workload, metric, unit, vm, container, host
        if cells.len() != 6 {
            c.fail(&format!("{w} / {m}: expected 6 columns, got {cells:?}"));
        }
        let mut row = Vec::new();
        for cell in &cells[3..] {
            let first = cell.split_whitespace().next().unwrap_or("");
            // Memory overheads are differences, which may be 0 or below;
            // every other figure is a positive amount (a time, a rate, a
            // size, a count), and a 0 means nothing was measured.
            let positive = !(w == "memory" && m.starts_with("overhead"));
            match first.parse::<f64>() {
                Ok(v) if v.is_finite() && (!positive || v > 0.0) => row.push(v),
                _ => c.fail(&format!(
                    "{w} / {m}: cell {cell:?} is not a measured number"
                )),
            }
        }
        values.insert(m, row);
    }
    // Plausible, not just positive. Times are within the run's --timeout
    // (120 s); a process exits after its first output; per-instance memory
    // fits the 1 GiB budget, and the count is what fits in it
    // (floor(budget / per instance), from the rounded figures shown).
    let (first, exit) = (&values["launch to first output"], &values["launch to exit"]);
    let cpu = &values["sha256 of 4 MiB"];
    let (per, fits) = (
        &values["host memory per idle"],
        &values["idle instances in"],
    );
    for (i, env) in ["vm", "container", "host"].iter().enumerate() {
        if first[i] >= 120_000.0 || exit[i] >= 120_000.0 {
            c.fail(&format!(
                "{env}: start-up {} / {} ms is beyond the timeout",
                first[i], exit[i]
            ));
        }
        if exit[i] < first[i] {
            c.fail(&format!(
                "{env}: exited at {} ms, before its first output at {} ms",
                exit[i], first[i]
            ));
        }
        if cpu[i] >= 120.0 {
            c.fail(&format!("{env}: sha256 of 4 MiB took {} s", cpu[i]));
        }
        if per[i] >= 1024.0 {
            c.fail(&format!(
                "{env}: {} MiB per idle instance exceeds the budget",
                per[i]
            ));
        }
        let expected = 1024.0 / per[i];
        if fits[i] < 1.0 || (fits[i] - expected).abs() > expected * 0.01 + 1.0 {
            c.fail(&format!(
                "{env}: {} idle instances in 1024 MiB at {} MiB each (expected about {expected:.0})",
                fits[i], per[i]
            ));
        }
    }
    // Block and network ran on the bench initramfs, the rest on the default.
    c.shows("initrd_block_network=");
}

/// The value of the Debian test unit's `kvmini-debian: KEY=VALUE` line
/// (systemd prefixes it on the console: `[  44.9] kvmini-test[203]: `).
fn debian(c: &Check, key: &str) -> String {
    let marker = format!("kvmini-debian: {key}=");
    c.s.lines
        .iter()
        .find_map(|l| l.split_once(&marker).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| c.fail(&format!("no line with {marker:?}")))
}

/// Debian's own kernel finds its 2 CPUs, disk and NIC through kvmini's ACPI
/// tables, reaches multi-user, keeps the host's time, ignores console words
/// a user process prints, and powers off through ACPI (exit 0).
#[test]
fn debian_poweroff() {
    let c = scenario("debian_poweroff");
    c.rc(0)
        .shows("ACPI: Using ACPI (MADT) for SMP configuration information")
        .shows("kvmini-debian: still-running-after-fake-words");
    assert_kvmini_rc(&c, "0");
    for (key, want) in [
        ("ready state", "running"),
        ("cpus", "2"),
        ("root", "/dev/vda"),
        ("nic", "eth0 mac=52:54:00:de:b1:0a"),
        ("pvpanic-driver", "pvpanic-mmio"),
        ("action", "poweroff"),
    ] {
        let got = debian(&c, key);
        if got != want {
            c.fail(&format!("{key}={got}, expected {want}"));
        }
    }
    let sent = c.after("token-sent=");
    expect(&c, "token-on-disk=", &sent);
    expect(&c, "e2fsck-rc=", "0");
    let secs = |v: String| {
        v.parse::<i64>()
            .unwrap_or_else(|_| c.fail(&format!("not a time: {v:?}")))
    };
    let host = secs(c.after("host-epoch="));
    // The guest's system clock, and kvmini's CMOS RTC as the guest reads it.
    for key in ["epoch", "rtc-epoch"] {
        let guest = secs(debian(&c, key));
        if (guest - host).abs() > 5 {
            c.fail(&format!(
                "guest {key} {guest}, host clock {host}: more than 5 s apart"
            ));
        }
    }
}

#[test]
fn debian_reboot() {
    let c = scenario("debian_reboot");
    c.rc(0);
    if debian(&c, "action") != "reboot" {
        c.fail("the guest did not run `systemctl reboot`");
    }
    assert_kvmini_rc(&c, "0");
}

/// SIGTERM: the guest's systemd shuts down (through the ACPI power button),
/// kvmini exits 143 and says so, the disk is clean.
#[test]
fn debian_sigterm() {
    let c = scenario("debian_sigterm");
    c.rc(0)
        .shows("pressed the guest's ACPI power button")
        .shows("poweroff.target")
        .shows("Stopped")
        .shows("the guest shut down cleanly after kvmini pressed its ACPI power button");
    assert_kvmini_rc(&c, "143");
    expect(&c, "e2fsck-rc=", "0");
    eprintln!(
        "debian_sigterm: the guest shut down in {} s",
        c.after("shutdown-secs=")
    );
}

/// A Debian guest's panic reaches kvmini through pvpanic: exit 4.
#[test]
fn debian_panic() {
    let c = scenario("debian_panic");
    c.rc(0)
        .shows("the guest kernel panicked")
        .shows("sysrq triggered crash");
    assert_kvmini_rc(&c, "4");
}

/// A number after `key` (a `key=N` line), or the test fails.
fn number(c: &Check, key: &str) -> u64 {
    parse_number(c, key, c.after(key))
}

/// [`number`] from the lines after the last one starting with `marker`.
fn number_in_last(c: &Check, marker: &str, key: &str) -> u64 {
    parse_number(c, key, c.after_in_last(marker, key))
}

fn parse_number(c: &Check, key: &str, got: String) -> u64 {
    got.parse()
        .unwrap_or_else(|_| c.fail(&format!("{key}{got} is not a number")))
}

#[test]
fn stalled_reader_sigterm() {
    // `kvmini exec -- <flood> | sleep 600`: SIGTERM stops kvmini within a second.
    let c = scenario("stalled_reader_sigterm");
    c.rc(0);
    expect(&c, "kvmini-rc=", "143");
    let ms = number(&c, "stop-ms=");
    if ms >= 1000 {
        c.fail(&format!("kvmini took {ms} ms to stop after SIGTERM"));
    }
}

#[test]
fn exec_timeout_fio() {
    // `exec --timeout` while fio keeps the disk busy at queue depth 256:
    // exit 124, within 2 s of the limit, not counting the VM's release
    // after all of kvmini's threads stopped: dropping the devices (a disk's
    // fdatasync), unmapping guest RAM and the host kernel's teardown of the
    // VM, which a guest does not hold up but a loaded host does: one CI run
    // (initrd copy still going at 5 s) spent ~2 s in `kvm_destroy_vm`'s
    // SRCU waits. It is printed, and bounded only as a hang.
    // A late stop while L1 itself stood still (a ticker in L1 silent for
    // 3 s or more, across the bound, until about when kvmini stopped; the
    // exec ended with 124; one CI run: the
    // scenario's own `sleep 6.5` ended 3.5 s late while kvmini overran
    // `--timeout 5s` by 5.1 s) cannot judge kvmini: the scenario says so
    // and tries again, 3 times at most; only the last attempt of each limit
    // (the lines after its last `attempt-N=`) is judged here.
    let c = scenario("exec_timeout_fio");
    c.rc(0);
    for limit in [5u64, 40] {
        let marker = format!("attempt-{limit}=");
        let tries = number_in_last(&c, &marker, &marker);
        if tries > 1 {
            warn(&format!(
                "exec_timeout_fio: --timeout {limit}s took {tries} attempts: L1 stood still \
                 past the bound in the earlier ones (@@KVMINI-L1-STALLED in the log)"
            ));
        }
        let key = |k: &str| format!("{k}-{limit}=");
        let silent = c.after_in_last(&marker, &key("l1-silent"));
        if silent != "none" {
            c.fail(&format!(
                "NOT RUN: --timeout {limit}s: in all {tries} attempts kvmini stopped late while \
                 L1 stood still past the bound (last: a 0.2 s ticker silent {silent} ms), so \
                 kvmini's deadline could not be judged"
            ));
        }
        let rc = c.after_in_last(&marker, &key("exec-rc"));
        if rc != "124" {
            c.fail(&format!("{}{rc}, expected 124", key("exec-rc")));
        }
        let ms = number_in_last(&c, &marker, &key("exec-ms"));
        let stopped = number_in_last(&c, &marker, &key("stopped-ms"));
        let ended = number_in_last(&c, &marker, &key("ended-ms"));
        let release = ended.saturating_sub(stopped);
        eprintln!(
            "exec_timeout_fio: --timeout {limit}s: VM stopped at {stopped} ms, \
             released at {ended} ms, exec ended at {ms} ms (shell's clock)"
        );
        let limit_ms = limit * 1000;
        if stopped >= limit_ms + 1500 {
            c.fail(&format!(
                "--timeout {limit}s: kvmini stopped the VM only {stopped} ms into the clock"
            ));
        }
        if ms.saturating_sub(release) >= limit_ms + 2000 {
            c.fail(&format!(
                "--timeout {limit}s ended after {ms} ms ({release} ms of it releasing the VM)"
            ));
        }
        if ms >= limit_ms + 30_000 {
            c.fail(&format!("--timeout {limit}s ended only after {ms} ms"));
        }
    }
    // By 40 s fio surely ran (the guest boots in seconds).
    let fio_at = number_in_last(&c, "attempt-40=", "fio-at-ms-40=");
    if fio_at >= 40_000 {
        c.fail(&format!("fio started only after {fio_at} ms"));
    }
}

//! The command line's contract, on the built binary, with no VM (no
//! `/dev/kvm` needed): usage errors exit 2 (`exec`: 125, as the README
//! says) wherever the global flags are; every flag value is checked before
//! anything is built, packed or booted (each case answers within seconds,
//! even with no default guest in the cache); messages name the flag the
//! user typed and suggest the fix.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;

/// Longer than any check takes, far shorter than building the default
/// guest or booting anything.
const FAST: Duration = Duration::from_secs(10);

/// kvmini answers every case here at once; past this it hung, and is killed.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs kvmini with an empty artefact cache, so that anything reaching for
/// the default guest would start building it (minutes) and blow [`FAST`];
/// a kvmini still running after [`RUN_LIMIT`] is killed and fails the test.
fn kvmini(args: &[&str]) -> (Output, Duration) {
    kvmini_with(args, &[])
}

/// [`kvmini`] with `env` added to its environment.
fn kvmini_with(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let cache = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-cli.")).unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmini"))
        .args(args)
        .envs(env.iter().copied())
        .env("KVMINI_CACHE_DIR", cache.as_path())
        .env_remove("KVMINI_RESOURCES")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start kvmini");
    while child.try_wait().expect("cannot wait for kvmini").is_none() {
        if started.elapsed() >= RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvmini {args:?} did not finish within {RUN_LIMIT:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // It has exited: reading its (small) output cannot block.
    let out = child
        .wait_with_output()
        .expect("cannot collect kvmini's output");
    (out, started.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// kvmini refuses `args` quickly with `code` and a message with `needle`.
fn refused(args: &[&str], code: i32, needle: &str) -> String {
    let (out, took) = kvmini(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in: {err}"
    );
    assert!(took < FAST, "{args:?} took {took:?}: something ran first");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `--net user` without passt: exit 1 (the flags are fine, the host lacks
/// something) before the default guest is built, saying how to get it.
#[test]
fn user_net_without_passt_says_how_to_install_it() {
    for cmd in ["run", "exec"] {
        let mut args = vec![cmd, "--net", "user"];
        if cmd == "exec" {
            args.extend(["--", "true"]);
        }
        let (out, took) = kvmini_with(&args, &[("KVMINI_PASST", "/nonexistent/passt")]);
        let err = stderr(&out);
        let code = if cmd == "exec" { 125 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{cmd}: {err}");
        assert!(err.contains("apt-get install passt"), "{cmd}: {err}");
        assert!(
            err.contains("KVMINI_PASST=/nonexistent/passt"),
            "{cmd}: {err}"
        );
        assert!(took < FAST, "{cmd} took {took:?}: something ran first");
    }
}

#[test]
fn run_checks_every_flag_before_building_the_default_guest() {
    refused(&["run", "--memory", "1X"], 2, "invalid --memory '1X'");
    refused(&["run", "--memory", "1.5G"], 2, "invalid --memory '1.5G'");
    refused(&["run", "--cpus", "0"], 2, "--cpus 0 is out of range");
    refused(&["run", "--cpus", "254"], 2, "use 1 to 253");
    refused(
        &["run", "--disk", "disk.img"],
        2,
        "did you mean --disk path=disk.img?",
    );
    refused(
        &["run", "--net", "user,forward=8080:80"],
        2,
        "forward=tcp:HOSTPORT:GUESTPORT",
    );
    refused(
        &["run", "--cmdline", &"x".repeat(3000)],
        2,
        "invalid --cmdline",
    );
    let words = format!("--{}", " w".repeat(33));
    refused(&["run", "--cmdline", &words], 2, "33 words after `--`");
    refused(
        &["run", "--shutdown-timeout", "soon"],
        2,
        "--shutdown-timeout",
    );
    refused(&["run", "--accel", "qemu"], 2, "invalid --accel 'qemu'");
    refused(
        &["run", "--console", "file=/nonexistent/dir/console.log"],
        2,
        "invalid --console file=/nonexistent/dir/console.log",
    );
    refused(&["run", "--bogus"], 2, "--bogus");
}

#[test]
fn exec_checks_every_flag_before_packing_a_share() {
    let share = TempDir::new().unwrap();
    let spec = format!("{}:/mnt", share.as_path().display());
    refused(
        &["exec", "--memory", "1X", "--share", &spec, "--", "true"],
        125,
        "invalid --memory '1X'",
    );
    refused(
        &["exec", "--share", &format!("{spec}:RO"), "--", "true"],
        125,
        "after GUEST comes ro or rw",
    );
    refused(
        &["exec", "--rootfs", "/nonexistent/root.img", "--", "true"],
        125,
        "cannot read --rootfs '/nonexistent/root.img'",
    );
    refused(&["exec", "--timeout", "0", "--", "true"], 125, "--timeout");
}

#[test]
fn exec_usage_errors_are_125_wherever_the_global_flags_are() {
    refused(&["exec", "uname", "-r"], 125, "error");
    refused(
        &["--log-level", "info", "exec", "uname", "-r"],
        125,
        "error",
    );
    refused(&["--log-level=debug", "exec", "--bogus"], 125, "--bogus");
    refused(&["--log-level", "info", "run", "--bogus"], 2, "--bogus");
}

#[test]
fn a_comma_in_a_disk_path_is_no_syntax_error() {
    // `path=/tmp/a,,b.img` names /tmp/a,b.img; the error is about the file.
    refused(
        &[
            "run",
            "--kernel",
            "/nonexistent/k",
            "--disk",
            "path=/tmp/a,,b.img",
        ],
        2,
        "cannot read kernel",
    );
}

#[test]
fn bench_checks_its_flags_and_outputs_first() {
    refused(&["bench", "--net-time", "0"], 1, "invalid --net-time '0'");
    refused(&["bench", "--cpus", "0"], 1, "--cpus 0 is out of range");
    refused(
        &["bench", "--json", "/nonexistent/dir/r.json"],
        1,
        "--json /nonexistent/dir/r.json",
    );
    refused(&["bench", "--disk", "path=/tmp/x"], 1, "leave out --disk");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !kvmini::arch::x86_64::cpuid::cpuinfo_has_hw_virt(&cpuinfo) {
        // The VM the user asked for cannot run here: no table of "not run".
        refused(
            &["bench", "--accel", "kvm"],
            1,
            "the VM environment cannot run here",
        );
    } else {
        eprintln!("cli_contract: this host has vmx/svm; `bench --accel kvm` can run here");
    }
}

#[test]
fn exec_keeps_the_fallback_notice_out_of_the_commands_stderr() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if kvmini::arch::x86_64::cpuid::cpuinfo_has_hw_virt(&cpuinfo) {
        eprintln!("cli_contract: hardware virtualization here: exec never falls back");
        return;
    }
    // auto falls back on this host; the kernel is missing, so it stops
    // right after choosing; stderr (a pipe) must not carry the notice.
    let err = refused(
        &["exec", "--kernel", "/nonexistent/k", "--", "true"],
        125,
        "cannot read kernel",
    );
    assert!(!err.contains("no hardware virtualization"), "{err}");
    let err = refused(
        &["run", "--kernel", "/nonexistent/k"],
        2,
        "cannot read kernel",
    );
    assert!(Path::new("/proc/cpuinfo").exists());
    // run's stderr is kvmini's own: the notice is there (the check of the
    // kernel comes after the engine is chosen).
    assert!(err.contains("no hardware virtualization"), "{err}");
    let (out, _) = kvmini(&["run", "--quiet", "--kernel", "/nonexistent/k"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("no hardware virtualization"),
        "--quiet: {err}"
    );
}

#[test]
fn usage_errors_of_run_exit_2() {
    for args in [
        &["run", "--no-such-flag"][..],
        &["run", "--cpus"][..],
        &["no-such-command"][..],
        &[][..],
    ] {
        let (out, _) = kvmini(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "kvmini {args:?}: {err}");
        assert!(
            err.contains("error:") || err.contains("Usage:"),
            "kvmini {args:?}: exit 2 without saying why: {err}"
        );
    }
    let err = stderr(&kvmini(&["run", "--no-such-flag"]).0);
    assert!(
        err.contains("--no-such-flag"),
        "the bad flag is not named: {err}"
    );
}

#[test]
fn usage_errors_of_exec_exit_125() {
    // exec passes the command's own status through, so its usage errors
    // use 125 (README), not 2.
    let (out, _) = kvmini(&["exec", "--no-such-flag", "--", "true"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn help_is_not_an_error() {
    let (out, _) = kvmini(&["run", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--kernel"));
}

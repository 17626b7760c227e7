//! Command-line usage errors, through the real binary (no `/dev/kvm`
//! needed): the exit statuses the README documents for them.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// kvmini answers a usage error at once; past this it hung.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn kvmini(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmini"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start kvmini");
    let deadline = Instant::now() + RUN_LIMIT;
    while child.try_wait().expect("cannot wait for kvmini").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvmini {args:?} did not finish within {RUN_LIMIT:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // It has exited: reading its (small) output cannot block.
    child
        .wait_with_output()
        .expect("cannot collect kvmini's output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_of_run_exit_2() {
    for args in [
        &["run", "--no-such-flag"][..],
        &["run", "--cpus"][..],
        &["no-such-command"][..],
        &[][..],
    ] {
        let out = kvmini(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "kvmini {args:?}: {err}");
        assert!(
            err.contains("error:") || err.contains("Usage:"),
            "kvmini {args:?}: exit 2 without saying why: {err}"
        );
    }
    let err = stderr(&kvmini(&["run", "--no-such-flag"]));
    assert!(
        err.contains("--no-such-flag"),
        "the bad flag is not named: {err}"
    );
}

#[test]
fn usage_errors_of_exec_exit_125() {
    // exec passes the command's own status through, so its usage errors
    // use 125 (README), not 2.
    let out = kvmini(&["exec", "--no-such-flag", "--", "true"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn help_is_not_an_error() {
    let out = kvmini(&["run", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--kernel"));
}

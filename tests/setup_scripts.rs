//! The set-up scripts' shared helpers (`resources/lib.sh`), tested with stub
//! `dpkg-query`, `apt-get` and `apt-cache` on PATH: the package helper
//! installs exactly what is missing (also packages this machine never had,
//! which made `dpkg-query` fail and every script die silently on a new
//! machine), says what it installs, and names the package apt cannot
//! install; a script that fails says which command failed and how.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vmm_sys_util::tempdir::TempDir;

fn lib_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/lib.sh")
}

/// A directory of stub commands; each stub appends its argv to `calls`.
struct Stubs {
    dir: TempDir,
}

impl Stubs {
    /// `installed`: packages dpkg knows as installed; `apt_knows`: packages
    /// the stub apt can install (others make `apt-get install` fail as
    /// apt does, "Unable to locate package").
    fn new(installed: &[&str], apt_knows: &[&str], uid: u32) -> Self {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-lib-sh.")).unwrap();
        let s = Self { dir };
        let calls = s.calls_path();
        let log = format!("echo \"$(basename \"$0\") $*\" >>'{}'", calls.display());
        // Like dpkg-query -W: a line for each known package, exit 1 (and a
        // message on stderr) when any named package was never installed.
        s.stub(
            "dpkg-query",
            &format!(
                "{log}\ninstalled=' {} '\nrc=0\nfor a in \"$@\"; do\n  case $a in -*) continue;; esac\n  \
                 case $installed in *\" $a \"*) echo \"$a install ok installed 1.0\";;\n  \
                 *) echo \"dpkg-query: no packages found matching $a\" >&2; rc=1;; esac\ndone\nexit $rc",
                installed.join(" ")
            ),
        );
        s.stub(
            "apt-get",
            &format!(
                "{log}\nknown=' {} '\n[ \"$1\" = update ] && exit 0\nfor a in \"$@\"; do\n  \
                 case $a in -*|install) continue;; esac\n  case $known in *\" $a \"*) ;;\n  \
                 *) echo \"E: Unable to locate package $a\"; exit 100;; esac\ndone\nexit 0",
                apt_knows.join(" ")
            ),
        );
        s.stub(
            "apt-cache",
            &format!(
                "{log}\nknown=' {} '\ncase $known in *\" $2 \"*) exit 0;; esac\nexit 100",
                apt_knows.join(" ")
            ),
        );
        s.stub("id", &format!("echo {uid}"));
        s
    }

    fn stub(&self, name: &str, body: &str) {
        let p = self.dir.as_path().join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn calls_path(&self) -> PathBuf {
        self.dir.as_path().join("calls")
    }

    fn calls(&self) -> String {
        fs::read_to_string(self.calls_path()).unwrap_or_default()
    }

    /// Runs `script` in bash under `set -euo pipefail` after sourcing lib.sh,
    /// with the stubs first on PATH.
    fn run(&self, script: &str) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.as_path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let file = self.dir.as_path().join("script.sh");
        fs::write(
            &file,
            format!(
                "set -euo pipefail\nsource '{}'\n{script}\n",
                lib_sh().display()
            ),
        )
        .unwrap();
        Command::new("bash")
            .arg(&file)
            .env("PATH", path)
            .env_remove("SUDO_USER")
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn installs_only_what_is_missing_including_never_installed_packages() {
    let stubs = Stubs::new(&["cpio"], &["cpio", "busybox-static", "crun"], 0);
    let out = stubs.run("apt_install cpio busybox-static crun; echo helper-returned");
    let (stdout, stderr, calls) = (text(&out.stdout), text(&out.stderr), stubs.calls());
    assert!(
        out.status.success(),
        "status {}; stderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("helper-returned"), "stdout: {stdout}");
    assert!(
        stderr.contains("installing missing Debian packages: busybox-static crun"),
        "it must say what it installs; stderr:\n{stderr}"
    );
    assert!(calls.contains("apt-get update"), "calls:\n{calls}");
    let install = calls
        .lines()
        .find(|l| l.starts_with("apt-get") && l.contains(" install "))
        .unwrap_or_else(|| panic!("no apt-get install; calls:\n{calls}"));
    assert!(
        install.ends_with(" busybox-static crun") && !install.contains("cpio"),
        "installs exactly the missing ones: {install}"
    );
}

#[test]
fn installs_nothing_and_stays_offline_when_all_are_there() {
    let stubs = Stubs::new(&["cpio", "crun"], &["cpio", "crun"], 0);
    let out = stubs.run("apt_install cpio crun");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !stubs.calls().contains("apt-get"),
        "no apt-get when nothing is missing; calls:\n{}",
        stubs.calls()
    );
}

#[test]
fn names_the_package_apt_cannot_install() {
    let stubs = Stubs::new(&[], &["cpio"], 0);
    let out = stubs.run("apt_install cpio no-such-package-kvmini; echo not-reached");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "must fail; stderr:\n{stderr}");
    assert!(!text(&out.stdout).contains("not-reached"));
    assert!(
        stderr.contains("apt has no package named no-such-package-kvmini"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("E: Unable to locate package"),
        "apt's own last lines are shown; stderr:\n{stderr}"
    );
}

#[test]
fn an_unreachable_archive_is_named_as_such_not_as_a_missing_package() {
    // What CI saw with DNS down: apt-get update printed "Failed to fetch ...
    // Temporary failure resolving" and exited 0 (as apt does unless
    // APT::Update::Error-Mode=any), then install said "Unable to locate
    // package" and the helper blamed the apt sources.
    let stubs = Stubs::new(&[], &[], 0);
    stubs.stub(
        "apt-get",
        &format!(
            "echo \"apt-get $*\" >>'{}'\nif [ \"$1\" = update ] || echo \" $* \" | grep -q ' update '; then\n  \
             echo \"W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'\"\n  \
             case \" $* \" in *APT::Update::Error-Mode=any*) echo 'E: Some index files failed to download.'; exit 100;; esac\n  \
             exit 0\nfi\nfor a in \"$@\"; do case $a in -*|install) ;; *) echo \"E: Unable to locate package $a\"; exit 100;; esac; done",
            stubs.calls_path().display()
        ),
    );
    let out = stubs.run("apt_install crun; echo not-reached");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "must fail; stderr:\n{stderr}");
    assert!(!text(&out.stdout).contains("not-reached"));
    assert!(
        stderr.contains("could not reach the package archive"),
        "stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("no package named"),
        "must not blame a package; stderr:\n{stderr}"
    );
    assert!(
        !stubs.calls().contains(" install "),
        "no install after a failed update; calls:\n{}",
        stubs.calls()
    );
}

#[test]
fn without_root_or_sudo_says_what_to_run() {
    let stubs = Stubs::new(&[], &["crun"], 1000);
    // PATH holds only the stubs and the few tools lib.sh needs: no sudo.
    for tool in ["dirname", "basename", "awk", "grep", "cat"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found in /usr/bin or /bin"));
        std::os::unix::fs::symlink(found, stubs.dir.as_path().join(tool)).unwrap();
    }
    let out = Command::new("/bin/bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; source '{}'; apt_install crun",
            lib_sh().display()
        ))
        .env("PATH", stubs.dir.as_path())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("need root or sudo to install: crun"),
        "stderr:\n{stderr}"
    );
    assert!(
        !stubs.calls().contains("apt-get"),
        "calls:\n{}",
        stubs.calls()
    );
}

#[test]
fn a_failing_step_says_which_command_failed() {
    let stubs = Stubs::new(&[], &[], 0);
    let out = stubs.run("on_exit 'echo cleanup-ran >&2'\nx=$(false; echo fine)\nls /nonexistent/kvmini-dir\necho not-reached");
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains("not-reached"));
    assert!(stderr.contains("cleanup-ran"), "stderr:\n{stderr}");
    assert!(
        stderr.contains("FAILED at line 5: `ls /nonexistent/kvmini-dir` exited with status 2"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn a_failure_handled_after_set_plus_e_is_not_blamed_for_a_later_exit() {
    // net-load.sh runs the rig under `set +e`, checks its status, and later
    // exits 1 when a run failed: that exit is not "FAILED at" the rig line.
    let stubs = Stubs::new(&[], &[], 0);
    let out =
        stubs.run("set +e\nls /nonexistent/kvmini-dir\nrc=$?\nset -e\necho handled-$rc\nexit 1");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("handled-2"));
    assert!(!stderr.contains("FAILED at"), "stderr:\n{stderr}");
}

#[test]
fn pkg_version_is_empty_for_a_package_never_installed() {
    let stubs = Stubs::new(&["cpio"], &[], 0);
    let out = stubs.run("echo \"[$(pkg_version never-installed)] [$(pkg_version cpio)]\"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[] [1.0]");
}

//! What the guest is told to do: two small shell scripts that travel in the
//! extra initramfs archive. `/kvmini/job` is sourced by the guest's exec
//! init (`resources/rootfs/exec-init`, installed as `/kvmini/init`) and
//! says which disks to mount where; `/kvmini/command` is fed to a clean
//! `env -i sh -s` and runs the user's command in its directory with its
//! environment. Every user-supplied string is single-quoted.

/// A share as the guest sees it.
pub struct GuestShare {
    pub device: String,
    pub path: String,
    pub readonly: bool,
}

/// The guest's PATH for the command (Debian's root PATH).
pub const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub use crate::config::sh_quote as quote;

/// `/kvmini/job`: variables for the exec init.
pub fn job_script(rootfs: Option<&str>, shares: &[GuestShare]) -> String {
    let mut s = String::from("# Written by kvmini exec; sourced by /kvmini/init.\n");
    s += &format!("kvmini_rootfs={}\n", quote(rootfs.unwrap_or("")));
    s += &format!("kvmini_shares={}\n", shares.len());
    for (i, sh) in (1..).zip(shares) {
        s += &format!("kvmini_share_dev_{i}={}\n", quote(&sh.device));
        s += &format!("kvmini_share_path_{i}={}\n", quote(&sh.path));
        s += &format!("kvmini_share_ro_{i}={}\n", u8::from(sh.readonly));
    }
    s
}

/// `/kvmini/command`: the user's command, run by `env -i sh -s`.
/// `env` holds `NAME=VALUE` pairs set after the defaults.
pub fn command_script(workdir: &str, env: &[(String, String)], argv: &[String]) -> String {
    let mut s = String::new();
    s += &format!(
        "cd {} || {{ echo \"kvmini exec: cannot change to directory\" {} >&2; exit 125; }}\n",
        quote(workdir),
        quote(workdir)
    );
    let defaults = [("PATH", GUEST_PATH), ("HOME", "/root"), ("TERM", "dumb")];
    for (k, v) in defaults
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(env.iter().cloned())
    {
        s += &format!("export {}\n", quote(&format!("{k}={v}")));
    }
    let words: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    s += &format!("exec {} </dev/null\n", words.join(" "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn command_script_runs_argv_in_a_clean_env() {
        let tmp = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let dir = tmp.as_path().to_str().unwrap().to_string();
        let script = command_script(
            &dir,
            &[("GREETING".into(), "it's \"hi\"".into())],
            &[
                "sh".into(),
                "-c".into(),
                "pwd; echo \"$GREETING\"; echo \"$HOME|$TERM\"; echo \"[$SECRET]\"; exit 42".into(),
            ],
        );
        // Fed on stdin to a clean `env -i sh -s`, as the guest init does.
        let mut child = Command::new("env")
            .args(["-i", "sh", "-s"])
            .env("SECRET", "leak")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(42));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{dir}\nit's \"hi\"\n/root|dumb\n[]\n")
        );
    }

    #[test]
    fn bad_workdir_exits_125() {
        let script = command_script("/nonexistent/kvmini", &[], &["true".into()]);
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert_eq!(out.status.code(), Some(125));
        assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kvmini"));
    }

    #[test]
    fn job_lists_shares() {
        let j = job_script(
            Some("/dev/vda"),
            &[GuestShare {
                device: "/dev/vdb".into(),
                path: "/mnt/my dir".into(),
                readonly: true,
            }],
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{j}\necho \"$kvmini_rootfs|$kvmini_shares|$kvmini_share_dev_1|$kvmini_share_path_1|$kvmini_share_ro_1\""
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/dev/vda|1|/dev/vdb|/mnt/my dir|1\n"
        );
    }
}

//! The bare host: the workload script runs as a plain process, with the
//! busybox of the same root tree the container uses (its applets first in
//! PATH), in its own process group so it can be stopped as a whole.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use super::{Env, EnvKind, Job};

pub struct HostEnv {
    /// The extracted guest root tree.
    pub root: PathBuf,
    pub scratch: PathBuf,
}

impl HostEnv {
    fn path_var(&self) -> String {
        ["bin", "sbin", "usr/bin", "usr/sbin"]
            .iter()
            .map(|d| self.root.join(d).display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl Env for HostEnv {
    fn kind(&self) -> EnvKind {
        EnvKind::Host
    }

    fn describe(&self) -> String {
        format!(
            "a plain process, busybox sh from the guest's root tree ({})",
            self.root.display()
        )
    }

    fn command(&self, job: &Job, id: &str) -> Result<Command, String> {
        let dir = self.scratch.join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut cmd = Command::new(self.root.join("bin/busybox"));
        cmd.args(["sh", "-c", &job.script])
            .env_clear()
            .env("PATH", self.path_var())
            .env("HOME", &dir)
            .env("TMPDIR", &dir)
            .current_dir(&dir)
            .process_group(0);
        Ok(cmd)
    }

    fn stop(&self, _id: &str, pid: u32) {
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this instance (process_group(0)); no memory involved.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }

    fn cleanup(&self, id: &str) {
        let _ = std::fs::remove_dir_all(self.scratch.join(id));
    }
}

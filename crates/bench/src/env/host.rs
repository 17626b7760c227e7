//! The bare host: the workload script runs as a plain process, with the
//! busybox of the same root tree the container uses (its applets first in
//! PATH), in its own process group so it can be stopped as a whole.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{tool_in_tree, tree_loader, Env, EnvKind, Job, TARGET_VAR};
use kvmini_vmm::config::sh_quote as quote;

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

/// The dynamically linked tools that get a wrapper (see
/// [`HostEnv::write_wrappers`]).
const DYNAMIC_TOOLS: [&str; 2] = ["fio", "iperf3"];

impl HostEnv {
    /// Wrappers in DIR/.bin that run the tree's dynamically linked tools
    /// with the tree's loader and libraries, so the host runs the very
    /// binaries the VM and the container run (not the host's own, nor the
    /// tree's against the host's libraries). Returns DIR/.bin.
    fn write_wrappers(&self, dir: &Path) -> Result<PathBuf, String> {
        let bin = dir.join(".bin");
        std::fs::create_dir_all(&bin)
            .map_err(|e| format!("cannot create {}: {e}", bin.display()))?;
        let Some((ld, libs)) = tree_loader(&self.root) else {
            return Ok(bin);
        };
        for tool in DYNAMIC_TOOLS {
            let Some(path) = tool_in_tree(&self.root, tool) else {
                continue;
            };
            let script = format!(
                "#!{} sh\nexec {} --library-path {} {} \"$@\"\n",
                self.root.join("bin/busybox").display(),
                quote(&ld.display().to_string()),
                quote(&libs),
                quote(&path.display().to_string())
            );
            let w = bin.join(tool);
            std::fs::write(&w, script)
                .and_then(|()| std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)))
                .map_err(|e| format!("cannot write {}: {e}", w.display()))?;
        }
        Ok(bin)
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
        if job.tap.is_some() || job.netns.is_some() {
            return Err("the host environment uses loopback, not a TAP or namespace".into());
        }
        let dir = self.scratch.join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let wrappers = self.write_wrappers(&dir)?;
        let mut cmd = Command::new(self.root.join("bin/busybox"));
        cmd.args(["sh", "-c", &job.script])
            .env_clear()
            .env(
                "PATH",
                format!("{}:{}", wrappers.display(), self.path_var()),
            )
            .envs(job.vars.iter().map(|(k, v)| (k, v)));
        if let Some(disk) = &job.disk {
            cmd.env(TARGET_VAR, disk);
        }
        cmd.env("HOME", &dir)
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

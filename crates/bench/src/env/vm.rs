//! The kvmini VM: each instance is `kvmini exec` (this very executable)
//! booting the guest kernel and initramfs and running the workload script
//! with the initramfs's busybox. The launcher process is kvmini itself, so
//! its process tree is the VMM, the guest's RAM (anonymous memory of the
//! kvmini process) and, in emulated mode, the emulating QEMU machine.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use super::{Env, EnvKind, Job, TARGET_VAR};
use kvmini_vmm::config::DiskConfig;
use kvmini_vmm::devices::virtio::block::guest_device;

pub struct VmEnv {
    pub exe: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u64,
    pub cpus: u32,
    pub accel: String,
    /// "kvm", "emulated" or "kvm-any": how the VM runs here.
    pub mode: String,
    pub timeout_s: u64,
}

impl Env for VmEnv {
    fn kind(&self) -> EnvKind {
        EnvKind::Vm
    }

    fn describe(&self) -> String {
        format!(
            "kvmini {} exec, {} vCPU, {} MiB, --accel {} ({}), kernel {}, initrd {}",
            env!("CARGO_PKG_VERSION"),
            self.cpus,
            self.memory_mib,
            self.accel,
            self.mode,
            self.kernel.display(),
            self.initrd.display()
        )
    }

    fn command(&self, job: &Job, _id: &str) -> Result<Command, String> {
        if job.netns.is_some() {
            return Err("a network namespace is for the container, not the VM".into());
        }
        let mut cmd = Command::new(&self.exe);
        cmd.arg("exec")
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .args(["--memory", &format!("{}M", self.memory_mib)])
            .args(["--cpus", &self.cpus.to_string()])
            .args(["--accel", &self.accel])
            .args(["--timeout", &format!("{}s", self.timeout_s)]);
        for (k, v) in &job.vars {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        if let Some(disk) = &job.disk {
            // exec puts our disks first: this one is the first device.
            let arg = DiskConfig {
                path: disk.clone(),
                readonly: false,
            }
            .to_arg();
            cmd.args(["--disk", &arg])
                .arg("--env")
                .arg(format!("{TARGET_VAR}={}", guest_device(0)));
        }
        if let Some((tap, ip)) = &job.tap {
            cmd.args(["--net", &format!("tap={tap}")])
                .args(["--cmdline", ip]);
        }
        cmd.args(["--", "/bin/sh", "-c", &job.script])
            .process_group(0);
        Ok(cmd)
    }

    fn stop(&self, _id: &str, pid: u32) {
        // SAFETY: kill(2) on the kvmini process we spawned; SIGTERM makes it
        // stop its VM cleanly (and the emulating machine, if any).
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}

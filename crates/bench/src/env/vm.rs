//! The kvmini VM: each instance is `kvmini exec` (this very executable)
//! booting the guest kernel and initramfs and running the workload script
//! with the initramfs's busybox. The launcher process is kvmini itself, so
//! its process tree is the VMM, the guest's RAM (anonymous memory of the
//! kvmini process) and, in emulated mode, the emulating QEMU machine.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use super::{Env, EnvKind, Job, TARGET_VAR};
use kvmini_flags::vm_args;
use kvmini_vmm::config::{DiskConfig, NetConfig, VmConfig};
use kvmini_vmm::devices::virtio::block::guest_device;
use kvmini_vmm::devices::virtio::net::MacAddr;
use kvmini_vmm::devices::virtio::net::NetBackend;

pub struct VmEnv {
    pub exe: PathBuf,
    /// The VM every instance boots (the user's flags, checked); each job
    /// adds its disk and NIC. Its flags come from [`vm_args`], as the
    /// emulated machine's inner kvmini's do.
    pub vm: VmConfig,
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
            self.vm.vcpus,
            self.vm.memory_bytes >> 20,
            self.vm.accel.name(),
            self.mode,
            self.vm.kernel.display(),
            self.vm
                .initrd
                .as_deref()
                .map_or("(none)".into(), |p| p.display().to_string())
        )
    }

    fn command(&self, job: &Job, _id: &str) -> Result<Command, String> {
        if job.netns.is_some() {
            return Err("a network namespace is for the container, not the VM".into());
        }
        let mut vm = self.vm.clone();
        let mut env: Vec<String> = job.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(disk) = &job.disk {
            // exec puts our disks first: this one is the first device.
            vm.disks.push(DiskConfig {
                path: disk.clone(),
                readonly: false,
                limit: Default::default(),
            });
            env.push(format!("{TARGET_VAR}={}", guest_device(0)));
        }
        if let Some((tap, ip)) = &job.tap {
            vm.nets.push(NetConfig {
                backend: NetBackend::Tap(tap.clone()),
                mac: MacAddr::generated(std::process::id(), 0),
                bw: None,
            });
            vm.cmdline = format!("{} {ip}", vm.cmdline);
        }
        let mut cmd = Command::new(&self.exe);
        cmd.arg("exec")
            .args(vm_args(&vm))
            .args(["--timeout", &format!("{}s", self.timeout_s)]);
        for e in env {
            cmd.arg("--env").arg(e);
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

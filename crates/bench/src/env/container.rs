//! The container: an OCI bundle run by `crun` (Debian's), made from the same
//! root tree as the guest (the initramfs, unpacked), with PID, mount, IPC,
//! UTS, network and cgroup namespaces and cgroup limits matching the VM
//! (memory limit = guest RAM, CPU quota = vCPUs).
//!
//! Hosts with hybrid cgroups whose v2 tree holds a controller (ours: the
//! cgroup2 mount at /sys/fs/cgroup/unified has hugetlb) make crun refuse to
//! run ("cgroups in hybrid mode not supported"). There kvmini runs crun in
//! a private mount namespace without that v2 mount, so crun uses the v1
//! controllers; nothing changes outside that namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::{host_output, Env, EnvKind, Job, TARGET_VAR};

pub struct ContainerEnv {
    pub crun: PathBuf,
    pub version: String,
    pub root: PathBuf,
    /// crun's state directory (`--root`): ours alone.
    pub state: PathBuf,
    pub bundles: PathBuf,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Run crun under `unshare -m` without the cgroup2 mount (see above).
    pub hide_unified: bool,
    pub cgroup: String,
    /// The host's root is an initramfs (the rig's L1), where pivot_root(2)
    /// fails: crun must chroot instead (`--no-pivot`).
    pub no_pivot: bool,
}

/// Whether `/` is the kernel's initramfs (`rootfs`), from /proc/mounts.
pub fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .rfind(|l| l.split_whitespace().nth(1) == Some("/"))
                .is_some_and(|l| l.split_whitespace().nth(2) == Some("rootfs"))
        })
        .unwrap_or(false)
}

/// How this host's cgroups look, or why a container cannot get limits.
pub fn cgroup_mode() -> Result<(String, bool), String> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        let c = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let have = |n: &str| c.split_whitespace().any(|w| w == n);
        if !(have("memory") && have("cpu")) {
            return Err(format!(
                "cgroup v2 without the memory and cpu controllers (have: '{}'): the \
                 container's limits cannot be set",
                c.trim()
            ));
        }
        return Ok(("cgroup v2".into(), false));
    }
    if root.join("memory").is_dir() && root.join("cpu").is_dir() {
        let unified = root.join("unified/cgroup.controllers");
        let hide = std::fs::read_to_string(unified)
            .map(|c| !c.trim().is_empty())
            .unwrap_or(false);
        let mode = if hide {
            "cgroup v1 (hybrid host; crun runs without the v2 mount, which holds a controller)"
        } else {
            "cgroup v1"
        };
        return Ok((mode.into(), hide));
    }
    Err(
        "no cgroup hierarchy with memory and cpu controllers under /sys/fs/cgroup \
         (mount cgroup2 there): the container's limits cannot be set"
            .into(),
    )
}

/// Finds crun or says how to get it.
pub fn find_crun() -> Result<(PathBuf, String), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let crun = std::env::split_paths(&path)
        .map(|d| d.join("crun"))
        .find(|p| p.is_file())
        .ok_or("crun is not installed (apt-get install crun)")?;
    let v = host_output(&crun.display().to_string(), &["--version"])?;
    let version = v.lines().next().unwrap_or("crun").to_string();
    Ok((crun, version))
}

/// Where the block workload's scratch directory appears in the container.
pub const SCRATCH_MOUNT: &str = "/kvmini-scratch";

/// The OCI runtime config for one instance.
pub fn oci_config(root: &Path, job: &Job, memory_mib: u64, cpus: u32, id: &str) -> String {
    let script = job.script.as_str();
    let period: u64 = 100_000;
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOME=/root".into(),
        "TERM=dumb".into(),
    ];
    env.extend(job.vars.iter().map(|(k, v)| format!("{k}={v}")));
    let mut config = json!({
        "ociVersion": "1.0.0",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", script],
            "env": env,
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": root.display().to_string(), "readonly": true},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=755"]}
        ],
        "linux": {
            "resources": {
                "memory": {"limit": memory_mib << 20},
                "cpu": {"quota": u64::from(cpus) * period, "period": period}
            },
            "cgroupsPath": format!("/kvmini-bench-{id}"),
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "network"}, {"type": "cgroup"}
            ],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                            "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                              "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if let Some(disk) = &job.disk {
        // The scratch file's directory, read-write, on the host's filesystem.
        if let (Some(dir), Some(name)) = (disk.parent(), disk.file_name()) {
            if let Some(m) = config["mounts"].as_array_mut() {
                m.push(json!({"destination": SCRATCH_MOUNT, "type": "bind",
                              "source": dir.display().to_string(),
                              "options": ["rbind", "rw", "nosuid", "nodev"]}));
            }
            if let Some(e) = config["process"]["env"].as_array_mut() {
                e.push(json!(format!(
                    "{TARGET_VAR}={SCRATCH_MOUNT}/{}",
                    name.to_string_lossy()
                )));
            }
        }
    }
    if let Some(ns) = &job.netns {
        if let Some(list) = config["linux"]["namespaces"].as_array_mut() {
            for n in list.iter_mut().filter(|n| n["type"] == "network") {
                n["path"] = json!(ns.display().to_string());
            }
        }
    }
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

impl ContainerEnv {
    fn crun_cmd(&self) -> Command {
        let mut cmd = if self.hide_unified {
            let mut c = Command::new("unshare");
            c.args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "umount /sys/fs/cgroup/unified && exec \"$0\" \"$@\"",
            ])
            .arg(&self.crun);
            c
        } else {
            Command::new(&self.crun)
        };
        cmd.arg("--root").arg(&self.state);
        cmd
    }
}

impl Env for ContainerEnv {
    fn kind(&self) -> EnvKind {
        EnvKind::Container
    }

    fn describe(&self) -> String {
        format!(
            "{}, OCI bundle from the guest's root tree, namespaces pid/ipc/uts/mount/network/\
             cgroup, limits memory {} MiB and CPU quota {} ({}){}",
            self.version,
            self.memory_mib,
            self.cpus,
            self.cgroup,
            if self.no_pivot {
                "; --no-pivot (the host's root is an initramfs)"
            } else {
                ""
            }
        )
    }

    fn command(&self, job: &Job, id: &str) -> Result<Command, String> {
        let bundle = self.bundles.join(id);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| format!("cannot create {}: {e}", bundle.display()))?;
        if job.tap.is_some() {
            return Err("a TAP is for the VM, not the container".into());
        }
        let config = oci_config(&self.root, job, self.memory_mib, self.cpus, id);
        std::fs::write(bundle.join("config.json"), config)
            .map_err(|e| format!("cannot write the OCI config: {e}"))?;
        let mut cmd = self.crun_cmd();
        cmd.arg("run");
        if self.no_pivot {
            cmd.arg("--no-pivot");
        }
        cmd.arg("--bundle").arg(&bundle).arg(id);
        Ok(cmd)
    }

    fn stop(&self, id: &str, _pid: u32) {
        let _ = self
            .crun_cmd()
            .args(["kill", id, "KILL"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    fn cleanup(&self, id: &str) {
        let _ = self
            .crun_cmd()
            .args(["delete", "-f", id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(self.bundles.join(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_carries_limits_and_namespaces() {
        let c = oci_config(Path::new("/r"), &Job::new("echo 'hi'"), 512, 2, "b1");
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["process"]["args"][2], "echo 'hi'");
        assert_eq!(v["root"]["path"], "/r");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 512u64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100_000);
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for want in ["pid", "mount", "network", "ipc", "uts", "cgroup"] {
            assert!(ns.contains(&want), "{want} missing in {ns:?}");
        }
        assert!(v["linux"]["namespaces"][4].get("path").is_none());
    }

    #[test]
    fn config_carries_scratch_netns_and_vars() {
        let job = Job {
            script: "fio".into(),
            vars: vec![("BENCH_PORT".into(), "5201".into())],
            disk: Some("/tmp/b/io/x.img".into()),
            netns: Some("/proc/42/ns/net".into()),
            tap: None,
        };
        let c = oci_config(Path::new("/r"), &job, 512, 1, "b2");
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(env.contains(&"BENCH_PORT=5201"), "{env:?}");
        assert!(
            env.contains(&"BENCH_TARGET=/kvmini-scratch/x.img"),
            "{env:?}"
        );
        let mounts = v["mounts"].as_array().unwrap();
        let m = mounts
            .iter()
            .find(|m| m["destination"] == SCRATCH_MOUNT)
            .unwrap();
        assert_eq!(m["source"], "/tmp/b/io");
        let net = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap();
        assert_eq!(net["path"], "/proc/42/ns/net");
    }
}

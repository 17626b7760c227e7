//! The VM flags of the command line turned into the VMM core's validated
//! [`VmConfig`]: every check on user input is a function of
//! [`crate::config`]; this module only puts them together for `run`.

use crate::cli::RunArgs;
use crate::config::{
    check_readable, parse_console, parse_disk, parse_duration, parse_nets, parse_size, Accel,
    ConfigError, VmConfig, DEFAULT_CMDLINE, MAX_VCPUS, MAX_VIRTIO_DEVICES, MIN_MEMORY,
};

/// Validates the `run` arguments against each other and against this
/// host (`host_memory`: bytes of RAM and swap, when known).
pub fn vm_config(args: &RunArgs, host_memory: Option<u64>) -> Result<VmConfig, ConfigError> {
    let memory_bytes = parse_size(&args.memory)?;
    if memory_bytes < MIN_MEMORY {
        return Err(ConfigError::MemoryTooSmall(memory_bytes));
    }
    if let Some(host) = host_memory.filter(|&h| memory_bytes > h) {
        return Err(ConfigError::MemoryTooLarge {
            requested: memory_bytes,
            host,
        });
    }
    if args.cpus == 0 || args.cpus > MAX_VCPUS {
        return Err(ConfigError::Vcpus(args.cpus));
    }
    let console = parse_console(&args.console)?;
    let accel = Accel::parse(&args.accel)?;
    let disks = args
        .disks
        .iter()
        .map(|d| parse_disk(d))
        .collect::<Result<Vec<_>, _>>()?;
    let nets = parse_nets(&args.nets, std::process::id())?;
    if disks.len() + nets.len() > MAX_VIRTIO_DEVICES {
        return Err(ConfigError::TooManyDevices(disks.len() + nets.len()));
    }
    let kernel = args.kernel.clone().ok_or(ConfigError::NoKernel)?;
    check_readable(&kernel).map_err(|e| ConfigError::KernelMissing(kernel.clone(), e))?;
    if let Some(initrd) = &args.initrd {
        check_readable(initrd).map_err(|e| ConfigError::InitrdMissing(initrd.clone(), e))?;
    }
    let mut cmdline = DEFAULT_CMDLINE.to_string();
    if let Some(extra) = args
        .cmdline
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let shutdown_timeout = parse_duration(&args.shutdown_timeout)
        .ok_or_else(|| ConfigError::ShutdownTimeout(args.shutdown_timeout.clone()))?;
    Ok(VmConfig {
        shutdown_timeout,
        kernel,
        initrd: args.initrd.clone(),
        memory_bytes,
        vcpus: args.cpus as u8,
        cmdline,
        console,
        accel,
        disks,
        nets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vmm_sys_util::tempfile::TempFile;

    fn args(kernel: &std::path::Path) -> RunArgs {
        RunArgs {
            kernel: Some(kernel.to_path_buf()),
            initrd: None,
            memory: "128M".into(),
            cpus: 1,
            cmdline: None,
            console: "stdout".into(),
            accel: "auto".into(),
            disks: vec![],
            nets: vec![],
            shutdown_timeout: crate::cli::DEFAULT_SHUTDOWN_TIMEOUT.into(),
        }
    }

    #[test]
    fn too_many_devices() {
        let k = TempFile::new().unwrap();
        let mut a = args(k.as_path());
        a.nets = (0..MAX_VIRTIO_DEVICES + 1)
            .map(|i| format!("tap=t{i}"))
            .collect();
        assert_eq!(
            vm_config(&a, None),
            Err(ConfigError::TooManyDevices(MAX_VIRTIO_DEVICES + 1))
        );
        a.nets.truncate(MAX_VIRTIO_DEVICES);
        assert_eq!(vm_config(&a, None).unwrap().nets.len(), MAX_VIRTIO_DEVICES);
    }

    #[test]
    fn valid_config_appends_cmdline() {
        let k = TempFile::new().unwrap();
        let mut a = args(k.as_path());
        a.cmdline = Some(" root=/dev/vda  ".into());
        a.cpus = 2;
        let c = vm_config(&a, Some(1 << 40)).unwrap();
        assert_eq!(c.cmdline, format!("{DEFAULT_CMDLINE} root=/dev/vda"));
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_bytes, 128 << 20);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn shutdown_timeouts() {
        let k = TempFile::new().unwrap();
        let mut a = args(k.as_path());
        a.shutdown_timeout = "soon".into();
        let e = vm_config(&a, None).unwrap_err();
        assert_eq!(e, ConfigError::ShutdownTimeout("soon".into()));
        assert!(e.to_string().contains("--shutdown-timeout"));
    }

    #[test]
    fn rejects_bad_input() {
        let k = TempFile::new().unwrap();
        let mut a = args(k.as_path());
        a.memory = "0".into();
        assert_eq!(vm_config(&a, None), Err(ConfigError::MemoryTooSmall(0)));
        a.memory = "8G".into();
        assert!(matches!(
            vm_config(&a, Some(4 << 30)),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
        a.memory = "128M".into();
        a.cpus = 0;
        assert_eq!(vm_config(&a, None), Err(ConfigError::Vcpus(0)));
        a.cpus = 255;
        assert_eq!(vm_config(&a, None), Err(ConfigError::Vcpus(255)));
        a.cpus = 1;
        a.kernel = None;
        assert_eq!(vm_config(&a, None), Err(ConfigError::NoKernel));
        a.kernel = Some("/nonexistent/vmlinux".into());
        assert!(matches!(
            vm_config(&a, None),
            Err(ConfigError::KernelMissing(..))
        ));
        a.kernel = Some("/".into());
        assert!(matches!(
            vm_config(&a, None),
            Err(ConfigError::KernelMissing(..))
        ));
        a.kernel = Some(k.as_path().to_path_buf());
        a.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(
            vm_config(&a, None),
            Err(ConfigError::InitrdMissing(..))
        ));
    }
}

//! `kvmini bench`'s flags (clap derive); the `kvmini` binary embeds them
//! as its `bench` subcommand.

use std::path::PathBuf;

use clap::Args;
use kvmini_flags::VmArgs;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The VM's flags, as for `run` (`--kernel`, `--initrd`, `--memory`,
    /// `--cpus`, `--accel`, ...). `--memory` and `--cpus` also set the
    /// container's limits; `--initrd` is the root filesystem of all three
    /// environments (an initramfs with busybox: the VM boots it, it is
    /// unpacked for the container's bundle and the host's runs; default:
    /// kvmini's default guest initramfs, block and network: see
    /// --tools-initrd). The bench makes the VM's disk and NIC itself:
    /// `--disk` and `--net` are refused.
    #[command(flatten)]
    pub vm: VmArgs,

    /// Workloads, comma-separated: startup, memory, cpu, block, network,
    /// density, or all.
    #[arg(long, value_name = "LIST", default_value = "all")]
    pub workloads: String,

    /// Environments, comma-separated: vm, container, host.
    #[arg(long, value_name = "LIST", default_value = "vm,container,host")]
    pub envs: String,

    /// Measured runs per workload and environment (min/median/max of these).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub repeat: usize,

    /// Runs before those, discarded (caches, first-use builds).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub warmup: usize,

    /// Also write the report as JSON to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Also draw the report as a PNG chart at PATH.
    #[arg(long, value_name = "PATH")]
    pub chart: Option<PathBuf>,

    /// Root filesystem for the block and network workloads (it needs fio
    /// and iperf3), in all three environments. Default: `--initrd` if
    /// given, else kvmini's bench initramfs (the default guest plus fio,
    /// iperf3 and their libraries; built on first use and cached).
    #[arg(long, value_name = "PATH")]
    pub tools_initrd: Option<PathBuf>,

    /// Data hashed by the CPU workload (sha256 of this many zero bytes).
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub cpu_work: String,

    /// Working set of the memory workload's second measurement (building
    /// it takes up to twice this much: at most (--memory - 64 MiB) / 2).
    #[arg(long, value_name = "SIZE", default_value = "128M")]
    pub working_set: String,

    /// Idle instances started at once by the density workload.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub density: usize,

    /// Memory budget the density workload divides by the measured
    /// per-instance memory.
    #[arg(long, value_name = "SIZE", default_value = "4G")]
    pub budget: String,

    /// Longest one instance may take (seconds, or with s, m, h).
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub timeout: String,

    /// Size of the block workload's scratch file: each fio job makes one
    /// pass over it (at most 30 s).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub io_size: String,

    /// Directory for the block workload's scratch file: the host
    /// filesystem measured. Default: the bench's temporary directory.
    #[arg(long, value_name = "DIR")]
    pub io_dir: Option<PathBuf>,

    /// iperf3's time per direction (seconds, or with s, m).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub net_time: String,
}

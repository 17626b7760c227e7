//! The VMM: builds the VM from a [`VmConfig`], runs the event loop until
//! the guest stops, then stops the vCPUs and reports why it stopped.

pub mod builder;
pub mod console;
pub mod console_watch;
/// Why the VM stopped: the core's lowest layer, here for the callers of
/// [`run`].
pub use crate::exit;
pub mod guest_state;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use crate::arch::x86_64 as arch;
use crate::config::VmConfig;
use crate::devices::acpi::AcpiPower;
use crate::devices::bus::{lock, Bus, BusError};
use crate::devices::legacy::serial::ConsoleInput;
use crate::kvm::{self, vm::Vm, KvmError};
use console::GracefulStop;
use exit::{ExitSignal, VmExit};
use guest_state::{GuestState, StopRequest};

#[derive(Debug)]
pub enum Error {
    Kvm(KvmError),
    GuestMemory(String),
    Vm(kvm::vm::VmError),
    OpenFile(PathBuf, std::io::Error),
    Kernel(PathBuf, arch::boot::BootError),
    Initrd(PathBuf, arch::boot::BootError),
    Boot(arch::boot::BootError),
    Cmdline(String),
    Mptable(arch::mptable::MptableError),
    Acpi(arch::acpi::AcpiError),
    EventFd(std::io::Error),
    Console(std::io::Error),
    Bus(BusError),
    TooManyVcpus(u8, usize),
    Cpuid(kvm_ioctls::Error),
    CreateVcpu(u8, kvm_ioctls::Error),
    ConfigureVcpu(u8, arch::Error),
    SpawnVcpu(u8, std::io::Error),
    TooManyDevices(u32),
    Disk(crate::devices::virtio::block::Error),
    Net(crate::devices::virtio::net::Error),
    IoEvent(kvm_ioctls::Error),
    EventLoop(event_manager::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kvm(e) => write!(f, "{e}"),
            Self::GuestMemory(e) => write!(f, "cannot allocate guest memory: {e}"),
            Self::Vm(e) => write!(f, "{e}"),
            Self::OpenFile(p, e) => write!(f, "cannot open '{}': {e}", p.display()),
            Self::Kernel(p, e) => write!(f, "cannot load kernel '{}': {e}", p.display()),
            Self::Initrd(p, e) => write!(f, "cannot load initrd '{}': {e}", p.display()),
            Self::Boot(e) => write!(f, "cannot write the boot parameters: {e}"),
            Self::Cmdline(e) => write!(
                f,
                "invalid kernel command line: {e} (at most {} bytes of printable ASCII)",
                arch::layout::CMDLINE_MAX_SIZE - 1
            ),
            Self::Mptable(e) => write!(f, "cannot write the MP table: {e}"),
            Self::Acpi(e) => write!(f, "cannot write the ACPI tables: {e}"),
            Self::EventFd(e) => write!(f, "cannot create an eventfd: {e}"),
            Self::Console(e) => write!(f, "console: {e}"),
            Self::Bus(e) => write!(f, "cannot place a device: {e}"),
            Self::TooManyVcpus(n, max) => {
                write!(f, "--cpus {n} is more than KVM allows on this host ({max})")
            }
            Self::Cpuid(e) => write!(f, "cannot read the CPUID KVM supports: {e}"),
            Self::CreateVcpu(i, e) => write!(f, "cannot create vcpu{i}: {e}"),
            Self::ConfigureVcpu(i, e) => write!(f, "cannot configure vcpu{i}: {e}"),
            Self::SpawnVcpu(i, e) => write!(f, "cannot start the vcpu{i} thread: {e}"),
            Self::EventLoop(e) => write!(f, "event loop failed: {e}"),
            Self::TooManyDevices(i) => write!(f, "no room for virtio device {i}"),
            // The disk errors name the image themselves.
            Self::Disk(e) => write!(f, "{e}"),
            // So do the TAP errors.
            Self::Net(e) => write!(f, "{e}"),
            Self::IoEvent(e) => write!(f, "cannot register an ioeventfd: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Wakes the event loop when the VM must stop.
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.eventfd(), EventSet::IN)) {
            log::error!("cannot watch for VM exit: {e}");
        }
    }
}

pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Stops the VM when the run's time limit passes; a guest with ACPI first
/// gets its power button pressed and `graceful.timeout` to shut down.
struct Deadline {
    timer: TimerFd,
    limit: Duration,
    exit: Arc<ExitSignal>,
    graceful: GracefulStop,
    pressed: bool,
}

impl Deadline {
    /// The limit (or the grace after it) passed.
    fn expired(&mut self) {
        let grace = self.graceful.timeout;
        if !self.pressed
            && !grace.is_zero()
            && (self.graceful.press)(0)
            && self.timer.reset(grace, None).is_ok()
        {
            self.pressed = true;
            log::warn!(
                "time limit of {}s reached: pressed the guest's ACPI power button; \
                 killing it in {}s unless it shuts down first",
                self.limit.as_secs(),
                grace.as_secs()
            );
            return;
        }
        self.exit.raise(VmExit::TimedOut(self.limit));
    }
}

impl MutEventSubscriber for Deadline {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.timer.wait();
        self.expired();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("cannot watch the time limit: {e}");
        }
    }
}

/// What `kvmini exec` adds to a plain run; `Extras::default()` is `run`.
#[derive(Default)]
pub struct Extras {
    /// One single-port virtio-console per writer, placed after the disks:
    /// the guest sees them as /dev/hvc0, /dev/hvc1, ... in order.
    pub consoles: Vec<Box<dyn Write + Send>>,
    /// Where the serial console goes instead of `config.console`.
    pub serial_out: Option<Box<dyn Write + Send>>,
    /// Keep stdin away from the serial console (it belongs to the caller).
    pub no_console_input: bool,
    /// Stop the VM with [`VmExit::TimedOut`] after this long.
    pub timeout: Option<Duration>,
}

/// Boots the VM described by `config` and runs it until it stops.
/// Returns why the guest stopped; `Err` means it could not be started.
pub fn run(config: &VmConfig) -> Result<VmExit, Error> {
    run_with(config, Extras::default())
}

/// [`run`], with `extras` added to the VM.
pub fn run_with(config: &VmConfig, extras: Extras) -> Result<VmExit, Error> {
    let kvm = kvm::open().map_err(Error::Kvm)?;
    if !arch::cpuid::host_has_hw_virt() {
        log::warn!(
            "this host has no hardware virtualization (no vmx/svm in /proc/cpuinfo): \
             KVM will emulate guest kernel code slowly and may fail to run a Linux kernel"
        );
    }
    let mem = builder::guest_memory(config)?;
    let vm = Vm::new(&kvm, &mem).map_err(Error::Vm)?;
    let mut events = EventManager::<Subscriber>::new().map_err(Error::EventLoop)?;
    let mut mmio = Bus::new();
    let mut cmdline = builder::cmdline(config)?;
    let mut virtio = builder::VirtioSlots::new(&vm, &mem, &mut cmdline, &mut mmio, &mut events);
    virtio.add_disks(&config.disks)?;
    virtio.add_nets(&config.nets)?;
    virtio.add_consoles(extras.consoles)?;
    let placed = virtio.placed();
    let entry = builder::load_guest(&mem, config, &cmdline, placed)?;

    let exit = Arc::new(ExitSignal::new().map_err(Error::EventFd)?);
    let guest = Arc::new(GuestState::new(exit.clone()));
    let out = match extras.serial_out {
        Some(out) => out,
        None => console::output(&config.console).map_err(Error::Console)?,
    };
    // The console's power-off words count only for guests without ACPI.
    let watching = guest.clone();
    let (out, panic_line) =
        console_watch::ConsoleWatch::new(out, Box::new(move || watching.console_power_down()));
    let legacy = builder::legacy_devices(&vm, Box::new(out), &exit, guest.clone())?;
    let vcpus = builder::create_vcpus(
        &kvm,
        &vm,
        &mem,
        entry,
        config.vcpus,
        Arc::new(legacy.pio),
        Arc::new(mmio),
        &exit,
    )?;

    events.add_subscriber(Box::new(ExitWatcher(exit.clone())));
    let on_signal = GracefulStop {
        press: power_button(&guest, &legacy.acpi, StopRequest::Signal),
        timeout: config.shutdown_timeout,
    };
    events.add_subscriber(Box::new(
        console::HostSignals::install(exit.clone(), Some(on_signal)).map_err(Error::EventFd)?,
    ));
    if let Some(limit) = extras.timeout {
        let errno = |e: vmm_sys_util::errno::Error| {
            Error::EventFd(std::io::Error::from_raw_os_error(e.errno()))
        };
        let mut timer = TimerFd::new().map_err(errno)?;
        timer.reset(limit, None).map_err(errno)?;
        events.add_subscriber(Box::new(Deadline {
            timer,
            limit,
            exit: exit.clone(),
            graceful: GracefulStop {
                press: power_button(&guest, &legacy.acpi, move |_| StopRequest::Timeout(limit)),
                timeout: config.shutdown_timeout,
            },
            pressed: false,
        }));
    }
    let interactive = !extras.no_console_input && console::interactive(&config.console);
    if let Some(input) = console::input().filter(|_| !extras.no_console_input) {
        let quit = exit.clone();
        events.add_subscriber(Box::new(ConsoleInput::new(
            input,
            legacy.serial.clone(),
            legacy.serial_wake,
            interactive,
            Box::new(move || quit.raise(VmExit::UserQuit)),
        )));
    }
    let _raw = if interactive {
        console::RawTerminal::enter()
            .map_err(|e| log::warn!("cannot put the terminal in raw mode: {e}"))
            .ok()
    } else {
        None
    };

    let mut handles = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let index = vcpu.index;
        match vcpu.spawn() {
            Ok(h) => handles.push(h),
            Err(e) => {
                exit.raise(VmExit::VcpuError {
                    cpu: index,
                    detail: e.to_string(),
                });
                handles.into_iter().for_each(|h| h.stop());
                return Err(Error::SpawnVcpu(index, e));
            }
        }
    }
    let mut loop_error = None;
    while !exit.is_raised() {
        if let Err(e) = events.run() {
            loop_error = Some(e);
            exit.raise(VmExit::VcpuError {
                cpu: 0,
                detail: "event loop failed".into(),
            });
        }
    }
    handles.into_iter().for_each(|h| h.stop());
    if let Some(e) = loop_error {
        return Err(Error::EventLoop(e));
    }
    let reason = exit.reason().unwrap_or(VmExit::PowerOff);
    let panic = lock(&panic_line).take();
    Ok(guest.verdict(reason, panic))
}

/// Presses the guest's ACPI power button, if the guest runs ACPI, and
/// records why (`why` of the signal number); false when it has no button.
fn power_button(
    guest: &Arc<GuestState>,
    acpi: &Arc<std::sync::Mutex<AcpiPower>>,
    why: impl Fn(i32) -> StopRequest + Send + 'static,
) -> Box<dyn FnMut(i32) -> bool + Send> {
    let (guest, acpi) = (guest.clone(), acpi.clone());
    Box::new(move |signal| {
        if !guest.runs_acpi() {
            return false;
        }
        match lock(&acpi).press_power_button() {
            Ok(()) => {
                guest.stop_requested(why(signal));
                true
            }
            Err(e) => {
                log::warn!("cannot press the guest's power button: {e}");
                false
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline(acpi: bool) -> (Deadline, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let d = Deadline {
            timer: TimerFd::new().unwrap(),
            limit: Duration::from_secs(8),
            exit: exit.clone(),
            graceful: GracefulStop {
                press: Box::new(move |_| acpi),
                timeout: Duration::from_secs(30),
            },
            pressed: false,
        };
        (d, exit)
    }

    #[test]
    fn exec_timeout_asks_an_acpi_guest_first() {
        let (mut d, exit) = deadline(true);
        d.expired();
        assert!(!exit.is_raised(), "the guest gets its grace period");
        d.expired();
        assert_eq!(
            exit.reason(),
            Some(VmExit::TimedOut(Duration::from_secs(8)))
        );
    }

    #[test]
    fn exec_timeout_kills_a_guest_without_acpi_at_once() {
        let (mut d, exit) = deadline(false);
        d.expired();
        assert_eq!(
            exit.reason(),
            Some(VmExit::TimedOut(Duration::from_secs(8)))
        );
    }
}

//! The VMM: builds the VM from a [`VmConfig`], starts its threads, serves
//! host signals and deadlines until the guest stops, then stops the
//! threads and reports why it stopped.
//!
//! Threads (each under its seccomp filter, see [`crate::seccomp`]): the
//! vCPUs; the event loop (virtio-net, virtio-console, console input); one
//! I/O thread per disk; one writer per output stream (serial console,
//! each virtio-console). The caller's thread builds everything, then runs
//! the control loop: host signals, `exec --timeout`'s deadline and the
//! VM's exit, nothing a guest can keep busy. Stopping waits for each
//! thread with a deadline, never for guest I/O or a stalled reader.

pub mod builder;
pub mod console;
pub mod console_watch;
pub mod loop_thread;
pub mod ram;
/// Why the VM stopped: the core's lowest layer, here for the callers of
/// [`run`].
pub use crate::exit;
pub mod guest_state;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use crate::arch::x86_64 as arch;
use crate::config::VmConfig;
use crate::devices::acpi::AcpiPower;
use crate::devices::bus::{lock, Bus, BusError};
use crate::devices::legacy::serial::ConsoleInput;
use crate::devices::output::{LossyWriter, Output, OutputWriter};
use crate::kvm::vcpu::{Vcpu, VcpuHandle};
use crate::kvm::{self, vm::Vm, KvmError};
use crate::seccomp::{Seccomp, ThreadKind};
use crate::thread;
use console::GracefulStop;
use exit::{ExitSignal, VmExit};
use guest_state::{GuestState, StopRequest};
use loop_thread::{LoopThread, RunningLoop};

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
    SpawnVcpu(u8, thread::Error),
    Thread(String, thread::Error),
    TooManyDevices(u32),
    Disk(crate::devices::virtio::block::Error),
    Net(crate::devices::virtio::net::Error),
    Fs(crate::devices::virtio::fs::FsError),
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
            Self::Thread(name, e) => write!(f, "cannot start the {name} thread: {e}"),
            Self::EventLoop(e) => write!(f, "event loop failed: {e}"),
            Self::TooManyDevices(i) => write!(f, "no room for virtio device {i}"),
            // The disk errors name the image themselves.
            Self::Disk(e) => write!(f, "{e}"),
            // So do the TAP errors.
            Self::Net(e) => write!(f, "{e}"),
            Self::Fs(e) => write!(f, "{e}"),
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
    /// The deadline of the time limit `limit`, `left` of it to go.
    fn new(
        limit: Duration,
        left: Duration,
        exit: Arc<ExitSignal>,
        graceful: GracefulStop,
    ) -> Result<Self, Error> {
        let errno = |e: vmm_sys_util::errno::Error| {
            Error::EventFd(std::io::Error::from_raw_os_error(e.errno()))
        };
        let mut timer = TimerFd::new().map_err(errno)?;
        // A zero duration would disarm the timer: a spent limit fires now.
        timer
            .reset(left.max(Duration::from_millis(1)), None)
            .map_err(errno)?;
        Ok(Self {
            timer,
            limit,
            exit,
            graceful,
            pressed: false,
        })
    }

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
    /// When the time limit's clock started (`None`: when the VM starts):
    /// `exec --timeout` counts its own preparation too.
    pub timeout_since: Option<Instant>,
    /// Archives placed right after `config.initrd` in guest memory
    /// (`exec`'s job), so the user's initrd is loaded as it is instead of
    /// being copied into a new file first. Needs an initrd.
    pub initrd_append: Vec<u8>,
}

/// Boots the VM described by `config` and runs it until it stops.
/// Returns why the guest stopped; `Err` means it could not be started.
pub fn run(config: &VmConfig) -> Result<VmExit, Error> {
    run_with(config, Extras::default())
}

/// Bytes of serial console output held for a slow reader; past this it
/// is dropped (and counted).
pub const SERIAL_BUFFER: usize = 256 << 10;
/// Bytes of each virtio-console's output held for a slow reader; past this
/// the console stops taking the guest's output until the reader catches
/// up (nothing is lost).
pub const CONSOLE_BUFFER: usize = 256 << 10;
/// How long stopping waits for each thread.
pub const STOP_WAIT: Duration = Duration::from_secs(1);
/// How long output still gets to reach its reader when the VM was stopped
/// by a host signal, the console escape or `--timeout`: the user asked
/// for the stop, a reader that does not read must not hold it up.
pub const FLUSH_AFTER_STOP: Duration = Duration::from_millis(200);

/// [`run`], with `extras` added to the VM.
pub fn run_with(config: &VmConfig, extras: Extras) -> Result<VmExit, Error> {
    let kvm = kvm::open().map_err(Error::Kvm)?;
    if !arch::cpuid::host_has_hw_virt() {
        log::warn!(
            "this host has no hardware virtualization (no vmx/svm in /proc/cpuinfo): \
             KVM will emulate guest kernel code slowly and may fail to run a Linux kernel"
        );
    }
    // Declared first, dropped last: after every thread that uses it.
    let ram = builder::guest_memory(config)?;
    let mem = ram.mem().clone();
    let vm = Vm::new(&kvm, &mem).map_err(Error::Vm)?;
    let exit = Arc::new(ExitSignal::new().map_err(Error::EventFd)?);

    // Output streams: buffers now, their writer threads once all is built.
    let serial_sink = match extras.serial_out {
        Some(out) => out,
        None => console::output(&config.console).map_err(Error::Console)?,
    };
    let serial = Output::new("serial", SERIAL_BUFFER).map_err(Error::EventFd)?;
    let consoles = (0..extras.consoles.len())
        .map(|i| Output::new(&format!("hvc{i}"), CONSOLE_BUFFER))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::EventFd)?;

    let mut event_loop = LoopThread::new(
        "event-loop".into(),
        ThreadKind::EventLoop,
        None,
        exit.clone(),
    )?;
    let mut mmio = Bus::new();
    let mut cmdline = builder::cmdline(config)?;
    let mut virtio = builder::VirtioSlots::new(
        &vm,
        &mem,
        &mut cmdline,
        &mut mmio,
        event_loop.events(),
        exit.clone(),
    );
    virtio.add_disks(&config.disks)?;
    virtio.add_nets(&config.nets)?;
    virtio.add_fs(&config.fs)?;
    virtio.add_consoles(&consoles)?;
    let placed = virtio.placed();
    let disk_threads = virtio.take_disk_threads();
    // A time limit that runs out while a large initrd is copied ends the
    // run there, as it would a running VM.
    // (A limit too large to add to a clock is no limit here.)
    let deadline = extras.timeout.and_then(|limit| {
        let at = extras
            .timeout_since
            .unwrap_or_else(Instant::now)
            .checked_add(limit)?;
        Some((limit, at))
    });
    let mut keep_going = || !deadline.is_some_and(|(_, at)| Instant::now() >= at);
    let loading = Instant::now();
    let entry = match builder::load_guest(
        &mem,
        config,
        &cmdline,
        placed,
        &extras.initrd_append,
        &mut keep_going,
    ) {
        Err(Error::Initrd(_, arch::boot::BootError::InitrdInterrupted)) => {
            let limit = deadline.map_or(Duration::ZERO, |(limit, _)| limit);
            log::debug!(
                "the time limit ran out while the initrd was copied ({} ms into the copy)",
                loading.elapsed().as_millis()
            );
            log_stopped(extras.timeout_since);
            return Ok(VmExit::TimedOut(limit));
        }
        other => other?,
    };
    log::debug!(
        "kernel and initrd in guest memory after {} ms",
        loading.elapsed().as_millis()
    );

    let guest = Arc::new(GuestState::new(exit.clone()).map_err(Error::EventFd)?);
    // The console's power-off words count only for guests without ACPI.
    let watching = guest.clone();
    let (out, panic_line) = console_watch::ConsoleWatch::new(
        Box::new(LossyWriter(serial.clone())),
        Box::new(move || watching.console_power_down()),
    );
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
        // sendmsg/recvmsg only where a vhost-user device needs them.
        if config.fs.is_empty() {
            ThreadKind::Vcpu
        } else {
            ThreadKind::VcpuVhostUser
        },
    )?;

    // The control loop, on this thread: the VM's exit, host signals, the
    // time limit.
    let mut control = EventManager::<Subscriber>::new().map_err(Error::EventLoop)?;
    control.add_subscriber(Box::new(ExitWatcher(exit.clone())));
    control.add_subscriber(Box::new(guest.panic_timer().map_err(Error::EventFd)?));
    let on_signal = GracefulStop {
        press: power_button(&guest, &legacy.acpi, StopRequest::Signal),
        timeout: config.shutdown_timeout,
    };
    control.add_subscriber(Box::new(
        console::HostSignals::install(exit.clone(), Some(on_signal)).map_err(Error::EventFd)?,
    ));
    if let Some(limit) = extras.timeout {
        let spent = extras.timeout_since.map_or(Duration::ZERO, |t| t.elapsed());
        log::debug!(
            "the VM is built, {} ms into the time limit's clock",
            spent.as_millis()
        );
        control.add_subscriber(Box::new(Deadline::new(
            limit,
            limit.saturating_sub(spent),
            exit.clone(),
            GracefulStop {
                press: power_button(&guest, &legacy.acpi, move |_| StopRequest::Timeout(limit)),
                timeout: config.shutdown_timeout,
            },
        )?));
    }
    let interactive = !extras.no_console_input && console::interactive(&config.console);
    if let Some(input) = console::input().filter(|_| !extras.no_console_input) {
        let quit = exit.clone();
        event_loop
            .events()
            .add_subscriber(Box::new(ConsoleInput::new(
                input,
                legacy.serial.clone(),
                legacy.serial_wake,
                interactive,
                Box::new(move || quit.raise(VmExit::UserQuit)),
            )));
    }
    let raw = if interactive {
        console::RawTerminal::enter()
            .map_err(|e| log::warn!("cannot put the terminal in raw mode: {e}"))
            .ok()
    } else {
        None
    };

    // Every device, file and TAP is open: start the threads, each under its
    // filter.
    let mut threads = Threads::default();
    if let Err(e) = threads.start(
        config.seccomp,
        (serial, serial_sink),
        consoles.into_iter().zip(extras.consoles).collect(),
        event_loop,
        disk_threads,
        vcpus,
    ) {
        exit.raise(VmExit::VcpuError {
            cpu: 0,
            detail: format!("kvmini could not start: {e}"),
        });
        threads.stop();
        threads.flush(Some(Instant::now() + FLUSH_AFTER_STOP));
        return Err(e);
    }

    let mut loop_error = None;
    while !exit.is_raised() {
        if let Err(e) = control.run() {
            loop_error = Some(e);
            exit.raise(VmExit::VcpuError {
                cpu: 0,
                detail: "the control loop failed".into(),
            });
        }
    }
    let reason = exit.reason().unwrap_or(VmExit::PowerOff);
    threads.stop();
    // The terminal back to normal, the signal handlers back to what they
    // were: from here on Ctrl-C and SIGTERM end kvmini as they end any
    // program (also while it waits below for a reader, or copies back
    // exec's shares).
    drop(raw);
    drop(control);
    let user_stopped =
        reason.host_signal().is_some() || matches!(reason, VmExit::UserQuit | VmExit::TimedOut(_));
    threads.flush(user_stopped.then(|| Instant::now() + FLUSH_AFTER_STOP));
    if let Some(e) = loop_error {
        return Err(Error::EventLoop(e));
    }
    let panic = lock(&panic_line).take();
    log_stopped(extras.timeout_since);
    Ok(guest.verdict(reason, panic))
}

/// Says when every VM thread has stopped, on the time limit's clock: what
/// follows is the VM's release (its memory, devices and KVM state, as the
/// locals drop), which the host kernel can make slow on a loaded machine
/// (seconds, in one CI run: `kvm_destroy_vm` waiting for SRCU grace
/// periods). The caller's next line on that clock tells how long it took.
fn log_stopped(clock: Option<Instant>) {
    if let Some(since) = clock {
        log::debug!(
            "the VM stopped {} ms into the time limit's clock; releasing it",
            since.elapsed().as_millis()
        );
    }
}

/// The VM's threads once started, in the order they are stopped.
#[derive(Default)]
struct Threads {
    vcpus: Vec<VcpuHandle>,
    event_loop: Option<RunningLoop>,
    disks: Vec<RunningLoop>,
    writers: Vec<OutputWriter>,
}

impl Threads {
    /// Starts the writers, the event loop, the disks' threads and the
    /// vCPUs, in that order (the guest runs last). What started before a
    /// failure stays in `self` for [`Self::stop`].
    fn start(
        &mut self,
        seccomp: Seccomp,
        serial: (Output, Box<dyn Write + Send>),
        consoles: Vec<(Output, Box<dyn Write + Send>)>,
        event_loop: LoopThread,
        disks: Vec<LoopThread>,
        vcpus: Vec<Vcpu>,
    ) -> Result<(), Error> {
        for (output, sink) in std::iter::once(serial).chain(consoles) {
            let writer = output
                .start_writer(sink, seccomp)
                .map_err(|e| Error::Thread("output writer".into(), e))?;
            self.writers.push(writer);
        }
        self.event_loop = Some(
            event_loop
                .spawn(seccomp)
                .map_err(|e| Error::Thread("event-loop".into(), e))?,
        );
        for (i, disk) in disks.into_iter().enumerate() {
            let running = disk
                .spawn(seccomp)
                .map_err(|e| Error::Thread(format!("disk{i}"), e))?;
            self.disks.push(running);
        }
        for vcpu in vcpus {
            let index = vcpu.index;
            let handle = vcpu
                .spawn(seccomp)
                .map_err(|e| Error::SpawnVcpu(index, e))?;
            self.vcpus.push(handle);
        }
        Ok(())
    }

    /// Stops the vCPUs, the event loop and the disks' threads (the exit
    /// signal is raised), each waited for at most [`STOP_WAIT`].
    fn stop(&mut self) {
        // Told first, so a disk request in progress gives up (and frees the
        // device a vCPU may be waiting for) while the vCPUs are stopped.
        if let Some(l) = &self.event_loop {
            l.stop();
        }
        for d in &self.disks {
            d.stop();
        }
        for v in self.vcpus.drain(..) {
            v.stop(STOP_WAIT);
        }
        for l in self
            .event_loop
            .take()
            .into_iter()
            .chain(self.disks.drain(..))
        {
            if let Err(e) = l.join_within(STOP_WAIT) {
                log::debug!("a VMM loop had failed: {e}");
            }
        }
    }

    /// Lets the writers write what is buffered, until `deadline` (`None`:
    /// as long as their readers take).
    fn flush(&mut self, deadline: Option<Instant>) {
        for w in self.writers.drain(..) {
            w.finish(deadline);
        }
    }
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
mod flood_tests;

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

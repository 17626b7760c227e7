//! The boot recipe, as a short list of calls: memory, VM, kernel, boot
//! tables, devices, vCPUs. Each step's failure says which step it was.

use std::fs::File;
use std::sync::{Arc, Mutex};

use kvm_ioctls::Kvm;
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::Error;
use crate::arch::x86_64::acpi::{self, AcpiConfig, VirtioMmioDevice};
use crate::arch::x86_64::{self as arch, boot, cpuid, layout, mptable};
use crate::config::{DiskConfig, FsConfig, NetConfig, VmConfig};
use crate::devices::output::Output;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{self, MmioTransport};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::VirtioDevice;
use crate::exit::{ExitSignal, VmExit};
use event_manager::{EventManager, SubscriberOps};
use kvm_ioctls::IoEventAddress;

use super::loop_thread::LoopThread;
use super::ram::GuestRam;
use super::Subscriber;
use crate::devices::acpi::AcpiPower;
use crate::devices::bus::Bus;
use crate::devices::events::GuestEvents;
use crate::devices::legacy::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use crate::devices::legacy::pvpanic::PvPanic;
use crate::devices::legacy::rtc::{Rtc, RTC_PORT_LEN};
use crate::devices::legacy::serial::{SerialDevice, COM1_PORT, COM1_PORT_LEN};
use crate::kvm::vcpu::Vcpu;
use crate::kvm::vm::Vm;
use crate::seccomp::ThreadKind;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Allocates guest RAM: below the 32-bit MMIO gap, the rest above 4 GiB.
/// Each region starts on a 2 MiB boundary of the host, so that KVM can use
/// 2 MiB pages for it (see [`GuestRam`]).
/// With a vhost-user device (`--fs`) the RAM is shared, for the backend
/// to map.
pub fn guest_memory(config: &VmConfig) -> Result<GuestRam, Error> {
    let ranges = layout::ram_regions(config.memory_bytes);
    if config.fs.is_empty() {
        GuestRam::new(&ranges)
    } else {
        GuestRam::new_shared(&ranges)
    }
    .map_err(|e| Error::GuestMemory(e.to_string()))
}

/// Builds the kernel command line: the config's, plus what devices add.
pub fn cmdline(config: &VmConfig) -> Result<Cmdline, Error> {
    let mut cmdline = Cmdline::try_from(&config.cmdline, layout::CMDLINE_MAX_SIZE)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    // Before `--`: the default guest's init configures these NICs by DHCP
    // and mounts these shares.
    for word in config.guest_words() {
        cmdline
            .insert_str(word)
            .map_err(|e| Error::Cmdline(e.to_string()))?;
    }
    Ok(cmdline)
}

/// Loads kernel, initrd and command line, and writes the boot tables: ACPI
/// (for kernels with ACPI: CPUs, `virtio` devices and the fixed ones), the
/// zero page (pointing at the RSDP) and the MP table (for kernels without).
/// Returns the 64-bit entry point. `initrd_append` follows the initrd in
/// guest memory, and `keep_going` is asked between chunks of the initrd
/// (see [`boot::load_initrd`]).
pub fn load_guest(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    cmdline: &Cmdline,
    virtio: Vec<VirtioMmioDevice>,
    initrd_append: &[u8],
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<GuestAddress, Error> {
    let open = |p: &std::path::Path| File::open(p).map_err(|e| Error::OpenFile(p.to_path_buf(), e));
    let kernel = boot::load_kernel(mem, &mut open(&config.kernel)?)
        .map_err(|e| Error::Kernel(config.kernel.clone(), e))?;
    let initrd = match &config.initrd {
        Some(path) => Some(
            boot::load_initrd(mem, kernel.end, &mut open(path)?, initrd_append, keep_going)
                .map_err(|e| Error::Initrd(path.clone(), e))?,
        ),
        // Something to append but nothing to append it to.
        None if !initrd_append.is_empty() => {
            return Err(Error::Boot(boot::BootError::AppendWithoutInitrd))
        }
        None => None,
    };
    boot::load_cmdline(mem, cmdline).map_err(Error::Boot)?;
    let cmdline_size = cmdline
        .as_cstring()
        .map_err(|e| Error::Cmdline(e.to_string()))?
        .as_bytes_with_nul()
        .len();
    let acpi = AcpiConfig {
        vcpus: config.vcpus,
        virtio,
    };
    let rsdp = acpi::setup_acpi(mem, &acpi).map_err(Error::Acpi)?;
    boot::configure_system(mem, cmdline_size, initrd, kernel.setup_header, Some(rsdp))
        .map_err(Error::Boot)?;
    mptable::setup_mptable(mem, config.vcpus).map_err(Error::Mptable)?;
    Ok(kernel.entry)
}

/// The i8042's reset line: the guest's `reboot=k` stops the VM.
struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.raise(VmExit::Reset);
        Ok(())
    }
}

/// The port-I/O devices: COM1 (IRQ 4), the i8042 reset, the CMOS RTC,
/// pvpanic and the ACPI power block (its GED interrupt on an irqfd).
pub struct LegacyDevices {
    pub pio: Bus,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Readable when the guest drained the UART's receive FIFO.
    pub serial_wake: EventFd,
    /// The ACPI power block, for pressing the power button.
    pub acpi: Arc<Mutex<AcpiPower>>,
}

pub fn legacy_devices(
    vm: &Vm,
    console: Box<dyn std::io::Write + Send>,
    exit: &Arc<ExitSignal>,
    guest: Arc<dyn GuestEvents>,
) -> Result<LegacyDevices, Error> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.register_irqfd(&irq, layout::SERIAL_IRQ)
        .map_err(Error::Vm)?;
    let (serial, serial_wake) = SerialDevice::new(irq, console).map_err(Error::EventFd)?;
    let serial = Arc::new(Mutex::new(serial));
    let i8042 = Arc::new(Mutex::new(I8042::new(ResetTrigger(exit.clone()))));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN)
        .map_err(Error::Bus)?;
    pio.insert(i8042, I8042_PORT, I8042_PORT_LEN)
        .map_err(Error::Bus)?;
    pio.insert(
        Arc::new(Mutex::new(Rtc::new())),
        u64::from(layout::RTC_PORT),
        RTC_PORT_LEN,
    )
    .map_err(Error::Bus)?;
    pio.insert(
        Arc::new(Mutex::new(PvPanic::new(guest.clone()))),
        u64::from(layout::PVPANIC_PORT),
        1,
    )
    .map_err(Error::Bus)?;
    let ged_irq = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.register_irqfd(&ged_irq, layout::GED_IRQ)
        .map_err(Error::Vm)?;
    let acpi = Arc::new(Mutex::new(AcpiPower::new(guest, ged_irq)));
    pio.insert(
        acpi.clone(),
        u64::from(layout::ACPI_PORT),
        u64::from(layout::ACPI_PORT_LEN),
    )
    .map_err(Error::Bus)?;
    Ok(LegacyDevices {
        pio,
        serial,
        serial_wake,
        acpi,
    })
}

/// Places virtio devices on the virtio-mmio transport, one slot after the
/// other: MMIO window and IRQ from the layout, queue notifications through
/// ioeventfds, interrupts through an irqfd, the device's queue handler on
/// the event loop (a disk's on an I/O thread of its own), and the device
/// announced on the kernel command line (kernels without ACPI) and
/// recorded for the DSDT (kernels with ACPI). Every device type (block,
/// net, console) goes through [`Self::place`].
pub struct VirtioSlots<'a> {
    pub vm: &'a Vm,
    pub mem: &'a GuestMemoryMmap,
    pub cmdline: &'a mut Cmdline,
    pub mmio: &'a mut Bus,
    pub events: &'a mut EventManager<Subscriber>,
    /// Raised by a disk thread whose loop fails.
    pub exit: Arc<ExitSignal>,
    next: u32,
    placed: Vec<VirtioMmioDevice>,
    /// One I/O thread per disk, started with the vCPUs.
    disk_threads: Vec<LoopThread>,
}

impl<'a> VirtioSlots<'a> {
    pub fn new(
        vm: &'a Vm,
        mem: &'a GuestMemoryMmap,
        cmdline: &'a mut Cmdline,
        mmio: &'a mut Bus,
        events: &'a mut EventManager<Subscriber>,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            vm,
            mem,
            cmdline,
            mmio,
            events,
            exit,
            next: 0,
            placed: Vec::new(),
            disk_threads: Vec::new(),
        }
    }

    /// The disks' I/O threads, to start once the VM is built.
    pub fn take_disk_threads(&mut self) -> Vec<LoopThread> {
        std::mem::take(&mut self.disk_threads)
    }

    /// The devices placed so far, in slot order, as the ACPI tables
    /// describe them.
    pub fn placed(&self) -> Vec<VirtioMmioDevice> {
        self.placed.clone()
    }

    /// Adds `device` in the next free slot, with `handler` (the subscriber
    /// that runs its queues) on the event loop.
    pub fn add(&mut self, device: Box<dyn VirtioDevice>, handler: Subscriber) -> Result<(), Error> {
        self.place(device)?;
        self.events.add_subscriber(handler);
        Ok(())
    }

    /// Puts `device` in the next free slot; its handler is the caller's.
    fn place(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), Error> {
        let index = self.next;
        let (base, irq) = layout::virtio_mmio_slot(index)
            .zip(layout::virtio_irq(index))
            .ok_or(Error::TooManyDevices(index))?;
        let transport = MmioTransport::new(device, self.mem.clone()).map_err(Error::EventFd)?;
        self.vm
            .register_irqfd(transport.interrupt_evt(), irq)
            .map_err(Error::Vm)?;
        for (evt, addr, queue) in transport.ioeventfds(base) {
            self.vm
                .fd()
                .register_ioevent(evt, &IoEventAddress::Mmio(addr.0), queue)
                .map_err(Error::IoEvent)?;
        }
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base.0, mmio::MMIO_SIZE)
            .map_err(Error::Bus)?;
        self.cmdline
            .add_virtio_mmio_device(mmio::MMIO_SIZE, base, irq, None)
            .map_err(|e| Error::Cmdline(e.to_string()))?;
        self.placed.push(VirtioMmioDevice {
            // The slots lie in the 32-bit MMIO gap (layout.rs checks it).
            base: base.0 as u32,
            size: mmio::MMIO_SIZE as u32,
            irq,
        });
        self.next += 1;
        Ok(())
    }

    /// One virtio-blk device per `--disk`, in order (/dev/vda, /dev/vdb,
    /// ...), each served by an I/O thread of its own (`disk<N>`).
    pub fn add_disks(&mut self, disks: &[DiskConfig]) -> Result<(), Error> {
        for (i, disk) in disks.iter().enumerate() {
            let block = Block::new(disk).map_err(Error::Disk)?;
            let handler = block.event_handler().map_err(Error::Disk)?;
            let mut io = LoopThread::new(
                format!("disk{i}"),
                ThreadKind::DiskIo,
                Some(handler.stop_flag()),
                self.exit.clone(),
            )?;
            io.events().add_subscriber(Box::new(handler));
            self.place(Box::new(block))?;
            self.disk_threads.push(io);
        }
        Ok(())
    }

    /// One virtio-net device per `--net`, in order (eth0, eth1, ...), each
    /// on its TAP.
    pub fn add_nets(&mut self, nets: &[NetConfig]) -> Result<(), Error> {
        for net in nets {
            let dev = Net::new(net).map_err(Error::Net)?;
            let handler = Box::new(dev.event_handler().map_err(Error::Net)?);
            self.add(Box::new(dev), handler)?;
        }
        Ok(())
    }

    /// One virtio-fs device per `--fs`, in order, each connected to its
    /// vhost-user backend now.
    pub fn add_fs(&mut self, fs: &[FsConfig]) -> Result<(), Error> {
        for f in fs {
            let dev = Fs::new(f).map_err(Error::Fs)?;
            let handler = Box::new(dev.event_handler().map_err(Error::Fs)?);
            self.add(Box::new(dev), handler)?;
        }
        Ok(())
    }

    /// One single-port virtio-console per output (/dev/hvc0, ... in order).
    pub fn add_consoles(&mut self, outputs: &[Output]) -> Result<(), Error> {
        for output in outputs {
            let console = Console::new(output.clone()).map_err(Error::EventFd)?;
            let handler = Box::new(console.event_handler().map_err(Error::EventFd)?);
            self.add(Box::new(console), handler)?;
        }
        Ok(())
    }
}

/// Creates and configures every vCPU (not yet running), each to run under
/// `kind`'s filter.
#[allow(clippy::too_many_arguments)]
pub fn create_vcpus(
    kvm: &Kvm,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    entry: GuestAddress,
    count: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: &Arc<ExitSignal>,
    kind: ThreadKind,
) -> Result<Vec<Vcpu>, Error> {
    let max = kvm.get_max_vcpus();
    if usize::from(count) > max {
        return Err(Error::TooManyVcpus(count, max));
    }
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::Cpuid)?;
    (0..count)
        .map(|index| {
            let fd = vm
                .fd()
                .create_vcpu(u64::from(index))
                .map_err(|e| Error::CreateVcpu(index, e))?;
            let mut cpuid = supported.clone();
            cpuid::filter_cpuid(&mut cpuid, index, count, tsc_deadline);
            arch::configure_vcpu(mem, &fd, &cpuid, entry, index == 0)
                .map_err(|e| Error::ConfigureVcpu(index, e))?;
            Ok(Vcpu {
                index,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: mem.clone(),
                exit: exit.clone(),
                kind,
            })
        })
        .collect()
}

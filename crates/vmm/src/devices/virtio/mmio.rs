//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2), shared by every
//! virtio device. It implements the register protocol and the status state
//! machine, keeps the queue configuration, validates it and hands the queues
//! to the device on DRIVER_OK. Invalid guest accesses are logged at debug
//! level and ignored.

use std::io;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{
    feature, Interrupt, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
};
use crate::devices::bus::BusDevice;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the guest ("KVMi").
pub const VENDOR_ID: u32 = 0x694d_564b;
/// Size of the register window each device needs.
pub const MMIO_SIZE: u64 = 0x1000;

// Register offsets (virtio 1.2, table 4.1).
pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const REG_CONFIG: u64 = 0x100;

/// The kernel command-line fragment that announces a virtio-mmio device to
/// a guest without ACPI or device tree (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
/// `linux_loader::cmdline::Cmdline::add_virtio_mmio_device` produces the same.
pub fn cmdline_fragment(base: GuestAddress, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{:#x}:{irq}",
        MMIO_SIZE >> 10,
        base.0
    )
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    /// The driver accepted a bit in a feature word beyond the first 64.
    acked_unoffered: bool,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
}

impl MmioTransport {
    /// Wraps `device`; `mem` is the guest memory its queues live in.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> io::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("invalid queue size {max}: {e}"),
                    )
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        if queues.len() != device.queue_events().len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "device has a different number of queues and queue eventfds",
            ));
        }
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new()?),
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            acked_unoffered: false,
            queue_sel: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The eventfd to register as an irqfd on the device's GSI.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.eventfd()
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// For each queue: the eventfd, the guest address of QueueNotify for a
    /// device at `base`, and the value (the queue index) to match on. The
    /// VMM registers each with `VmFd::register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)`
    /// so notifications never exit to userspace.
    pub fn ioeventfds(&self, base: GuestAddress) -> Vec<(&EventFd, GuestAddress, u32)> {
        let notify = GuestAddress(base.0 + REG_QUEUE_NOTIFY);
        (0u32..)
            .zip(self.device.queue_events())
            .map(|(i, evt)| (evt, notify, i))
            .collect()
    }

    pub fn device_status(&self) -> u32 {
        let mut status = self.status;
        if self.interrupt.needs_reset() {
            status |= STATUS_DEVICE_NEEDS_RESET;
        }
        status
    }

    fn has_status(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// The queue selected by QueueSel, if the driver may configure it now:
    /// after FEATURES_OK and before DRIVER_OK.
    fn selected_queue_mut(&mut self, what: &str) -> Option<&mut Queue> {
        if !self.has_status(STATUS_FEATURES_OK)
            || self.status & (STATUS_DRIVER_OK | STATUS_FAILED) != 0
        {
            log::debug!(
                "virtio-mmio: {what} write in status {:#x} ignored",
                self.status
            );
            return None;
        }
        let sel = self.queue_sel;
        let q = self.queues.get_mut(sel as usize);
        if q.is_none() {
            log::debug!("virtio-mmio: {what} write for missing queue {sel} ignored");
        }
        q
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.device_status(),
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => self.write_driver_features(v),
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue_mut("QueueNum") {
                    match u16::try_from(v).map(|n| q.try_set_size(n)) {
                        Ok(Ok(())) => {}
                        _ => log::debug!("virtio-mmio: invalid queue size {v} ignored"),
                    }
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue_mut("QueueReady") {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_DESC_LOW => {
                self.set_queue_addr(offset, |q| q.set_desc_table_address(Some(v), None))
            }
            REG_QUEUE_DESC_HIGH => {
                self.set_queue_addr(offset, |q| q.set_desc_table_address(None, Some(v)))
            }
            REG_QUEUE_DRIVER_LOW => {
                self.set_queue_addr(offset, |q| q.set_avail_ring_address(Some(v), None))
            }
            REG_QUEUE_DRIVER_HIGH => {
                self.set_queue_addr(offset, |q| q.set_avail_ring_address(None, Some(v)))
            }
            REG_QUEUE_DEVICE_LOW => {
                self.set_queue_addr(offset, |q| q.set_used_ring_address(Some(v), None))
            }
            REG_QUEUE_DEVICE_HIGH => {
                self.set_queue_addr(offset, |q| q.set_used_ring_address(None, Some(v)))
            }
            REG_QUEUE_NOTIFY => self.notify(v),
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.write_status(v),
            _ => log::debug!("virtio-mmio: write of {v:#x} to unknown register {offset:#x}"),
        }
    }

    fn set_queue_addr(&mut self, offset: u64, set: impl FnOnce(&mut Queue)) {
        // A queue must not move while the driver says it is in use.
        match self.selected_queue_mut("queue address") {
            Some(q) if q.ready() => {
                log::debug!("virtio-mmio: address write {offset:#x} to a ready queue ignored")
            }
            Some(q) => set(q),
            None => {}
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if !self.has_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
            || self.status & (STATUS_FEATURES_OK | STATUS_FAILED) != 0
        {
            log::debug!(
                "virtio-mmio: DriverFeatures write in status {:#x} ignored",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
            1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32),
            // Nothing is offered there; accepting anything makes FEATURES_OK fail.
            sel if v != 0 => {
                log::debug!("virtio-mmio: driver accepted features {v:#x} in unoffered word {sel}");
                self.acked_unoffered = true;
            }
            _ => {}
        }
    }

    fn notify(&mut self, v: u32) {
        if !self.active {
            log::debug!("virtio-mmio: QueueNotify({v}) before DRIVER_OK ignored");
            return;
        }
        match self.device.queue_events().get(v as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::warn!("virtio-mmio: cannot signal queue {v}: {e}");
                }
            }
            None => log::debug!("virtio-mmio: QueueNotify for missing queue {v} ignored"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver only ever adds bits (or writes 0 to reset); FAILED may
        // come at any time.
        if v & old != old {
            log::debug!("virtio-mmio: status {old:#x} -> {v:#x} clears bits; ignored");
            return;
        }
        let added = v & !old;
        if added & STATUS_FAILED != 0 {
            log::debug!("virtio-mmio: driver gave up on the device (FAILED)");
            self.status |= STATUS_FAILED;
            return;
        }
        if old & STATUS_FAILED != 0 {
            log::debug!("virtio-mmio: status {v:#x} after FAILED ignored");
            return;
        }
        let next = match old {
            0 => STATUS_ACKNOWLEDGE,
            s if s == STATUS_ACKNOWLEDGE => STATUS_DRIVER,
            s if s == STATUS_ACKNOWLEDGE | STATUS_DRIVER => STATUS_FEATURES_OK,
            s if s == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK => STATUS_DRIVER_OK,
            _ => 0,
        };
        if added != next {
            log::debug!("virtio-mmio: status {old:#x} -> {v:#x} out of order; ignored");
            return;
        }
        match next {
            STATUS_FEATURES_OK => {
                if self.features_acceptable() {
                    self.status = v;
                } else {
                    // FEATURES_OK stays clear: the driver reads it back and
                    // gives up (or retries with fewer features after reset).
                    log::debug!(
                        "virtio-mmio: refusing features {:#x} (offered {:#x})",
                        self.acked_features,
                        self.device.avail_features()
                    );
                }
            }
            STATUS_DRIVER_OK => {
                self.status = v;
                self.activate();
            }
            _ => self.status = v,
        }
    }

    /// The driver accepted only what we offered, and the modern interface.
    fn features_acceptable(&self) -> bool {
        !self.acked_unoffered
            && self.acked_features & !self.device.avail_features() == 0
            && self.acked_features & feature(VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let mem = &self.mem;
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(mem)) {
            log::warn!("virtio-mmio: queue {i} is not valid; device needs reset");
            self.interrupt.set_needs_reset();
            return;
        }
        let event_idx = self.acked_features & feature(VIRTIO_F_RING_EVENT_IDX) != 0;
        // The transport keeps its copy for QueueReady/QueueNumMax reads; the
        // device gets its own, with the negotiated notification suppression.
        let queues = self
            .queues
            .iter()
            .map(|q| {
                Queue::try_from(q.state()).map(|mut q| {
                    q.set_event_idx(event_idx);
                    q
                })
            })
            .collect::<Result<Vec<_>, _>>();
        let queues = match queues {
            Ok(q) => q,
            Err(e) => {
                log::warn!("virtio-mmio: invalid queue configuration: {e}; device needs reset");
                self.interrupt.set_needs_reset();
                return;
            }
        };
        match self.device.activate(
            self.mem.clone(),
            self.acked_features,
            queues,
            self.interrupt.clone(),
        ) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::warn!("virtio-mmio: cannot activate the device: {e}");
                self.interrupt.set_needs_reset();
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.acked_unoffered = false;
        self.queue_sel = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            data.fill(0);
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            log::debug!(
                "virtio-mmio: bad register read of {} bytes at {offset:#x}",
                data.len()
            );
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            self.device.write_config(offset - REG_CONFIG, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(d) if offset % 4 == 0 => self.write_reg(offset, u32::from_le_bytes(d)),
            _ => log::debug!(
                "virtio-mmio: bad register write of {} bytes at {offset:#x}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::super::{ActivateError, TYPE_BLOCK, VIRTIO_MMIO_INT_VRING};
    use super::*;

    #[derive(Default)]
    struct Record {
        activations: Vec<(u64, Vec<(u16, bool)>)>,
        resets: usize,
        fail: bool,
    }

    struct FakeDevice {
        evts: Vec<EventFd>,
        record: Arc<Mutex<Record>>,
    }

    const FEATURES: u64 = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_RING_EVENT_IDX) | 0b101;

    /// Config bytes 0, 1, 2, ...: byte N reads as N.
    const CONFIG: [u8; 256] = {
        let mut c = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            c[i] = i as u8;
            i += 1;
        }
        c
    };

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            TYPE_BLOCK
        }
        fn avail_features(&self) -> u64 {
            FEATURES
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn config_space(&self) -> &[u8] {
            &CONFIG
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            acked: u64,
            queues: Vec<Queue>,
            _irq: Arc<Interrupt>,
        ) -> Result<(), ActivateError> {
            let mut r = self.record.lock().unwrap();
            if r.fail {
                return Err(ActivateError::AlreadyActive);
            }
            let qs = queues
                .iter()
                .map(|q| (q.size(), q.event_idx_enabled()))
                .collect();
            r.activations.push((acked, qs));
            Ok(())
        }
        fn reset(&mut self) {
            self.record.lock().unwrap().resets += 1;
        }
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Record>>, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let dev = FakeDevice {
            evts: (0..2)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            record: record.clone(),
        };
        (
            MmioTransport::new(Box::new(dev), mem.clone()).unwrap(),
            record,
            mem,
        )
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) -> bool {
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, REG_DRIVER_FEATURES_SEL, 0);
        wr(t, REG_DRIVER_FEATURES, features as u32);
        wr(t, REG_DRIVER_FEATURES_SEL, 1);
        wr(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        rd(t, REG_STATUS) & STATUS_FEATURES_OK != 0
    }

    /// Sets up queue `i` at the rings of a mock queue placed at `at`.
    fn setup_queue(t: &mut MmioTransport, mem: &GuestMemoryMmap, i: u32, at: u64, size: u16) {
        let mq = MockSplitQueue::create(mem, GuestAddress(at), size);
        wr(t, REG_QUEUE_SEL, i);
        assert_eq!(rd(t, REG_QUEUE_READY), 0);
        wr(t, REG_QUEUE_NUM, u32::from(size));
        for (lo, addr) in [
            (REG_QUEUE_DESC_LOW, mq.desc_table_addr()),
            (REG_QUEUE_DRIVER_LOW, mq.avail_addr()),
            (REG_QUEUE_DEVICE_LOW, mq.used_addr()),
        ] {
            wr(t, lo, addr.0 as u32);
            wr(t, lo + 4, (addr.0 >> 32) as u32);
        }
        wr(t, REG_QUEUE_READY, 1);
        assert_eq!(rd(t, REG_QUEUE_READY), 1);
    }

    const RUNNING: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = setup();
        assert_eq!(rd(&mut t, REG_MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), TYPE_BLOCK);
        assert_eq!(rd(&mut t, REG_VENDOR_ID), VENDOR_ID);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), FEATURES as u32);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), (FEATURES >> 32) as u32);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 0);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 16);
        wr(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 8);
        wr(&mut t, REG_QUEUE_SEL, 2);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert_eq!(rd(&mut t, REG_CONFIG_GENERATION), 0);
        // Config space: any width, offsets relative to 0x100.
        let mut b = [0u8; 3];
        t.read(REG_CONFIG + 5, &mut b);
        assert_eq!(b, [5, 6, 7]);
    }

    #[test]
    fn invalid_accesses_are_ignored() {
        let (mut t, _, _) = setup();
        let mut b = [0xaau8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xaau8; 4];
        t.read(REG_MAGIC + 1, &mut b);
        assert_eq!(b, [0; 4]);
        let mut w = [0xaau8; 8];
        t.read(REG_MAGIC, &mut w);
        assert_eq!(w, [0; 8]);
        assert_eq!(rd(&mut t, 0x0f0), 0);
        t.write(REG_STATUS, &[1]);
        t.write(REG_STATUS + 2, &[1, 0, 0, 0]);
        wr(&mut t, 0x0f0, 1);
        wr(&mut t, REG_MAGIC, 1);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert_eq!(rd(&mut t, REG_MAGIC), MMIO_MAGIC);
        // Status bits out of order are ignored.
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK);
        assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE);
        // Driver features before DRIVER, queue setup before FEATURES_OK.
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        wr(&mut t, REG_QUEUE_NUM, 4);
        wr(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
        // Notify before DRIVER_OK does not kick the device.
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert!(t.device.queue_events()[0].read().is_err());
    }

    #[test]
    fn full_handshake_activates_with_valid_queues() {
        let (mut t, record, mem) = setup();
        let want = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_RING_EVENT_IDX) | 1;
        assert!(negotiate(&mut t, want));
        setup_queue(&mut t, &mem, 0, 0x1000, 16);
        setup_queue(&mut t, &mem, 1, 0x4000, 4);
        // Invalid sizes (not a power of two, above the maximum) are ignored.
        wr(&mut t, REG_QUEUE_SEL, 1);
        wr(&mut t, REG_QUEUE_NUM, 3);
        wr(&mut t, REG_QUEUE_NUM, 64);
        wr(&mut t, REG_STATUS, RUNNING);
        assert_eq!(rd(&mut t, REG_STATUS), RUNNING);
        let r = record.lock().unwrap();
        assert_eq!(r.activations, vec![(want, vec![(16, true), (4, true)])]);
        drop(r);
        // Notification by MMIO write signals the queue's eventfd.
        wr(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(t.device.queue_events()[1].read().unwrap(), 1);
        wr(&mut t, REG_QUEUE_NOTIFY, 7);
        // Queue configuration is frozen while running.
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
        // Interrupt status and ack.
        t.interrupt().signal_used_queue().unwrap();
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
        wr(&mut t, REG_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
        // Reset stops the device and forgets everything.
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(record.lock().unwrap().resets, 1);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 16);
        // And the device can be brought up again, without EVENT_IDX.
        assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
        setup_queue(&mut t, &mem, 0, 0x1000, 8);
        setup_queue(&mut t, &mem, 1, 0x4000, 8);
        wr(&mut t, REG_STATUS, RUNNING);
        let r = record.lock().unwrap();
        assert_eq!(r.activations[1].1, vec![(8, false), (8, false)]);
    }

    #[test]
    fn features_ok_refused_for_unoffered_or_legacy_features() {
        let (mut t, _, _) = setup();
        // Missing VERSION_1.
        assert!(!negotiate(&mut t, 1));
        assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_STATUS, 0);
        // A bit we did not offer.
        assert!(!negotiate(&mut t, feature(VIRTIO_F_VERSION_1) | 2));
        wr(&mut t, REG_STATUS, 0);
        // A bit in a feature word we do not have.
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 2);
        wr(&mut t, REG_DRIVER_FEATURES, 1);
        assert!(!negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
        // After a reset, a good set is accepted; features are then frozen.
        wr(&mut t, REG_STATUS, 0);
        assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
        wr(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, REG_DRIVER_FEATURES, 2);
        assert_eq!(t.acked_features, feature(VIRTIO_F_VERSION_1));
    }

    #[test]
    fn invalid_queues_or_activation_failure_need_reset() {
        let (mut t, record, mem) = setup();
        assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
        setup_queue(&mut t, &mem, 0, 0x1000, 16);
        // Queue 1 never made ready: not valid.
        wr(&mut t, REG_STATUS, RUNNING);
        assert_eq!(rd(&mut t, REG_STATUS), RUNNING | STATUS_DEVICE_NEEDS_RESET);
        assert!(record.lock().unwrap().activations.is_empty());
        assert_ne!(
            rd(&mut t, REG_INTERRUPT_STATUS) & super::super::VIRTIO_MMIO_INT_CONFIG,
            0
        );
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert_eq!(record.lock().unwrap().resets, 0, "never activated");

        // Rings outside guest memory.
        assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
        setup_queue(&mut t, &mem, 0, 0x1000, 16);
        setup_queue(&mut t, &mem, 1, 0x4000, 8);
        wr(&mut t, REG_QUEUE_SEL, 1);
        wr(&mut t, REG_QUEUE_READY, 0);
        wr(&mut t, REG_QUEUE_DEVICE_HIGH, 1);
        wr(&mut t, REG_QUEUE_READY, 1);
        wr(&mut t, REG_STATUS, RUNNING);
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        wr(&mut t, REG_STATUS, 0);

        // The device refuses to start.
        record.lock().unwrap().fail = true;
        assert!(negotiate(&mut t, feature(VIRTIO_F_VERSION_1)));
        setup_queue(&mut t, &mem, 0, 0x1000, 16);
        setup_queue(&mut t, &mem, 1, 0x4000, 8);
        wr(&mut t, REG_STATUS, RUNNING);
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn failed_status_and_ioeventfds() {
        let (mut t, _, _) = setup();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_FAILED);
        assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_FAILED);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_FAILED | STATUS_DRIVER,
        );
        assert_eq!(rd(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_FAILED);

        let fds = t.ioeventfds(GuestAddress(0xd000_0000));
        assert_eq!(fds.len(), 2);
        assert_eq!(fds[1].1, GuestAddress(0xd000_0050));
        assert_eq!(fds[1].2, 1);
        assert_eq!(
            cmdline_fragment(GuestAddress(0xd000_1000), 6),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}

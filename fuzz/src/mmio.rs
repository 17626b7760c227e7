//! The `mmio` target: the virtio-mmio transport in front of a real device
//! (block, net or console), driven by register accesses of any offset,
//! size and value, with the device's queue work run in between.
//!
//! Input: `device u8` (`% 3`: block, net, console), then ops until the
//! input ends, one byte each (`% 8`) with operands:
//! - `0` read `off u16` (`% 0x1000`) of `size u8 % 9` bytes;
//! - `1` write `off u16`, `size u8 % 9`, then that many bytes;
//! - `2` write register `reg u8` (offset `(reg % 64) * 4`) with `v u32`;
//! - `3` read register `reg u8`;
//! - `4` poke guest memory (as in [`guest::parse_pokes`], one poke);
//! - `5` run the device's queues, as its event handler would;
//! - `6` a frame arrives on the net device's TAP: `len u16`, `head u8`
//!   bytes;
//! - `7` set up queue `sel u8` (`% 2`) with `size_log2 u8` entries at the
//!   rings of control block `sel` ([`guest`]) and make it ready: the
//!   register writes a driver makes, in order.
//!
//! Checks after every op: identification registers read their constants;
//! the status is a prefix of ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK
//! (plus FAILED, DEVICE_NEEDS_RESET); InterruptStatus has only the two
//! defined bits; a reset (status 0) clears status, interrupts and queue
//! readiness; badly sized or aligned register reads and config reads past
//! the config space read zeros.

use std::sync::Arc;

use kvmini::devices::bus::BusDevice;
use kvmini::devices::output::Output;
use kvmini::devices::virtio::block::{Block, BlockConfig};
use kvmini::devices::virtio::console::Console;
use kvmini::devices::virtio::mmio::*;
use kvmini::devices::virtio::net::{MacAddr, Net};
use kvmini::devices::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, TYPE_BLOCK, TYPE_NET, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
};
use vm_memory::GuestMemoryMmap;

use crate::guest::{self, ctrl, AVAIL_OFF, USED_OFF};
use crate::input::Input;
use crate::net::FakeTap;

/// Config space sizes: block, net, console.
const CONFIG_LEN: [u64; 3] = [60, 8, 0];
const DEVICE_ID: [u32; 3] = [TYPE_BLOCK, TYPE_NET, 3];

/// Register accesses of the set-up helper op: (offset, value) in order.
pub fn queue_setup(sel: u32, size: u32) -> Vec<(u64, u32)> {
    let base = ctrl(u64::from(sel));
    vec![
        (REG_QUEUE_SEL, sel),
        (REG_QUEUE_NUM, size),
        (REG_QUEUE_DESC_LOW, base as u32),
        (REG_QUEUE_DESC_HIGH, 0),
        (REG_QUEUE_DRIVER_LOW, (base + AVAIL_OFF) as u32),
        (REG_QUEUE_DRIVER_HIGH, 0),
        (REG_QUEUE_DEVICE_LOW, (base + USED_OFF) as u32),
        (REG_QUEUE_DEVICE_HIGH, 0),
        (REG_QUEUE_READY, 1),
    ]
}

enum Handler {
    Block(kvmini::devices::virtio::block::BlockHandler),
    Net(kvmini::devices::virtio::net::NetHandler),
    Console(kvmini::devices::virtio::console::ConsoleHandler),
}

impl Handler {
    fn run(&mut self) {
        match self {
            Self::Block(h) => {
                // No coalescing sleep: nothing is posted during it here.
                h.process_with(|_| {});
            }
            Self::Net(h) => {
                h.process_rx();
                h.process_tx();
            }
            Self::Console(h) => {
                h.process();
            }
        }
    }
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// What an input made of the device, for the harness's own tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The device ran (DRIVER_OK without DEVICE_NEEDS_RESET).
    pub running: bool,
    /// It interrupted the guest for used buffers.
    pub used_irq: bool,
    /// It asked for a reset.
    pub needs_reset: bool,
}

fn check_status(t: &mut MmioTransport, r: &mut Report) {
    let s = rd(t, REG_STATUS);
    r.running |= s & (STATUS_DRIVER_OK | STATUS_DEVICE_NEEDS_RESET) == STATUS_DRIVER_OK;
    r.needs_reset |= s & STATUS_DEVICE_NEEDS_RESET != 0;
    let core = s & !(STATUS_FAILED | STATUS_DEVICE_NEEDS_RESET);
    let a = STATUS_ACKNOWLEDGE;
    let ad = a | STATUS_DRIVER;
    let adf = ad | STATUS_FEATURES_OK;
    assert!(
        [0, a, ad, adf, adf | STATUS_DRIVER_OK].contains(&core),
        "status {s:#x} is not a valid sequence of steps"
    );
    let irq = rd(t, REG_INTERRUPT_STATUS);
    r.used_irq |= irq & VIRTIO_MMIO_INT_VRING != 0;
    assert_eq!(
        irq & !(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG),
        0,
        "InterruptStatus {irq:#x}"
    );
}

fn check_read(kind: usize, off: u64, data: &[u8]) {
    if off >= REG_CONFIG {
        let cfg = off - REG_CONFIG;
        for (i, &b) in data.iter().enumerate() {
            if cfg + i as u64 >= CONFIG_LEN[kind] {
                assert_eq!(
                    b,
                    0,
                    "config byte {:#x} past the config space",
                    cfg + i as u64
                );
            }
        }
        return;
    }
    if data.len() != 4 || off % 4 != 0 {
        assert!(
            data.iter().all(|&b| b == 0),
            "bad register read {off:#x}/{} returned data",
            data.len()
        );
        return;
    }
    let v = u32::from_le_bytes(data.try_into().expect("4 bytes"));
    let want = match off {
        REG_MAGIC => MMIO_MAGIC,
        REG_VERSION => MMIO_VERSION,
        REG_VENDOR_ID => VENDOR_ID,
        REG_DEVICE_ID => DEVICE_ID[kind],
        _ => return,
    };
    assert_eq!(v, want, "register {off:#x}");
}

fn make(
    kind: usize,
    mem: &GuestMemoryMmap,
    image: &std::path::Path,
) -> (MmioTransport, Handler, Option<Arc<FakeTap>>) {
    let (dev, handler, tap): (Box<dyn kvmini::devices::virtio::VirtioDevice>, Handler, _) =
        match kind {
            0 => {
                let b = Block::new(&BlockConfig {
                    path: image.into(),
                    readonly: false,
                    limit: Default::default(),
                })
                .expect("open the fuzz image");
                let h = Handler::Block(b.event_handler().expect("handler"));
                (Box::new(b), h, None)
            }
            1 => {
                let tap = Arc::new(FakeTap::new());
                let n = Net::with_backend("fuzz0".into(), MacAddr([2, 0, 0, 0, 0, 1]), tap.clone())
                    .expect("virtio-net device");
                let h = Handler::Net(n.event_handler().expect("handler"));
                (Box::new(n), h, Some(tap))
            }
            _ => {
                // Nothing drains it: output past its room is dropped.
                let out = Output::new("fuzz", 1 << 20).expect("console output");
                let c = Console::new(out).expect("virtio-console");
                let h = Handler::Console(c.event_handler().expect("handler"));
                (Box::new(c), h, None)
            }
        };
    let t = MmioTransport::new(dev, mem.clone()).expect("transport");
    (t, handler, tap)
}

pub fn run(data: &[u8]) {
    run_report(data);
}

/// [`run`], telling what happened.
pub fn run_report(data: &[u8]) -> Report {
    let mut report = Report::default();
    let mut inp = Input::new(data);
    let kind = usize::from(inp.u8() % 3);
    crate::block::with_image(|path, _, _| {
        guest::with_memory(|mem| {
            let (mut t, mut handler, tap) = make(kind, mem, path);
            while !inp.is_empty() {
                match inp.u8() % 8 {
                    0 => {
                        let off = u64::from(inp.u16() % 0x1000);
                        let mut buf = vec![0xeeu8; usize::from(inp.u8() % 9)];
                        t.read(off, &mut buf);
                        check_read(kind, off, &buf);
                    }
                    1 => {
                        let off = u64::from(inp.u16() % 0x1000);
                        let size = usize::from(inp.u8() % 9);
                        let bytes = inp.bytes(size).to_vec();
                        t.write(off, &bytes);
                    }
                    2 => {
                        let off = u64::from(inp.u8() % 64) * 4;
                        let v = inp.u32();
                        t.write(off, &v.to_le_bytes());
                        if off == REG_STATUS && v == 0 {
                            assert_eq!(rd(&mut t, REG_STATUS), 0, "status after reset");
                            assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0, "irq after reset");
                            assert_eq!(rd(&mut t, REG_QUEUE_READY), 0, "queue after reset");
                        }
                    }
                    3 => {
                        let off = u64::from(inp.u8() % 64) * 4;
                        let mut buf = [0u8; 4];
                        t.read(off, &mut buf);
                        check_read(kind, off, &buf);
                    }
                    4 => guest::apply_pokes(mem, &guest::parse_one_poke(&mut inp)),
                    5 => handler.run(),
                    6 => {
                        let len = usize::from(inp.u16());
                        let head = usize::from(inp.u8());
                        let head = inp.bytes(head);
                        if let Some(tap) = &tap {
                            tap.push_frame(len, head);
                        }
                    }
                    _ => {
                        let sel = u32::from(inp.u8() % 2);
                        let size = 1u32 << (inp.u8() % 9);
                        for (off, v) in queue_setup(sel, size) {
                            t.write(off, &v.to_le_bytes());
                        }
                    }
                }
                check_status(&mut t, &mut report);
            }
            // Stop the device as a guest reset would.
            t.write(REG_STATUS, &0u32.to_le_bytes());
            check_status(&mut t, &mut report);
        })
    });
    report
}

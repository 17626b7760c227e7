//! The `net` target: virtio-net's receive and transmit queues over a fake
//! TAP that hands out the input's frames and records what the guest sends.
//!
//! Input: `features u16` (bit i acks [`FEATURE_BITS`]`[i]`), the receive
//! queue then the transmit queue ([`QueueSpec`], up to 256 entries each),
//! pokes ([`guest::parse_pokes`]), then ops until the input ends, one byte
//! each (`% 8`): `0` a frame arrives from the TAP (`len u16`, its first
//! bytes from the input, then a pattern; up to 64 KiB + 16 bytes, longer
//! than any TAP frame) and the receive side runs, `1` the receive side
//! runs, `2` the transmit side runs, `3`/`4` publish one more receive/
//! transmit entry, `5` the TAP takes frames, `6` it would block, `7` it
//! fails. Both sides run once more at the end.
//!
//! Checks: the generic ones of [`guest`] on both queues; transmit entries
//! are returned with length 0; every frame sent to the TAP is 26 bytes to
//! 64 KiB + 26, carries a header the driver may send, and is exactly the
//! bytes of one transmit chain (when no receive buffer overlaps a transmit
//! buffer); frames delivered or dropped never outnumber those that came.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use kvmini::devices::virtio::net::device::*;
use kvmini::devices::virtio::net::frame::{check_tx_header, MAX_BUFFER_LEN, VNET_HDR_LEN};
use kvmini::devices::virtio::net::tap::FrameIo;
use kvmini::devices::virtio::net::{MacAddr, Net};
use kvmini::devices::virtio::{
    feature, Interrupt, VirtioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest::{self, Driver, Layout, QueueInfo, QueueSpec, Range, Report};
use crate::input::Input;

/// The features the input can ack, bit by bit (VERSION_1 always).
pub const FEATURE_BITS: [u32; 12] = [
    VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_STATUS,
];

const SEND_OK: u8 = 0;
const SEND_BLOCK: u8 = 1;
const SEND_FAIL: u8 = 2;

/// A TAP stand-in: frames to hand out, frames sent, how `send` behaves.
pub struct FakeTap {
    evt: EventFd,
    pub rx: Mutex<VecDeque<Vec<u8>>>,
    pub sent: Mutex<Vec<Vec<u8>>>,
    send_mode: AtomicU8,
}

impl FakeTap {
    pub fn new() -> Self {
        Self {
            evt: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            rx: Mutex::new(VecDeque::new()),
            sent: Mutex::new(Vec::new()),
            send_mode: AtomicU8::new(SEND_OK),
        }
    }

    /// Queues a frame of `len` bytes starting with `head`.
    pub fn push_frame(&self, len: usize, head: &[u8]) {
        let mut f: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ 0x42)
            .collect();
        let n = head.len().min(len);
        f[..n].copy_from_slice(&head[..n]);
        lock(&self.rx).push_back(f);
    }

    fn set_send_mode(&self, mode: u8) {
        self.send_mode.store(mode, Ordering::Relaxed);
    }
}

impl Default for FakeTap {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl FrameIo for FakeTap {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let f = lock(&self.rx)
            .pop_front()
            .ok_or(io::ErrorKind::WouldBlock)?;
        // A datagram read truncates what does not fit.
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }

    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        match self.send_mode.load(Ordering::Relaxed) {
            SEND_OK => {
                lock(&self.sent).push(frame.to_vec());
                Ok(frame.len())
            }
            SEND_BLOCK => Err(io::ErrorKind::WouldBlock.into()),
            _ => Err(io::Error::other("the fake TAP fails")),
        }
    }

    fn set_offload(&self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes `features u16` into the acked set.
pub fn acked_features(bits: u16, offered: u64) -> u64 {
    let mut acked = feature(VIRTIO_F_VERSION_1);
    for (i, &f) in FEATURE_BITS.iter().enumerate() {
        if bits & (1 << i) != 0 {
            acked |= feature(f);
        }
    }
    acked & offered
}

pub fn run(data: &[u8]) {
    run_report(data);
}

/// [`run`], telling what happened.
pub fn run_report(data: &[u8]) -> Report {
    let mut inp = Input::new(data);
    let bits = inp.u16();
    let mut rx_spec = QueueSpec::parse(&mut inp, 0, QUEUE_SIZE);
    let mut tx_spec = QueueSpec::parse(&mut inp, 1, QUEUE_SIZE);
    let pokes = guest::parse_pokes(&mut inp);

    guest::with_memory(|mem| {
        guest::apply_pokes(mem, &pokes);
        let tap = Arc::new(FakeTap::new());
        let mut net = Net::with_backend("fuzz0".into(), MacAddr([2, 0, 0, 0, 0, 1]), tap.clone())
            .expect("virtio-net device");
        let mut handler = net.event_handler().expect("net event handler");
        let acked = acked_features(bits, net.avail_features());
        let event_idx = acked & feature(VIRTIO_F_RING_EVENT_IDX) != 0;
        rx_spec.event_idx = event_idx;
        tx_spec.event_idx = event_idx;

        let rxq = rx_spec.install(mem);
        let txq = tx_spec.install(mem);
        let mut rx_driver = Driver::new(&rx_spec);
        let mut tx_driver = Driver::new(&tx_spec);
        let rx = QueueInfo::new(mem, rx_spec, &rxq);
        let tx = QueueInfo::new(mem, tx_spec, &txq);
        // What each transmit chain would send, and whether anything could
        // change those bytes first: receive buffers, rings.
        let tx_frames: Vec<Vec<u8>> = tx
            .chains
            .values()
            .filter_map(|c| c.read_all(mem, MAX_BUFFER_LEN))
            .collect();
        let changing: Vec<Range> = rx
            .writable()
            .chain([
                rx.used_ring(),
                tx.used_ring(),
                rx.avail_ring(),
                tx.avail_ring(),
            ])
            .collect();
        let tx_exact = !tx
            .chains
            .values()
            .flat_map(|c| c.readable())
            .any(|r| changing.iter().any(|c| r.overlaps(c)));
        let layout = Layout::new(mem, vec![rx, tx]);
        let irq = Arc::new(Interrupt::new().expect("eventfd"));
        net.activate(mem.clone(), acked, vec![rxq, txq], irq)
            .expect("activate virtio-net");

        let mut frames = 0u64;
        while !inp.is_empty() {
            match inp.u8() % 8 {
                0 => {
                    let len = usize::from(inp.u16()) % (MAX_BUFFER_LEN + 17);
                    let head_len = usize::from(inp.u8());
                    tap.push_frame(len, inp.bytes(head_len));
                    frames += 1;
                    handler.process_rx();
                }
                1 => handler.process_rx(),
                2 => handler.process_tx(),
                3 => rx_driver.publish(mem, 1),
                4 => tx_driver.publish(mem, 1),
                5 => tap.set_send_mode(SEND_OK),
                6 => tap.set_send_mode(SEND_BLOCK),
                _ => tap.set_send_mode(SEND_FAIL),
            }
        }
        handler.process_rx();
        handler.process_tx();

        layout.check(mem, true);
        layout.check_offered(mem, 0, &rx_driver);
        layout.check_offered(mem, 1, &tx_driver);
        if layout.strict {
            let (_, used) = layout.queues[1].used_entries(mem);
            for (id, len) in used {
                assert_eq!(len, 0, "transmit head {id} returned with length {len}");
            }
        }
        for f in lock(&tap.sent).iter() {
            assert!(
                f.len() >= 26 && f.len() <= MAX_BUFFER_LEN,
                "sent a frame of {} bytes",
                f.len()
            );
            let hdr: [u8; VNET_HDR_LEN] = f[..VNET_HDR_LEN].try_into().expect("checked length");
            assert!(
                check_tx_header(&hdr, acked).is_ok(),
                "sent a header the driver may not send: {hdr:02x?}"
            );
            if layout.strict && tx_exact {
                assert!(
                    tx_frames.iter().any(|t| t == f),
                    "sent a {}-byte frame that is no transmit chain's bytes",
                    f.len()
                );
            }
        }
        if let Some(s) = handler.stats() {
            assert!(
                s.rx_frames + s.rx_dropped <= frames,
                "{} frames delivered and {} dropped of {frames}",
                s.rx_frames,
                s.rx_dropped
            );
            assert_eq!(s.tx_frames, lock(&tap.sent).len() as u64);
        }
        net.reset();
        let sent = lock(&tap.sent).len() as u64;
        layout.report(mem, sent)
    })
}

//! virtio-net tests: queues built by hand with virtio-queue's mocks in a
//! GuestMemoryMmap, and a Unix datagram socketpair in place of the TAP (it
//! keeps frame boundaries, and its far end plays the host). No /dev/kvm,
//! no privileges.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventSet, SubscriberOps};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::*;
use super::frame::*;
use super::mac::MacAddr;
use super::tap::FrameIo;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::mmio::{self, MmioTransport};
use crate::devices::virtio::{
    feature, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use crate::testutil::desc_chain as chain;

const MEM_SIZE: usize = 0x100_0000;
const RXQ: u64 = 0;
const TXQ: u64 = 0x8000;
const BUF: u64 = 0x10_0000;
/// Queue size of the tests' mock queues.
const QS: u16 = 64;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/// The socketpair end the device uses, recording offload settings.
struct SockIo {
    sock: UnixDatagram,
    offload: Mutex<Vec<u32>>,
}

impl AsRawFd for SockIo {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl FrameIo for SockIo {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf)
    }
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.sock.send(frame)
    }
    fn set_offload(&self, flags: u32) -> io::Result<()> {
        self.offload.lock().unwrap().push(flags);
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

// A descriptor: (guest address, length, device-writable).
use crate::testutil::Desc as D;

/// An Ethernet frame with its (transmit or receive) header: `len` bytes
/// of frame after the header, a recognisable pattern.
fn frame_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed));
    f
}

struct Env<'a> {
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    net: Net,
    handler: NetHandler,
    irq: Arc<Interrupt>,
    io: Arc<SockIo>,
    /// The host's end.
    peer: UnixDatagram,
    rx_next: u16,
    tx_next: u16,
    /// Next free guest buffer address.
    next_buf: u64,
}

impl<'a> Env<'a> {
    /// A device that is not active yet.
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let io = Arc::new(SockIo {
            sock: a,
            offload: Mutex::new(Vec::new()),
        });
        let net = Net::with_backend("test0".into(), MacAddr(MAC), io.clone()).unwrap();
        let handler = net.event_handler().unwrap();
        Self {
            mem,
            rxq: MockSplitQueue::create(mem, GuestAddress(RXQ), QS),
            txq: MockSplitQueue::create(mem, GuestAddress(TXQ), QS),
            net,
            handler,
            irq: Arc::new(Interrupt::new().unwrap()),
            io,
            peer: b,
            rx_next: 0,
            tx_next: 0,
            next_buf: BUF,
        }
    }

    fn activate(&mut self, features: u64) {
        let queue = |vq: &MockSplitQueue<GuestMemoryMmap>| {
            let mut q: Queue = vq.create_queue().unwrap();
            q.set_event_idx(features & feature(VIRTIO_F_RING_EVENT_IDX) != 0);
            q
        };
        let queues = vec![queue(&self.rxq), queue(&self.txq)];
        self.net
            .activate(self.mem.clone(), features, queues, self.irq.clone())
            .unwrap();
        // Activation kicks both queues once; consume that.
        for evt in self.net.queue_events() {
            evt.read().unwrap();
        }
    }

    /// Not active yet, each direction limited to `bw` bytes per second.
    fn with_bandwidth(mem: &'a GuestMemoryMmap, bw: u64) -> Self {
        let mut env = Self::new(mem);
        env.net.set_bandwidth(Some(bw));
        env.handler = env.net.event_handler().unwrap();
        env
    }

    /// Active with `features` (VERSION_1 always).
    fn active(mem: &'a GuestMemoryMmap, features: u64) -> Self {
        let mut env = Self::new(mem);
        env.activate(feature(VIRTIO_F_VERSION_1) | features);
        env
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(0x1000);
        a
    }

    /// Offers one receive chain of writable buffers of `lens` bytes;
    /// returns their addresses.
    fn add_rx(&mut self, lens: &[u32]) -> Vec<u64> {
        let descs: Vec<D> = lens.iter().map(|&l| (self.alloc(l), l, true)).collect();
        self.add_rx_raw(&descs);
        descs.iter().map(|d| d.0).collect()
    }

    fn add_rx_raw(&mut self, descs: &[D]) {
        self.rxq
            .add_desc_chains(&chain(self.rx_next, descs), self.rx_next)
            .unwrap();
        self.rx_next += descs.len() as u16;
    }

    /// Puts `frame` in guest memory as a transmit chain split in pieces of
    /// `split` bytes.
    fn add_tx(&mut self, frame: &[u8], split: usize) {
        let descs: Vec<D> = frame
            .chunks(split)
            .map(|c| {
                let a = self.alloc(c.len() as u32);
                self.mem.write_slice(c, GuestAddress(a)).unwrap();
                (a, c.len() as u32, false)
            })
            .collect();
        self.add_tx_raw(&descs);
    }

    fn add_tx_raw(&mut self, descs: &[D]) {
        self.txq
            .add_desc_chains(&chain(self.tx_next, descs), self.tx_next)
            .unwrap();
        self.tx_next += descs.len() as u16;
    }

    fn rx_used(&self) -> Vec<(u32, u32)> {
        used(&self.rxq)
    }

    fn tx_used(&self) -> Vec<(u32, u32)> {
        used(&self.txq)
    }

    fn stats(&self) -> NetStats {
        self.handler.stats().unwrap()
    }

    fn host_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_BUFFER_LEN + 100];
        match self.peer.recv(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// The used ring: (head id, length) per entry.
fn used(vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let u = vq.used();
    (0..u.idx().load())
        .map(|i| {
            let e = u.ring().ref_at(usize::from(i % QS)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn num_buffers(hdr: &[u8]) -> u16 {
    u16::from_le_bytes([hdr[10], hdr[11]])
}

// ---- frames and headers ----

#[test]
fn offload_flags_follow_the_guest_features() {
    let f = |bits: &[u32]| tap_offload_flags(bits.iter().map(|&b| feature(b)).sum());
    assert_eq!(f(&[]), 0);
    // No checksum offload: no segmentation offload either.
    assert_eq!(f(&[VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6]), 0);
    assert_eq!(f(&[VIRTIO_NET_F_GUEST_CSUM]), libc::TUN_F_CSUM);
    assert_eq!(
        f(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4]),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4
    );
    assert_eq!(
        f(&[
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN
        ]),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
    );
    // ECN alone means nothing.
    assert_eq!(
        f(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN]),
        libc::TUN_F_CSUM
    );
    // The host-side (transmit) features do not touch the TAP's offloads.
    assert_eq!(f(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4]), 0);
}

#[test]
fn transmit_headers_only_use_negotiated_offloads() {
    let hdr = |flags: u8, gso: u8| {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        h
    };
    let all: u64 = [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
    ]
    .iter()
    .map(|&b| feature(b))
    .sum();
    let csum = feature(VIRTIO_NET_F_CSUM);
    let n = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    assert_eq!(check_tx_header(&hdr(0, 0), 0), Ok(()));
    assert_eq!(check_tx_header(&hdr(n, 0), csum), Ok(()));
    assert_eq!(
        check_tx_header(&hdr(n, 0), 0),
        Err(HeaderError::Flags(n)),
        "checksum offload not negotiated"
    );
    assert_eq!(check_tx_header(&hdr(4, 0), all), Err(HeaderError::Flags(4)));
    assert_eq!(
        check_tx_header(&hdr(n, VIRTIO_NET_HDR_GSO_TCPV4), all),
        Ok(())
    );
    assert_eq!(
        check_tx_header(&hdr(n, VIRTIO_NET_HDR_GSO_TCPV6), all),
        Ok(())
    );
    assert_eq!(
        check_tx_header(
            &hdr(n, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN),
            all
        ),
        Ok(())
    );
    assert_eq!(
        check_tx_header(&hdr(n, VIRTIO_NET_HDR_GSO_TCPV4), csum),
        Err(HeaderError::Gso(VIRTIO_NET_HDR_GSO_TCPV4))
    );
    let no_ecn = all & !feature(VIRTIO_NET_F_HOST_ECN);
    assert!(check_tx_header(
        &hdr(n, VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN),
        no_ecn
    )
    .is_err());
    for gso in [VIRTIO_NET_HDR_GSO_UDP, 2, 5, 0x7f, VIRTIO_NET_HDR_GSO_ECN] {
        assert_eq!(
            check_tx_header(&hdr(n, gso), all),
            Err(HeaderError::Gso(gso)),
            "gso {gso:#x}"
        );
    }
}

/// Runs read_tx_chain on one chain built from `descs` (at descriptor 0).
fn parse_tx(
    mem: &GuestMemoryMmap,
    raw: &[RawDescriptor],
    acked: u64,
) -> Result<Vec<u8>, ChainError> {
    let vq = MockSplitQueue::new(mem, QS);
    vq.add_desc_chains(raw, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let c = virtio_queue::QueueOwnedT::iter(&mut q, mem)
        .unwrap()
        .next()
        .unwrap();
    let mut buf = vec![0u8; MAX_BUFFER_LEN];
    read_tx_chain(c, &mut buf, acked).map(|n| buf[..n].to_vec())
}

#[test]
fn transmit_chains_are_gathered_and_checked() {
    let mem = memory();
    let f = frame_bytes(100, 1);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    // Header and frame in one descriptor, or in three.
    assert_eq!(
        parse_tx(&mem, &chain(0, &[(BUF, 112, false)]), 0).unwrap(),
        f
    );
    let split = chain(
        0,
        &[
            (BUF, 12, false),
            (BUF + 12, 50, false),
            (BUF + 62, 50, false),
        ],
    );
    assert_eq!(parse_tx(&mem, &split, 0).unwrap(), f);
    // Device-writable descriptor in a transmit chain.
    let wrong = chain(0, &[(BUF, 12, false), (BUF + 12, 100, true)]);
    assert_eq!(parse_tx(&mem, &wrong, 0), Err(ChainError::WrongDirection));
    // No room for an Ethernet header.
    assert_eq!(
        parse_tx(&mem, &chain(0, &[(BUF, 12 + 13, false)]), 0),
        Err(ChainError::TooShort(25))
    );
    // Larger than any frame.
    let big = chain(0, &[(BUF, 40_000, false), (BUF, 40_000, false)]);
    assert_eq!(parse_tx(&mem, &big, 0), Err(ChainError::TooLarge(80_000)));
    // Outside guest memory.
    let out = chain(0, &[(MEM_SIZE as u64 - 50, 100, false)]);
    assert!(matches!(
        parse_tx(&mem, &out, 0),
        Err(ChainError::OutOfMemory(..))
    ));
    // A loop: 0 -> 1 -> 0.
    let looped = [
        RawDescriptor::from(SplitDescriptor::new(BUF, 60, VRING_DESC_F_NEXT, 1)),
        RawDescriptor::from(SplitDescriptor::new(BUF, 60, VRING_DESC_F_NEXT, 0)),
    ];
    assert_eq!(parse_tx(&mem, &looped, 0), Err(ChainError::Truncated));
    // A next link out of the table.
    let dangling = [RawDescriptor::from(SplitDescriptor::new(
        BUF,
        60,
        VRING_DESC_F_NEXT,
        QS + 5,
    ))];
    assert_eq!(parse_tx(&mem, &dangling, 0), Err(ChainError::Truncated));
    // A header asking for segmentation offload that was not negotiated.
    mem.write_slice(
        &[VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4],
        GuestAddress(BUF),
    )
    .unwrap();
    assert_eq!(
        parse_tx(
            &mem,
            &chain(0, &[(BUF, 112, false)]),
            feature(VIRTIO_NET_F_CSUM)
        ),
        Err(ChainError::Header(HeaderError::Gso(
            VIRTIO_NET_HDR_GSO_TCPV4
        )))
    );
}

// ---- the device ----

#[test]
fn config_space_and_features() {
    let mem = memory();
    let env = Env::new(&mem);
    let mut c = [0u8; 10];
    env.net.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(&c[8..], &[0, 0], "beyond the config space reads as zero");
    let mut b = [0u8; 2];
    env.net.read_config(4, &mut b);
    assert_eq!(b, [0x34, 0x56]);
    let f = env.net.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO4,
    ] {
        assert_ne!(f & feature(bit), 0, "feature {bit} offered");
    }
    assert_eq!(env.net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);

    let mut t = MmioTransport::new(Box::new(env.net), mem.clone()).unwrap();
    let mut w = [0u8; 4];
    t.read(mmio::REG_DEVICE_ID, &mut w);
    assert_eq!(u32::from_le_bytes(w), 1);
    t.read(mmio::REG_CONFIG + 2, &mut w);
    assert_eq!(w, [0, 0x12, 0x34, 0x56]);
    assert_eq!(t.ioeventfds(GuestAddress(0xd000_0000)).len(), 2);
}

#[test]
fn activation_negotiates_tap_offloads() {
    let mem = memory();
    let mut env = Env::new(&mem);
    let q = || Queue::new(QS).unwrap();
    assert!(matches!(
        env.net.activate(mem.clone(), 0, vec![q()], env.irq.clone()),
        Err(ActivateError::QueueCount {
            expected: 2,
            got: 1
        })
    ));
    let guest = feature(VIRTIO_NET_F_GUEST_CSUM) | feature(VIRTIO_NET_F_GUEST_TSO6);
    env.activate(feature(VIRTIO_F_VERSION_1) | guest);
    assert!(matches!(
        env.net
            .activate(mem.clone(), 0, vec![q(), q()], env.irq.clone()),
        Err(ActivateError::AlreadyActive)
    ));
    env.net.reset();
    assert!(env.handler.stats().is_none());
    // Features the device did not offer are ignored.
    env.activate(feature(VIRTIO_NET_F_GUEST_CSUM) | feature(VIRTIO_NET_F_GUEST_TSO4) | 1 << 60);
    assert_eq!(
        *env.io.offload.lock().unwrap(),
        [
            libc::TUN_F_CSUM | libc::TUN_F_TSO6,
            0,
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        ]
    );
}

#[test]
fn transmit_reaches_the_host() {
    let mem = memory();
    let mut env = Env::active(&mem, 0);
    let a = frame_bytes(60, 1);
    let b = frame_bytes(1500, 2);
    env.add_tx(&a, 4096);
    env.add_tx(&b, 700);
    env.handler.process_tx();
    assert_eq!(env.host_recv().unwrap(), a);
    assert_eq!(env.host_recv().unwrap(), b);
    assert_eq!(env.host_recv(), None);
    // Both chains completed, nothing written into them.
    assert_eq!(env.tx_used(), [(0, 0), (1, 0)]);
    assert_eq!(env.irq.eventfd().read().unwrap(), 1);
    let s = env.stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (2, 1560));
}

#[test]
fn bad_transmit_chains_are_dropped_and_counted() {
    let mem = memory();
    let mut env = Env::active(&mem, 0);
    let good = frame_bytes(100, 3);
    // Writable descriptor; too short; too large; outside memory; a loop;
    // a header with an offload not negotiated; then a good frame.
    let d = env.alloc(0x2_0000);
    env.add_tx_raw(&[(d, 12, false), (d, 100, true)]);
    env.add_tx_raw(&[(d, 20, false)]);
    env.add_tx_raw(&[(d, 65_000, false), (d, 65_000, false)]);
    env.add_tx_raw(&[(MEM_SIZE as u64, 100, false)]);
    let at = env.tx_next;
    env.txq
        .add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(d, 60, VRING_DESC_F_NEXT, at + 1)),
                RawDescriptor::from(SplitDescriptor::new(d, 60, VRING_DESC_F_NEXT, at)),
            ],
            at,
        )
        .unwrap();
    env.tx_next += 2;
    let mut gso = frame_bytes(100, 4);
    gso[1] = VIRTIO_NET_HDR_GSO_TCPV4;
    env.add_tx(&gso, 4096);
    env.add_tx(&good, 4096);
    env.handler.process_tx();
    assert_eq!(env.host_recv().unwrap(), good);
    assert_eq!(env.host_recv(), None);
    assert_eq!(env.tx_used().len(), 7, "every chain is returned");
    let s = env.stats();
    assert_eq!(s.tx_frames, 1);
    assert_eq!(s.tx_too_large, 1);
    assert_eq!(s.tx_bad_chains, 5);
}

#[test]
fn transmit_waits_for_the_tap_to_take_more() {
    let mem = memory();
    let mut env = Env::active(&mem, 0);
    // Fill the "TAP" until it would block.
    let filler = frame_bytes(1000, 0);
    let mut queued = 0;
    while env.io.sock.send(&filler).is_ok() {
        queued += 1;
    }
    assert!(queued > 0);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame_bytes(200, 10 + i)).collect();
    for f in &frames {
        env.add_tx(f, 4096);
    }
    env.handler.process_tx();
    // The first frame was taken off the queue and is held; the others wait
    // in the queue; the TAP is now polled for writability.
    assert_eq!(env.tx_used().len(), 1);
    let mut events = EventManager::<NetHandler>::new().unwrap();
    let id = events.add_subscriber(env.net.event_handler().unwrap());
    // A kick while the TAP is full changes nothing and does not spin.
    env.net.queue_events()[TX_QUEUE].write(1).unwrap();
    assert_eq!(events.run_with_timeout(0).unwrap(), 1);
    assert_eq!(events.run_with_timeout(0).unwrap(), 0);
    assert_eq!(env.tx_used().len(), 1);
    assert_eq!(
        events.subscriber_mut(id).unwrap().tap_interest(),
        Some(EventSet::OUT | EventSet::IN)
    );
    // The host drains the TAP: writability resumes the queue.
    for _ in 0..queued {
        assert_eq!(env.host_recv().unwrap(), filler);
    }
    assert_eq!(events.run_with_timeout(100).unwrap(), 1);
    for f in &frames {
        assert_eq!(env.host_recv().as_ref(), Some(f));
    }
    assert_eq!(env.tx_used().len(), 3);
    assert_eq!(env.stats().tx_frames, 3);
    assert_eq!(
        events.subscriber_mut(id).unwrap().tap_interest(),
        Some(EventSet::IN)
    );
}

#[test]
fn receive_into_one_buffer() {
    let mem = memory();
    let mut env = Env::active(&mem, 0);
    let addrs = env.add_rx(&[1526]);
    let mut f = frame_bytes(1000, 5);
    f[0] = 2; // DATA_VALID from the host: passed through
    env.peer.send(&f).unwrap();
    env.handler.process_rx();
    assert_eq!(env.rx_used(), [(0, f.len() as u32)]);
    let got = env.read(addrs[0], f.len());
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(got[0], 2);
    assert_eq!(got[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
    assert_eq!(env.irq.eventfd().read().unwrap(), 1);
    let s = env.stats();
    assert_eq!((s.rx_frames, s.rx_bytes), (1, 1000));
}

#[test]
fn receive_spans_mergeable_buffers() {
    let mem = memory();
    let mut env = Env::active(&mem, feature(VIRTIO_NET_F_MRG_RXBUF));
    let a = env.add_rx(&[1000]);
    let b = env.add_rx(&[1000]);
    let c = env.add_rx(&[1000]);
    let f = frame_bytes(2500, 6);
    env.peer.send(&f).unwrap();
    env.handler.process_rx();
    // 2512 bytes: 1000 + 1000 + 512, one used entry per buffer, in order.
    assert_eq!(env.rx_used(), [(0, 1000), (1, 1000), (2, 512)]);
    let mut got = env.read(a[0], 1000);
    got.extend(env.read(b[0], 1000));
    got.extend(env.read(c[0], 512));
    assert_eq!(num_buffers(&got), 3);
    assert_eq!(got[VNET_HDR_LEN..], f[VNET_HDR_LEN..]);
}

#[test]
fn receive_waits_for_guest_buffers_without_spinning() {
    let mem = memory();
    let mut env = Env::active(&mem, feature(VIRTIO_NET_F_MRG_RXBUF));
    let mut events = EventManager::<NetHandler>::new().unwrap();
    let id = events.add_subscriber(env.net.event_handler().unwrap());
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame_bytes(1400, 20 + i)).collect();
    for f in &frames {
        env.peer.send(f).unwrap();
    }
    // One buffer too few for the first frame: it is taken, kept, and the
    // TAP is no longer polled for input.
    env.add_rx(&[1000]);
    env.net.queue_events()[RX_QUEUE].write(1).unwrap();
    assert_eq!(events.run_with_timeout(0).unwrap(), 1);
    assert_eq!(
        events.subscriber_mut(id).unwrap().tap_interest(),
        Some(EventSet::empty())
    );
    // The TAP is readable, yet the loop has nothing to do: no busy loop.
    for _ in 0..3 {
        assert_eq!(events.run_with_timeout(0).unwrap(), 0);
    }
    assert!(env.rx_used().is_empty());
    assert_eq!(env.stats().rx_frames, 0);
    // The guest refills its ring and kicks: everything arrives, in order.
    for _ in 0..5 {
        env.add_rx(&[1000]);
    }
    env.net.queue_events()[RX_QUEUE].write(1).unwrap();
    assert_eq!(events.run_with_timeout(0).unwrap(), 1);
    let used = env.rx_used();
    assert_eq!(used.len(), 6);
    assert_eq!(env.stats().rx_frames, 3);
    assert_eq!(env.stats().rx_dropped, 0);
    let first = env.read(BUF, 1000);
    assert_eq!(num_buffers(&first), 2);
    assert_eq!(first[VNET_HDR_LEN..], frames[0][VNET_HDR_LEN..1000]);
    assert_eq!(
        events.subscriber_mut(id).unwrap().tap_interest(),
        Some(EventSet::IN)
    );
}

#[test]
fn receive_kick_is_requested_when_out_of_buffers() {
    // With EVENT_IDX the driver kicks only past avail_event: the device must
    // point it past the buffers it already saw, or the kick never comes.
    let mem = memory();
    let mut env = Env::active(
        &mem,
        feature(VIRTIO_NET_F_MRG_RXBUF) | feature(VIRTIO_F_RING_EVENT_IDX),
    );
    env.add_rx(&[500]);
    env.add_rx(&[500]);
    env.peer.send(&frame_bytes(1400, 1)).unwrap();
    env.handler.process_rx();
    assert!(env.rx_used().is_empty());
    // avail_event lives right after the used ring.
    let avail_event_addr = env.rxq.used_addr().0 + 4 + 8 * u64::from(QS);
    let avail_event = mem.read_obj::<u16>(GuestAddress(avail_event_addr)).unwrap();
    assert_eq!(avail_event, 2, "kick requested for the third buffer");
    env.add_rx(&[500]);
    env.handler.process_rx();
    assert_eq!(env.rx_used().len(), 3);
}

#[test]
fn bad_receive_chains_are_returned_and_counted() {
    let mem = memory();
    let mut env = Env::active(&mem, feature(VIRTIO_NET_F_MRG_RXBUF));
    let d = env.alloc(0x1000);
    // A device-readable buffer, then one outside guest memory, then one
    // smaller than the header, then a loop, then a good one.
    env.add_rx_raw(&[(d, 2000, false)]);
    env.add_rx_raw(&[(MEM_SIZE as u64 - 8, 2000, true)]);
    env.add_rx_raw(&[(d, 8, true)]);
    let at = env.rx_next;
    env.rxq
        .add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(
                    d,
                    100,
                    VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                    at + 1,
                )),
                RawDescriptor::from(SplitDescriptor::new(
                    d,
                    100,
                    VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                    at,
                )),
            ],
            at,
        )
        .unwrap();
    env.rx_next += 2;
    let good = env.add_rx(&[2000]);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame_bytes(100, 30 + i)).collect();
    for f in &frames {
        env.peer.send(f).unwrap();
    }
    env.handler.process_rx();
    let used = env.rx_used();
    assert_eq!(used.len(), 5);
    assert!(used[..4].iter().all(|&(_, len)| len == 0));
    assert_eq!(used[4].1, 112);
    // Each bad chain cost one frame; the fifth frame got the good buffer.
    assert_eq!(env.read(good[0] + 12, 100), frames[4][12..]);
    let s = env.stats();
    assert_eq!((s.rx_bad_chains, s.rx_dropped, s.rx_frames), (4, 4, 1));
}

#[test]
fn oversized_frames_do_not_block_the_queue() {
    let mem = memory();
    // Without mergeable buffers a frame must fit one chain: one that does
    // not is dropped, and the buffer serves the next frame.
    let mut env = Env::active(&mem, 0);
    let buf = env.add_rx(&[1526]);
    env.peer.send(&frame_bytes(4000, 1)).unwrap();
    let small = frame_bytes(100, 2);
    env.peer.send(&small).unwrap();
    env.handler.process_rx();
    assert_eq!(env.rx_used(), [(0, 112)]);
    assert_eq!(env.read(buf[0] + 12, 100), small[12..]);
    assert_eq!(env.stats().rx_dropped, 1);

    // With mergeable buffers, a whole ring too small is the same. (Laid
    // out by hand: the mock's avail and used rings overlap past half full.)
    let mem = memory();
    let mut env = Env::new(&mem);
    let size: u16 = 8;
    let (desc, avail, used) = (0x2_0000u64, 0x2_1000u64, 0x2_2000u64);
    for i in 0..size {
        let d = SplitDescriptor::new(BUF + u64::from(i) * 0x1000, 16, VRING_DESC_F_WRITE, 0);
        mem.write_obj(
            RawDescriptor::from(d),
            GuestAddress(desc + 16 * u64::from(i)),
        )
        .unwrap();
        mem.write_obj(i, GuestAddress(avail + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(size, GuestAddress(avail + 2)).unwrap();
    let mut rx = Queue::new(size).unwrap();
    rx.set_desc_table_address(Some(desc as u32), Some(0));
    rx.set_avail_ring_address(Some(avail as u32), Some(0));
    rx.set_used_ring_address(Some(used as u32), Some(0));
    rx.set_ready(true);
    let tx = env.txq.create_queue().unwrap();
    let mut net = env.net;
    net.activate(
        mem.clone(),
        feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MRG_RXBUF),
        vec![rx, tx],
        env.irq.clone(),
    )
    .unwrap();
    env.peer.send(&frame_bytes(2000, 1)).unwrap();
    env.handler.process_rx();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 0);
    assert_eq!(env.handler.stats().unwrap().rx_dropped, 1);
    // The next frame that fits gets the buffers.
    env.peer.send(&frame_bytes(50, 2)).unwrap();
    env.handler.process_rx();
    // 62 bytes in 16-byte buffers.
    assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 4);
    assert_eq!(env.handler.stats().unwrap().rx_frames, 1);
}

#[test]
fn runt_frames_from_the_host_are_dropped() {
    let mem = memory();
    let mut env = Env::active(&mem, 0);
    env.add_rx(&[1526]);
    env.peer.send(&[0u8; VNET_HDR_LEN + 5]).unwrap();
    env.handler.process_rx();
    assert!(
        env.rx_used().is_empty(),
        "{:?} {:?}",
        env.rx_used(),
        env.stats()
    );
    assert_eq!(env.stats().rx_dropped, 1);
}

#[test]
fn corrupt_queue_needs_reset_not_a_crash() {
    let mem = memory();
    let mut env = Env::active(&mem, 0);
    // The driver claims far more available chains than the queue holds.
    env.txq.avail().idx().store(QS + 10);
    env.handler.process_tx();
    assert!(env.irq.needs_reset());
    // Nothing more happens until a reset.
    env.add_rx(&[1526]);
    env.peer.send(&frame_bytes(100, 1)).unwrap();
    env.handler.process_rx();
    assert!(env.rx_used().is_empty());
    env.net.reset();
    assert!(env.handler.stats().is_none());
}

#[test]
fn inactive_device_leaves_the_tap_alone() {
    let mem = memory();
    let env = Env::new(&mem);
    let mut events = EventManager::<NetHandler>::new().unwrap();
    let id = events.add_subscriber(env.net.event_handler().unwrap());
    env.peer.send(&frame_bytes(100, 1)).unwrap();
    env.net.queue_events()[RX_QUEUE].write(1).unwrap();
    assert_eq!(events.run_with_timeout(0).unwrap(), 1);
    assert_eq!(events.run_with_timeout(0).unwrap(), 0);
    assert_eq!(
        events.subscriber_mut(id).unwrap().tap_interest(),
        Some(EventSet::empty())
    );
    // The frame is still there for when the driver comes.
    assert!(env.io.sock.recv(&mut [0u8; 200]).is_ok());
}

/// A backend that claims a frame longer than the buffer, as TUN does when
/// a frame does not fit, then one normal frame.
struct TruncatingIo {
    sock: UnixDatagram,
    calls: Mutex<u32>,
}

impl AsRawFd for TruncatingIo {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl FrameIo for TruncatingIo {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        match *calls {
            1 => {
                buf.fill(0x5a);
                Ok(buf.len() + 100)
            }
            2 => {
                let f = frame_bytes(100, 9);
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        Ok(frame.len())
    }
    fn set_offload(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_frame_cut_short_by_the_tap_is_dropped_not_delivered() {
    let mem = memory();
    let (a, _b) = UnixDatagram::pair().unwrap();
    let io = Arc::new(TruncatingIo {
        sock: a,
        calls: Mutex::new(0),
    });
    let mut net = Net::with_backend("trunc0".into(), MacAddr(MAC), io).unwrap();
    let mut handler = net.event_handler().unwrap();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QS);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QS);
    rxq.add_desc_chains(&chain(0, &[(BUF, 0x2_0000, true)]), 0)
        .unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    let queues = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    net.activate(
        mem.clone(),
        feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MRG_RXBUF),
        queues,
        irq,
    )
    .unwrap();
    handler.process_rx();
    // Only the whole frame reached the guest.
    assert_eq!(used(&rxq), [(0, 112)]);
    let mut got = vec![0u8; 100];
    mem.read_slice(&mut got, GuestAddress(BUF + 12)).unwrap();
    assert_eq!(got, frame_bytes(100, 9)[12..]);
    let s = handler.stats().unwrap();
    assert_eq!((s.rx_frames, s.rx_dropped), (1, 1));
}

#[test]
fn bandwidth_limit_holds_frames_back_in_both_directions() {
    use std::time::Duration;
    let mem = memory();
    // 2000 bytes per second: one 1500-byte frame now, the next only once
    // the bucket has refilled (0.5 s later).
    let mut env = Env::with_bandwidth(&mem, 2000);
    env.activate(feature(VIRTIO_F_VERSION_1));
    env.add_tx(&frame_bytes(1500, 1), 4096);
    env.add_tx(&frame_bytes(1500, 2), 4096);
    env.handler.process_tx();
    assert_eq!(env.stats().tx_frames, 1);
    assert_eq!(env.tx_used().len(), 1, "the second chain waits in the ring");
    env.handler.process_tx();
    assert_eq!(env.stats().tx_frames, 1, "still throttled");
    env.add_rx(&[1526]);
    env.add_rx(&[1526]);
    env.peer.send(&frame_bytes(1500, 3)).unwrap();
    env.peer.send(&frame_bytes(1500, 4)).unwrap();
    env.handler.process_rx();
    assert_eq!(env.stats().rx_frames, 1, "the second frame is held back");
    std::thread::sleep(Duration::from_millis(800));
    env.handler.process_tx();
    env.handler.process_rx();
    let s = env.stats();
    assert_eq!((s.tx_frames, s.rx_frames), (2, 2));
    assert_eq!(env.host_recv().unwrap(), frame_bytes(1500, 1));
    assert_eq!(env.host_recv().unwrap(), frame_bytes(1500, 2));
}

/// The passt backend behind the real device: of the offloads only
/// GUEST_CSUM offered (its frames' checksums are right: marked DATA_VALID
/// once taken), frames framed on the stream both ways, and a frame the
/// stream took only in part finished from the event loop once the stream
/// is writable again.
#[test]
fn user_mode_backend_through_the_device() {
    use super::passt::Passt;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    let mem = memory();
    let (ours, mut peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let io = Arc::new(Passt::over(ours, None));
    let mut net = Net::with_backend("user".into(), MacAddr(MAC), io.clone()).unwrap();
    let f = net.avail_features();
    for bit in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
    ] {
        assert_eq!(
            f & feature(bit),
            0,
            "offload {bit} offered without a vnet header"
        );
    }
    assert_ne!(f & feature(VIRTIO_NET_F_MRG_RXBUF), 0);
    assert_ne!(f & feature(VIRTIO_NET_F_GUEST_CSUM), 0);

    let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QS);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QS);
    let irq = Arc::new(Interrupt::new().unwrap());
    let queues = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    let acked = feature(VIRTIO_F_VERSION_1)
        | feature(VIRTIO_NET_F_MRG_RXBUF)
        | feature(VIRTIO_NET_F_GUEST_CSUM);
    net.activate(mem.clone(), acked, queues, irq.clone())
        .unwrap();
    let mut events = EventManager::<NetHandler>::new().unwrap();
    let id = events.add_subscriber(net.event_handler().unwrap());
    while events.run_with_timeout(0).unwrap() > 0 {}

    // Receive: a framed frame from passt lands with an all-zero header.
    let payload = frame_bytes(300, 3)[VNET_HDR_LEN..].to_vec();
    rxq.add_desc_chains(&chain(0, &[(BUF, 2048, true)]), 0)
        .unwrap();
    net.queue_events()[RX_QUEUE].write(1).unwrap();
    let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
    framed.extend(&payload);
    peer.write_all(&framed).unwrap();
    while events.run_with_timeout(100).unwrap() > 0 && used(&rxq).is_empty() {}
    assert_eq!(used(&rxq), [(0, (VNET_HDR_LEN + 300) as u32)]);
    let mut got = vec![0u8; VNET_HDR_LEN + 300];
    mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got[0], VIRTIO_NET_HDR_F_DATA_VALID, "flags: DATA_VALID");
    assert_eq!(
        &got[1..10],
        &[0; 9],
        "the rest of the header but num_buffers is zero"
    );
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(&got[VNET_HDR_LEN..], &payload[..]);

    // Transmit frames of 60000 bytes until the stream has a backlog.
    let big = frame_bytes(60000, 9);
    let at = BUF + 0x10000;
    mem.write_slice(&big, GuestAddress(at)).unwrap();
    let mut sent = 0u16;
    while !io.backlog() {
        assert!(sent < QS - 1, "the stream never filled");
        txq.add_desc_chains(&chain(sent, &[(at, big.len() as u32, false)]), sent)
            .unwrap();
        sent += 1;
        net.queue_events()[TX_QUEUE].write(1).unwrap();
        events.run_with_timeout(0).unwrap();
    }
    // The device now waits for writability, not for the guest.
    assert!(events
        .subscriber_mut(id)
        .unwrap()
        .tap_interest()
        .unwrap()
        .contains(EventSet::OUT));
    let mut want = (60000u32).to_be_bytes().to_vec();
    want.extend(&big[VNET_HDR_LEN..]);
    let reader = std::thread::spawn(move || {
        let mut ok = 0;
        let mut buf = vec![0u8; want.len()];
        while ok < sent {
            peer.read_exact(&mut buf).unwrap();
            assert_eq!(buf, want, "frame {ok} on the stream");
            ok += 1;
        }
    });
    // Only the event loop runs: writability finishes the backlog.
    let start = std::time::Instant::now();
    while io.backlog() {
        assert!(start.elapsed().as_secs() < 10, "the backlog was never sent");
        events.run_with_timeout(100).unwrap();
    }
    reader.join().unwrap();
    assert_eq!(used(&txq).len(), usize::from(sent));
}

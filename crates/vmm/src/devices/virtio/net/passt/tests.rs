//! The passt backend's framing, against the test playing passt on the
//! other end of a socketpair; no passt process.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use super::super::frame::VIRTIO_NET_HDR_F_DATA_VALID;
use super::*;

fn pair() -> (Passt, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    (Passt::over(ours, None), theirs)
}

/// `payload` as passt puts it on the stream.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// A frame as the device hands it over: a virtio-net header first.
fn with_header(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0xee; VNET_HDR_LEN];
    v.extend_from_slice(payload);
    v
}

#[test]
fn frames_cut_anywhere_arrive_whole_with_a_zero_header() {
    let (p, mut peer) = pair();
    let frames = [frame(60, 1), frame(1514, 2), frame(14, 3), frame(65550, 4)];
    let stream: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
    let mut buf = vec![0xaa; MAX_FRAME_LEN + VNET_HDR_LEN];
    let mut got = Vec::new();
    // Odd-sized pieces, so that both the length and the bytes are split.
    for piece in stream.chunks(997) {
        peer.write_all(piece).unwrap();
        loop {
            match p.recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
                    got.push(buf[VNET_HDR_LEN..n].to_vec());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn several_frames_in_one_write_come_one_by_one() {
    let (p, mut peer) = pair();
    let mut stream = framed(&frame(100, 7));
    stream.extend(framed(&frame(200, 8)));
    peer.write_all(&stream).unwrap();
    let mut buf = vec![0; 4096];
    assert_eq!(p.recv(&mut buf).unwrap(), VNET_HDR_LEN + 100);
    assert_eq!(&buf[VNET_HDR_LEN..VNET_HDR_LEN + 100], &frame(100, 7)[..]);
    assert_eq!(p.recv(&mut buf).unwrap(), VNET_HDR_LEN + 200);
    assert_eq!(&buf[VNET_HDR_LEN..VNET_HDR_LEN + 200], &frame(200, 8)[..]);
    assert_eq!(p.recv(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
}

#[test]
fn an_oversized_frame_is_read_away_and_reported_too_long() {
    let (p, mut peer) = pair();
    let big = frame(MAX_FRAME_LEN + 1, 5);
    let after = frame(80, 6);
    let mut stream = framed(&big);
    stream.extend(framed(&after));
    let writer = std::thread::spawn(move || peer.write_all(&stream).map(|_| peer));
    let mut buf = vec![0; MAX_FRAME_LEN + VNET_HDR_LEN];
    let mut results = Vec::new();
    while results.len() < 2 {
        match p.recv(&mut buf) {
            Ok(n) => results.push((n, buf[VNET_HDR_LEN..n.min(buf.len())].to_vec())),
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    let _peer = writer.join().unwrap().unwrap();
    // Larger than the buffer: the device drops and counts it.
    assert!(results[0].0 > buf.len());
    assert_eq!(results[1], (VNET_HDR_LEN + 80, after));
}

#[test]
fn a_frame_larger_than_the_callers_buffer_is_dropped_not_cut() {
    let (p, mut peer) = pair();
    peer.write_all(&framed(&frame(500, 9))).unwrap();
    peer.write_all(&framed(&frame(50, 10))).unwrap();
    let mut small = vec![0; 256];
    assert_eq!(p.recv(&mut small).unwrap(), VNET_HDR_LEN + 500);
    assert_eq!(p.recv(&mut small).unwrap(), VNET_HDR_LEN + 50);
    assert_eq!(&small[VNET_HDR_LEN..VNET_HDR_LEN + 50], &frame(50, 10)[..]);
}

#[test]
fn passt_going_away_is_an_error_not_a_frame() {
    let (p, mut peer) = pair();
    peer.write_all(&[0, 0]).unwrap();
    drop(peer);
    let mut buf = vec![0; 4096];
    assert_eq!(
        p.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::ConnectionAborted
    );
}

#[test]
fn sent_frames_lose_the_header_and_gain_the_length() {
    let (p, mut peer) = pair();
    let a = frame(60, 1);
    let b = frame(1514, 2);
    assert_eq!(p.send(&with_header(&a)).unwrap(), VNET_HDR_LEN + 60);
    assert_eq!(p.send(&with_header(&b)).unwrap(), VNET_HDR_LEN + 1514);
    assert!(!p.backlog());
    let mut want = framed(&a);
    want.extend(framed(&b));
    let mut got = vec![0; want.len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
    assert_eq!(
        p.send(&[0; VNET_HDR_LEN - 1]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    // passt quits on a frame over 65535 bytes: refused here, nothing sent.
    let e = p
        .send(&with_header(&frame(PASST_MAX_FRAME + 1, 3)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(!p.backlog());
    p.send(&with_header(&frame(PASST_MAX_FRAME, 4))).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0; 4 + PASST_MAX_FRAME];
        peer.read_exact(&mut got).unwrap();
        got
    });
    while p.backlog() {
        match p.flush() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            other => other.unwrap(),
        }
    }
    assert_eq!(reader.join().unwrap(), framed(&frame(PASST_MAX_FRAME, 4)));
}

#[test]
fn a_frame_the_socket_took_in_part_is_finished_before_the_next() {
    let (p, mut peer) = pair();
    // Fill the socket until a frame goes in only in part or not at all.
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut seed = 0u8;
    loop {
        let f = frame(60000, seed);
        match p.send(&with_header(&f)) {
            Ok(_) => sent.push(f),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        seed = seed.wrapping_add(1);
        assert!(sent.len() < 10_000, "the socket never filled");
    }
    // Nothing moves while the peer reads nothing.
    if p.backlog() {
        assert_eq!(p.flush().unwrap_err().kind(), ErrorKind::WouldBlock);
    }
    let want: Vec<u8> = sent.iter().flat_map(|f| framed(f)).collect();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0; want.len()];
        peer.read_exact(&mut got).unwrap();
        (got == want, peer)
    });
    while p.backlog() {
        match p.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    let (same, mut peer) = reader.join().unwrap();
    assert!(same, "the stream is not the frames, whole and in order");
    // And the stream is in step for the next one.
    p.send(&with_header(&frame(10, 99))).unwrap();
    let mut next = vec![0; 14];
    peer.read_exact(&mut next).unwrap();
    assert_eq!(next, framed(&frame(10, 99)));
}

#[test]
fn forwards_parse_and_print_the_same() {
    let f: PortForward = "tcp:8080:80".parse().unwrap();
    assert_eq!(
        f,
        PortForward {
            host: 8080,
            guest: 80
        }
    );
    assert_eq!(f.to_string(), "tcp:8080:80");
    for bad in [
        "",
        "tcp:1",
        "udp:1:2",
        "tcp:0:80",
        "tcp:80:0",
        "tcp:65536:1",
        "tcp:1:2:3",
        "tcp:a:2",
    ] {
        assert!(bad.parse::<PortForward>().is_err(), "{bad:?}");
    }
}

#[test]
fn default_routes_are_found_in_the_kernels_tables() {
    let v4 =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
              eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
    assert!(default_route_v4(v4));
    let v4_link_only = "Iface\tDestination\tGateway \tFlags\n\
                        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    assert!(!default_route_v4(v4_link_only));
    assert!(!default_route_v4(""));
    let zeros = "00000000000000000000000000000000";
    let v6 = format!("{zeros} 00 {zeros} 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n");
    assert!(default_route_v6(&v6));
    // The kernel's unreachable ::/0 on lo is no route.
    let unreachable =
        format!("{zeros} 00 {zeros} 00 {zeros} ffffffff 00000001 00000000 00200200 lo\n");
    assert!(!default_route_v6(&unreachable));
}

#[test]
fn received_frames_are_marked_data_valid_only_once_the_guest_took_guest_csum() {
    let (p, mut peer) = pair();
    assert!(p.checksums_valid() && !p.vnet_hdr());
    let mut buf = vec![0xaa; 4096];
    for (offload, flags) in [
        (0, 0),
        (libc::TUN_F_CSUM, VIRTIO_NET_HDR_F_DATA_VALID),
        (0, 0),
    ] {
        p.set_offload(offload).unwrap();
        peer.write_all(&framed(&frame(60, 1))).unwrap();
        assert_eq!(p.recv(&mut buf).unwrap(), VNET_HDR_LEN + 60);
        assert_eq!(buf[0], flags, "after set_offload({offload:#x})");
        assert_eq!(&buf[1..VNET_HDR_LEN], &[0; VNET_HDR_LEN - 1]);
    }
}

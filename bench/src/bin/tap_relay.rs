//! `tap_relay`: the floor of a user-space L2 tunnel on this machine, for `bench/compare`.
//!
//! It moves frames between a TAP and a UDP socket and does nothing else: no encryption, no
//! header, no switch, no batching, no offloads; one `read` and one `send` per frame. Any
//! tunnel whose data path runs in user space behind a TAP (OmniNervous' socket backend,
//! wireguard-go, boringtun) pays at least what this pays for the same trip: the wake-ups of
//! a sleeping process and the kernel's TAP and UDP paths. Its ping RTT is therefore the
//! latency floor such a design can reach on the machine, with the same polling window as
//! OmniNervous' default (`--spin-us`, yielding the CPU between polls). Its throughput is
//! not a reference: without offloads it carries one frame per system call.
//!
//! Not part of the product and not secure: anything sent to its port reaches the TAP.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use omni_sys::tap::Tap;

#[derive(Debug, Parser)]
#[command(name = "tap_relay", about = "Plain TAP <-> UDP relay: a latency floor for bench/compare")]
struct Args {
    /// TAP interface to create.
    #[arg(long)]
    tap: String,
    /// Its MTU.
    #[arg(long, default_value_t = 1458)]
    mtu: u32,
    /// Local UDP address.
    #[arg(long)]
    bind: SocketAddr,
    /// The other relay's UDP address.
    #[arg(long)]
    peer: SocketAddr,
    /// After traffic, keep polling this long before sleeping (yielding between polls).
    #[arg(long, default_value_t = omni_dataplane::backend::spin::DEFAULT_US)]
    spin_us: u64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let tap = Tap::open(&a.tap, false).with_context(|| format!("cannot open TAP {}", a.tap))?;
    // The interface goes with the process.
    tap.set_persist(false).context("cannot clear the TAP's persistence")?;
    tap.configure(a.mtu, None).with_context(|| format!("cannot configure TAP {}", a.tap))?;
    let sock = UdpSocket::bind(a.bind).with_context(|| format!("cannot bind {}", a.bind))?;
    sock.connect(a.peer).with_context(|| format!("cannot connect to {}", a.peer))?;
    sock.set_nonblocking(true)?;
    let mut buf = vec![0u8; 65_536];
    let mut fds = [
        libc::pollfd { fd: tap.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    let mut last_work = Instant::now();
    loop {
        let mut work = false;
        while let Some(n) = tap.read(&mut buf).context("TAP read")? {
            // A datagram the peer cannot take yet is dropped, as a tunnel would.
            let _ = sock.send(&buf[..n]);
            work = true;
        }
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let _ = tap.write(&buf[..n]);
                    work = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP errors from a peer not yet listening, interruptions: go on.
                Err(_) => break,
            }
        }
        if work {
            last_work = Instant::now();
            continue;
        }
        if (last_work.elapsed().as_micros() as u64) < a.spin_us {
            std::thread::yield_now();
            continue;
        }
        // SAFETY: two valid pollfd entries; the kernel writes only their revents.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("poll");
            }
        }
    }
}

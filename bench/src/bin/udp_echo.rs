//! `udp_echo`: the round trip of two sleeping processes on this machine, for `bench/compare`.
//!
//! One process sends a 64-byte UDP datagram, the other sends it back, and each sleeps in a
//! blocking receive in between: no TAP, no tunnel, no polling. A ping through any tunnel
//! whose data path runs in a user-space process at each end (OmniNervous' socket backend,
//! wireguard-go, boringtun, the `tap_relay` floor) wakes such a process on each side, so
//! this round trip is a lower bound for all of them, where kernel VXLAN wakes none.
//!
//! `udp_echo serve --bind ADDR` answers until killed; `udp_echo ping --bind ADDR --peer ADDR`
//! prints one round trip per line (`time=<ms>`, as ping does) and a summary line.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "udp_echo", about = "UDP round trip between two sleeping processes")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Send every datagram back to where it came from.
    Serve {
        #[arg(long)]
        bind: SocketAddr,
    },
    /// Measure round trips to a server.
    Ping {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        peer: SocketAddr,
        /// Round trips to measure.
        #[arg(long, default_value_t = 150)]
        count: u32,
        /// Pause between round trips, ms (the processes sleep meanwhile).
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Serve { bind } => {
            let sock = UdpSocket::bind(bind).with_context(|| format!("cannot bind {bind}"))?;
            let mut buf = [0u8; 2048];
            loop {
                let (n, from) = sock.recv_from(&mut buf).context("recv")?;
                sock.send_to(&buf[..n], from).context("send")?;
            }
        }
        Mode::Ping { bind, peer, count, interval_ms } => {
            if count == 0 {
                bail!("--count must be at least 1");
            }
            let sock = UdpSocket::bind(bind).with_context(|| format!("cannot bind {bind}"))?;
            sock.connect(peer).with_context(|| format!("cannot connect to {peer}"))?;
            sock.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut buf = [0u8; 2048];
            let mut answered = 0;
            for seq in 0..count {
                std::thread::sleep(Duration::from_millis(interval_ms));
                let mut msg = [0u8; 64];
                msg[..4].copy_from_slice(&seq.to_be_bytes());
                let t0 = Instant::now();
                sock.send(&msg).context("send")?;
                // An answer to an earlier, timed-out probe is not this one's.
                loop {
                    match sock.recv(&mut buf) {
                        Ok(n) if n >= 4 && buf[..4] == seq.to_be_bytes() => {
                            println!("time={:.3}", t0.elapsed().as_secs_f64() * 1e3);
                            answered += 1;
                            break;
                        }
                        Ok(_) => continue,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            break;
                        }
                        Err(e) => return Err(e).context("recv"),
                    }
                }
            }
            println!("{answered}/{count} answered");
            Ok(())
        }
    }
}

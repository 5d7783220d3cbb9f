//! The relay over TLS on TCP, for nodes whose networks block UDP: each connection carries
//! the same datagrams as the UDP socket (REGISTER, MEMBERS, sealed relayed packets), one
//! per frame ([`omni_proto::wire::stream`]). The core sees a connection as a
//! source address of its own in `100::/64` (RFC 6666, discard-only: never a real source),
//! so registration, the relay and its budget per node work unchanged; what the Nucleus
//! reads is what it reads over UDP, nothing more. TLS hides the traffic's shape from the
//! networks that block UDP and lets it pass as HTTPS; authentication stays where it is (the
//! Nucleus signs its answers, nodes seal their packets end to end), so a node does not
//! need to verify the certificate, which may therefore be self-signed.
//!
//! Bounded against bad clients: connections in all and per client IP, a TLS handshake
//! and each frame must arrive within a deadline (slowloris), a silent connection is closed,
//! an oversized frame closes its connection, and each connection's send queue is bounded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use omni_proto::wire::stream;
/// The default port (HTTPS: what networks that block UDP still let through).
pub const DEFAULT_PORT: u16 = 443;

/// The first 64 bits of a connection's source address in the core.
const VIRTUAL_PREFIX: [u16; 4] = [0x0100, 0, 0, 0];

/// The source address the core sees for connection number `n`.
pub fn virtual_addr(n: u64) -> SocketAddr {
    let [a, b, c, d] = VIRTUAL_PREFIX;
    let w = |i: u32| (n >> (48 - 16 * i)) as u16;
    let ip = Ipv6Addr::new(a, b, c, d, w(0), w(1), w(2), w(3));
    SocketAddr::V6(SocketAddrV6::new(ip, DEFAULT_PORT, 0, 0))
}

/// Whether `a` is a TCP connection's address (not one a peer can send to).
pub fn is_virtual(a: &SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V6(ip) if ip.segments()[..4] == VIRTUAL_PREFIX)
}

/// Limits on clients.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub per_ip: usize,
    /// The TLS handshake must complete within this.
    pub handshake_timeout: Duration,
    /// A frame, once begun, must arrive whole within this.
    pub frame_timeout: Duration,
    /// A connection with no frame for this long is closed (nodes re-register every 20 s;
    /// the server makes it at least the member timeout).
    pub idle_timeout: Duration,
    /// Frames waiting to go out to one connection; more are dropped (counted).
    pub send_queue: usize,
    /// TLS handshakes in progress at once: each holds ~13 KB of TLS state, so a crowd of
    /// clients that never finish costs this many, and the rest only their sockets.
    pub handshakes: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            per_ip: 64,
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            send_queue: 64,
            handshakes: 256,
        }
    }
}

/// What the TCP relay counts (read by the metrics).
#[derive(Debug, Default)]
pub struct TcpStats {
    pub accepted: AtomicU64,
    pub open: AtomicU64,
    pub refused_limit: AtomicU64,
    pub handshake_failed: AtomicU64,
    pub oversized: AtomicU64,
    pub timed_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub send_dropped: AtomicU64,
}

/// The connections' send queues, by their address in the core.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<ConnTable>>,
}

#[derive(Default)]
struct ConnTable {
    /// Connections past their TLS handshake.
    by_addr: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Every connection, handshaking or not, in all and per client IP.
    count: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// What the per-client limit counts by: the IPv4 address, or the IPv6 /64 (one host may
/// hold a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
        v4 => v4,
    }
}

impl Connections {
    /// Queues `msg` for the connection at `to`. Returns false when there is no such
    /// connection or its queue is full.
    pub fn send(&self, to: &SocketAddr, msg: Vec<u8>) -> bool {
        let t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.by_addr.get(to).is_some_and(|tx| tx.try_send(msg).is_ok())
    }

    /// Connections, handshaking or not.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).count
    }

    /// Admits a client from `ip` within the limits: its address.
    fn admit(&self, ip: IpAddr, limits: &TcpLimits) -> Option<SocketAddr> {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = t.per_ip.get(&client_key(ip)).copied().unwrap_or(0);
        if t.count >= limits.max_connections || n >= limits.per_ip {
            return None;
        }
        t.count += 1;
        *t.per_ip.entry(client_key(ip)).or_default() += 1;
        // Random, so that no one can guess a connection's address and spoof it over UDP
        // (the server drops UDP from 100::/64 as well); a clash with a live one is redrawn.
        loop {
            let addr = virtual_addr(rand::random());
            if !t.by_addr.contains_key(&addr) {
                return Some(addr);
            }
        }
    }

    /// A send queue for the admitted connection at `addr`, once its handshake is done.
    fn attach(&self, addr: SocketAddr, limits: &TcpLimits) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(limits.send_queue);
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).by_addr.insert(addr, tx);
        rx
    }

    fn remove(&self, addr: &SocketAddr, ip: IpAddr) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.by_addr.remove(addr);
        t.count -= 1;
        let key = client_key(ip);
        if let Some(n) = t.per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                t.per_ip.remove(&key);
            }
        }
    }
}

/// The TLS configuration: the certificate and key in PEM files when given, else a fresh
/// self-signed certificate (nodes authenticate the Nucleus by its signatures, not by TLS).
pub fn tls_acceptor(cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (chain, key) = match (cert, key) {
        (Some(c), Some(k)) => {
            let chain = CertificateDer::pem_file_iter(c)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .with_context(|| {
                    format!("[server] tls_cert {}: not a PEM certificate", c.display())
                })?;
            let key = PrivateKeyDer::from_pem_file(k).with_context(|| {
                format!("[server] tls_key {}: not a PEM private key", k.display())
            })?;
            (chain, key)
        }
        (None, None) => {
            let c = rcgen::generate_simple_self_signed(vec!["omni-nucleus".into()])
                .context("generating the self-signed TLS certificate")?;
            let key = PrivateKeyDer::Pkcs8(c.key_pair.serialize_der().into());
            (vec![c.cert.der().clone()], key)
        }
        _ => anyhow::bail!("[server] tls_cert and tls_key go together: set both, or neither"),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not match")?;
    cfg.alpn_protocols = vec![stream::ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Connections waiting to be accepted: a burst of clients (a fleet moving to TCP at once)
/// is queued, not dropped into SYN retries.
const BACKLOG: u32 = 4096;

/// The relay's listening socket.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(BACKLOG)
}

/// Accepts clients for ever: each connection's frames go to `to_core` with its address;
/// what the core sends to that address goes back through [`Connections::send`].
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    to_core: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    conns: Connections,
    stats: Arc<TcpStats>,
    limits: TcpLimits,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.handshakes));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                warn!("TCP relay accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(addr) = conns.admit(peer.ip(), &limits) else {
            stats.refused_limit.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "TCP relay: connection limit reached; refused");
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let (acceptor, to_core, conns, stats, handshakes) =
            (acceptor.clone(), to_core.clone(), conns.clone(), stats.clone(), handshakes.clone());
        tokio::spawn(async move {
            let tls = handshake(stream, &acceptor, &handshakes, &stats, &limits).await;
            if let Some(tls) = tls {
                let rx = conns.attach(addr, &limits);
                // Boxed: a task waiting for its handshake stays small.
                Box::pin(connection(tls, addr, rx, to_core, &stats, &limits)).await;
            }
            conns.remove(&addr, peer.ip());
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The TLS handshake, within the deadline (waiting for a turn counts), or `None`
/// (counted).
async fn handshake(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    turns: &tokio::sync::Semaphore,
    stats: &TcpStats,
    limits: &TcpLimits,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let done = tokio::time::timeout_at(deadline, async {
        let _turn = turns.acquire().await;
        // Boxed: only a connection with its turn holds the TLS state.
        Box::pin(acceptor.accept(stream)).await
    });
    match done.await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            stats.handshake_failed.fetch_add(1, Ordering::Relaxed);
            debug!("TCP relay: TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Frames both ways until either side ends.
async fn connection(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    to_core: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    stats: &TcpStats,
    limits: &TcpLimits,
) {
    let (mut r, mut w) = tokio::io::split(tls);
    // A client that does not read is closed once a write waits the frame timeout, so it
    // holds at most its queue.
    let writer = async {
        while let Some(msg) = rx.recv().await {
            match tokio::time::timeout(limits.frame_timeout, write_frame(&mut w, &msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            stats.frames_out.fetch_add(1, Ordering::Relaxed);
        }
    };
    let reader = async {
        loop {
            match read_frame(&mut r, limits).await {
                Ok(f) => {
                    stats.frames_in.fetch_add(1, Ordering::Relaxed);
                    if to_core.send((addr, f)).await.is_err() {
                        break;
                    }
                }
                Err(FrameError::Oversized) => {
                    stats.oversized.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(FrameError::TimedOut) => {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(FrameError::Closed) => break,
            }
        }
    };
    // Either side ending ends the connection.
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
    info!(%addr, "TCP relay connection closed");
}

#[derive(Debug, PartialEq)]
pub enum FrameError {
    Oversized,
    TimedOut,
    Closed,
}

/// Reads one frame: waits up to the idle timeout for it to begin and the frame timeout for
/// the rest. A zero or oversized length is an error (the stream cannot be resynchronised).
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
    limits: &TcpLimits,
) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 2];
    match tokio::time::timeout(limits.idle_timeout, r.read_exact(&mut len[..1])).await {
        Err(_) => return Err(FrameError::TimedOut),
        Ok(Err(_)) => return Err(FrameError::Closed),
        Ok(Ok(_)) => {}
    }
    let rest = async {
        r.read_exact(&mut len[1..]).await?;
        let Ok(n) = stream::parse_header(len) else {
            return Ok(Err(FrameError::Oversized));
        };
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(Ok(buf))
    };
    match tokio::time::timeout(limits.frame_timeout, rest).await {
        Err(_) => Err(FrameError::TimedOut),
        Ok(Err(_)) => Err(FrameError::Closed),
        Ok(Ok(r)) => r,
    }
}

/// Writes one frame (its length, then the bytes) and flushes it.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let Some(b) = stream::frame(msg) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame size"));
    };
    w.write_all(&b).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_by_ipv4_address_or_ipv6_64() {
        let k = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(k("192.0.2.1"), "192.0.2.1");
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2::ffff"), "2001:db8:1:2::");
        assert_eq!(k("::ffff:192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn virtual_addresses_are_distinct_and_recognised() {
        let (a, b) = (virtual_addr(1), virtual_addr(0x1_0000_0001));
        assert_ne!(a, b);
        assert!(is_virtual(&a) && is_virtual(&b));
        assert_eq!(a.to_string(), "[100::1]:443");
        assert_eq!(b.to_string(), "[100::1:0:1]:443");
        for real in ["203.0.113.1:443", "[2001:db8::1]:443", "[::ffff:1.2.3.4]:1"] {
            assert!(!is_virtual(&real.parse().unwrap()), "{real}");
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_end_the_stream() {
        let limits = TcpLimits { frame_timeout: Duration::from_millis(200), ..Default::default() };
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        write_frame(&mut a, b"hello").await.unwrap();
        assert_eq!(read_frame(&mut b, &limits).await.unwrap(), b"hello");
        assert!(write_frame(&mut a, &[0; stream::MAX_FRAME + 1]).await.is_err(), "refused to send");
        // An oversized length from a client.
        a.write_all(&(stream::MAX_FRAME as u16 + 1).to_be_bytes()).await.unwrap();
        assert_eq!(read_frame(&mut b, &limits).await, Err(FrameError::Oversized));
        // A zero length.
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0]).await.unwrap();
        assert_eq!(read_frame(&mut b, &limits).await, Err(FrameError::Oversized));
        // Slowloris: a frame begun and never finished.
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 10, 1, 2]).await.unwrap();
        assert_eq!(read_frame(&mut b, &limits).await, Err(FrameError::TimedOut));
        // Idle: nothing at all.
        let idle = TcpLimits { idle_timeout: Duration::from_millis(100), ..limits };
        let (_a, mut b) = tokio::io::duplex(1024);
        assert_eq!(read_frame(&mut b, &idle).await, Err(FrameError::TimedOut));
        // Closed mid-frame.
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 10, 1]).await.unwrap();
        drop(a);
        assert_eq!(read_frame(&mut b, &limits).await, Err(FrameError::Closed));
    }

    #[test]
    fn connections_are_limited_in_all_and_per_ip() {
        let limits = TcpLimits { max_connections: 3, per_ip: 2, ..Default::default() };
        let c = Connections::default();
        let ip1: IpAddr = "192.0.2.1".parse().unwrap();
        let ip2: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = c.admit(ip1, &limits).unwrap();
        let a2 = c.admit(ip1, &limits).unwrap();
        assert!(c.admit(ip1, &limits).is_none(), "per IP");
        let _a3 = c.admit(ip2, &limits).unwrap();
        assert!(c.admit(ip2, &limits).is_none(), "in all");
        assert_eq!(c.len(), 3);
        assert!(!c.send(&a2, vec![1]), "nothing is queued before the handshake");
        let _r1 = c.attach(a1, &limits);
        let _r2 = c.attach(a2, &limits);
        c.remove(&a1, ip1);
        assert!(c.admit(ip1, &limits).is_some(), "a slot freed");
        assert!(c.send(&a2, vec![1]), "queued to a live connection");
        assert!(!c.send(&a1, vec![1]), "not to a closed one");
    }

    #[test]
    fn a_self_signed_acceptor_is_made_and_half_a_pair_is_refused() {
        assert!(tls_acceptor(None, None).is_ok());
        let e = tls_acceptor(Some(Path::new("/nonexistent")), None).err().unwrap();
        assert!(e.to_string().contains("go together"), "{e}");
        let e = tls_acceptor(Some(Path::new("/nonexistent")), Some(Path::new("/x"))).err().unwrap();
        assert!(format!("{e:#}").contains("tls_cert"), "{e:#}");
    }
}

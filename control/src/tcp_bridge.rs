//! The daemon's bridge to a Nucleus's relay over TLS on TCP, for networks that block UDP.
//!
//! The bridge is a UDP socket on loopback that stands in for the Nucleus: the data plane
//! sends to it as to any Nucleus (registration, relayed packets, sealed as ever), and the
//! bridge carries each datagram as one frame ([`omni_proto::wire::stream`]) over the TLS
//! connection; frames from the Nucleus go back to the data plane from the bridge's
//! address. So no backend needs to know about TCP.
//!
//! The certificate is not checked against a name: the Nucleus proves itself by signing its
//! answers (and may be pinned by key), and relayed packets are sealed end to end, so TLS
//! here only disguises the traffic as HTTPS. The handshake's signatures are still verified.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use omni_proto::wire::stream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::rendezvous::TcpRequest;

/// A connection (TCP and TLS) not up within this long has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// What a bridge tells the daemon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BridgeEvent {
    /// Connected: the data plane reaches Nucleus `index` at `bridge`.
    Up { index: usize, bridge: SocketAddr },
    /// Failed or closed.
    Down { index: usize },
}

/// The bridges running, one per Nucleus on TCP.
pub struct Bridges {
    tasks: HashMap<usize, JoinHandle<()>>,
    events: mpsc::Sender<BridgeEvent>,
    tls: Arc<rustls::ClientConfig>,
    /// The data plane's UDP port: only datagrams from it are carried (another local
    /// process must not take over the Nucleus's traffic).
    data_port: u16,
}

impl Bridges {
    /// Bridges for the data plane on `data_port`, reporting on `events`.
    pub fn new(events: mpsc::Sender<BridgeEvent>, data_port: u16) -> Self {
        Self { tasks: HashMap::new(), events, tls: Arc::new(client_config()), data_port }
    }

    /// Opens or closes a bridge as the rendezvous asks.
    pub fn apply(&mut self, req: TcpRequest) {
        match req {
            TcpRequest::Connect { index, to } => {
                if let Some(old) = self.tasks.remove(&index) {
                    old.abort();
                }
                let (events, tls, port) = (self.events.clone(), self.tls.clone(), self.data_port);
                self.tasks.insert(
                    index,
                    tokio::spawn(async move {
                        if let Err(e) = run(index, to, port, tls, &events).await {
                            info!(nucleus = %to, "TLS/TCP relay: {e:#}");
                        }
                        let _ = events.send(BridgeEvent::Down { index }).await;
                    }),
                );
            }
            TcpRequest::Close { index } => {
                if let Some(t) = self.tasks.remove(&index) {
                    t.abort();
                }
            }
        }
    }
}

impl Drop for Bridges {
    fn drop(&mut self) {
        self.tasks.values().for_each(JoinHandle::abort);
    }
}

/// One bridge: connects, says so, then moves datagrams both ways until either side ends.
async fn run(
    index: usize,
    to: SocketAddr,
    data_port: u16,
    tls: Arc<rustls::ClientConfig>,
    events: &mpsc::Sender<BridgeEvent>,
) -> anyhow::Result<()> {
    let udp = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
        .await
        .context("binding the bridge's loopback socket")?;
    let connect = async {
        let tcp = TcpStream::connect(to).await.with_context(|| format!("connecting to {to}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::IpAddress(to.ip().into());
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {to}"))
    };
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .with_context(|| format!("no connection to {to} within {CONNECT_TIMEOUT:?}"))??;
    // Whatever else listens on that port (a web server on 443) is not the relay.
    if conn.get_ref().1.alpn_protocol() != Some(stream::ALPN) {
        anyhow::bail!("{to} is not a Nucleus TCP relay (no {:?} protocol)", "omni-relay/1");
    }
    let bridge = udp.local_addr()?;
    debug!(nucleus = %to, %bridge, "TLS/TCP relay connected");
    events.send(BridgeEvent::Up { index, bridge }).await.ok();
    let (mut r, mut w) = tokio::io::split(conn);
    // Where the data plane sends from (its port is known; the address is learned from its
    // first datagram: it may be bound to an underlay address rather than the wildcard).
    let dataplane = std::sync::Mutex::new(None::<SocketAddr>);
    let upstream = async {
        let mut buf = vec![0u8; stream::MAX_FRAME];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await?;
            if from.port() != data_port {
                continue;
            }
            *dataplane.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
            if let Some(f) = stream::frame(&buf[..n]) {
                w.write_all(&f).await?;
                w.flush().await?;
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    let downstream = async {
        loop {
            let mut h = [0u8; stream::HEADER_LEN];
            r.read_exact(&mut h).await.context("the Nucleus closed the connection")?;
            let n = stream::parse_header(h).context("a bad frame from the Nucleus")?;
            let mut buf = vec![0u8; n];
            r.read_exact(&mut buf).await?;
            let dp = *dataplane.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(dp) = dp {
                let _ = udp.send_to(&buf, dp).await;
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
    }
}

/// TLS 1.3 or 1.2 with any certificate (see the module comment), offering the relay's ALPN.
fn client_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![stream::ALPN.to_vec()];
    cfg
}

#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

//! Where connections come from, and what the gateway knows about each.
//!
//! `serve` accepts TCP connections and hands each to an [`Acceptor`], which
//! turns it into the byte stream HTTP is spoken over and the connection's
//! [`ConnInfo`]. Plain TCP is [`PlainTcp`]; TLS (and with it mTLS client
//! certificates) is [`TlsAcceptor`], whose handshake runs in the
//! connection's own task, never in the accept loop, and within a deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// What the gateway knows about a client connection; every request on it
/// sees the same one.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address as the socket sees it.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// `None` on plain TCP.
    pub tls: Option<TlsInfo>,
}

/// What a TLS handshake established.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The application protocol ALPN settled on (`h2`, `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
    /// The client's certificate chain (DER, leaf first), when it sent one
    /// and it verified.
    pub client_certificates: Vec<Vec<u8>>,
}

impl TlsInfo {
    /// Whether the connection speaks HTTP/2 (ALPN `h2`).
    pub fn is_h2(&self) -> bool {
        self.alpn.as_deref() == Some(b"h2")
    }
}

/// Turns an accepted TCP connection into the stream HTTP runs over.
pub trait Acceptor: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<(Self::Io, ConnInfo)>> + Send;
}

/// Plain TCP: the stream as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Acceptor for PlainTcp {
    type Io = TcpStream;

    async fn accept(&self, tcp: TcpStream, peer: SocketAddr) -> io::Result<(TcpStream, ConnInfo)> {
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr()?;
        Ok((
            tcp,
            ConnInfo {
                peer,
                local,
                tls: None,
            },
        ))
    }
}

/// TLS over TCP: the handshake, bounded by `handshake_timeout`, then the
/// decrypted stream. A client certificate, when the listener asks for one,
/// was verified during the handshake; a connection whose certificate does
/// not verify never gets here.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl TlsAcceptor {
    pub fn new(config: Arc<rustls::ServerConfig>, handshake_timeout: Duration) -> Self {
        Self {
            inner: tokio_rustls::TlsAcceptor::from(config),
            handshake_timeout,
        }
    }
}

impl Acceptor for TlsAcceptor {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn accept(&self, tcp: TcpStream, peer: SocketAddr) -> io::Result<(Self::Io, ConnInfo)> {
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr()?;
        let stream = tokio::time::timeout(self.handshake_timeout, self.inner.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (_, session) = stream.get_ref();
        let tls = TlsInfo {
            server_name: session.server_name().map(str::to_owned),
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            client_certificates: session
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.as_ref().to_vec()).collect())
                .unwrap_or_default(),
        };
        Ok((
            stream,
            ConnInfo {
                peer,
                local,
                tls: Some(tls),
            },
        ))
    }
}

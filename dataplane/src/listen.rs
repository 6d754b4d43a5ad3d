//! Where connections come from, and what the gateway knows about each.
//!
//! `serve` accepts TCP connections and hands each to an [`Acceptor`], which
//! turns it into the byte stream HTTP is spoken over and the connection's
//! [`ConnInfo`]. Plain TCP is [`PlainTcp`]; TLS (and with it mTLS client
//! certificates) is another acceptor, whose handshake runs in the
//! connection's own task, never in the accept loop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

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
    /// The client's certificate chain (DER, leaf first), when it sent one
    /// and it verified.
    pub client_certificates: Vec<Vec<u8>>,
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

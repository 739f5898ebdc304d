//! The edge side of the protocol: connect with a pinned certificate, authenticate, send
//! frames and wait for their acknowledgements.

use crate::protocol::{self, Ack, Hello, HelloReply};
use crate::tls;
use std::net::SocketAddr;

/// Why a frame could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The merger refused this edge.
    #[error("merger refused the edge: {0}")]
    Refused(String),
    /// Connection-level failure (resend later).
    #[error("merger connection: {0}")]
    Connection(String),
    /// The local UDP socket could not be opened.
    #[error("client socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The pinned-certificate TLS configuration could not be made.
    #[error("client TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// One authenticated connection to a merger.
pub struct MergerClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

fn conn_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection(e.to_string())
}

impl MergerClient {
    /// Connects to `addr`, pinning the certificate `fingerprint`, and says hello.
    pub async fn connect(
        addr: SocketAddr,
        fingerprint: &str,
        edge_id: &str,
        secret: &str,
    ) -> Result<MergerClient, ClientError> {
        let bind = if addr.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(tls::client_config(fingerprint)?);
        let conn = endpoint
            .connect(addr, "tally-merger")
            .map_err(conn_err)?
            .await
            .map_err(conn_err)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(conn_err)?;
        let hello = Hello {
            edge_id: edge_id.into(),
            secret: secret.into(),
        };
        send.write_all(&protocol::encode(&hello)).await.map_err(conn_err)?;
        send.finish().map_err(conn_err)?;
        let reply = recv.read_to_end(4096).await.map_err(|e| match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == protocol::REFUSED.into() => {
                ClientError::Refused(String::from_utf8_lossy(&c.reason).into_owned())
            }
            _ => conn_err(e),
        })?;
        match protocol::decode::<HelloReply>(&reply).map_err(conn_err)? {
            HelloReply::Welcome => Ok(MergerClient { endpoint, conn }),
            HelloReply::Refused(why) => {
                conn.close(0u32.into(), b"refused");
                Err(ClientError::Refused(why))
            }
        }
    }

    /// Sends one encoded frame and waits until the merger has made it durable.
    pub async fn send_frame(&self, frame: &[u8]) -> Result<Ack, ClientError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(conn_err)?;
        send.write_all(frame).await.map_err(conn_err)?;
        send.finish().map_err(conn_err)?;
        let reply = recv.read_to_end(64 << 10).await.map_err(conn_err)?;
        protocol::decode(&reply).map_err(conn_err)
    }

    /// The QUIC connection, for the count-push streams (see [`crate::protocol::Interest`]).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}

//! The QUIC endpoint edges ship frames to.
//!
//! A stranger gets little until its hello is accepted: a connection starts with one
//! bidirectional stream, no unidirectional ones and [`HELLO_WINDOW`] bytes of receive
//! window (see [`transport`]), and only an authenticated edge's connection is raised to
//! [`EDGE_BIDI_STREAMS`] streams and an unbounded connection window. At most
//! [`MAX_CONNECTIONS`] connections are served at once, [`MAX_PER_ADDRESS`] from one
//! address; more are refused at the door.

use crate::edges::AuthError;
use crate::ingest::Ingest;
use crate::metrics::Outcome;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tally_link::protocol::{self, Ack, Hello, HelloReply, MAX_MESSAGE, NOT_DURABLE, REFUSED};

/// Why a connection's edge was not let in.
#[derive(Debug, thiserror::Error)]
enum HelloError {
    /// No hello stream within [`HELLO_TIMEOUT`].
    #[error("no hello within 10 s")]
    Timeout,
    /// The connection ended before its hello.
    #[error("no hello: {0}")]
    NoStream(#[from] quinn::ConnectionError),
    /// The hello stream could not be read.
    #[error("bad hello: {0}")]
    Unreadable(#[from] quinn::ReadToEndError),
    /// The hello is not a [`Hello`].
    #[error("malformed hello: {0}")]
    Malformed(#[from] postcard::Error),
    /// The edge is unknown, its secret wrong, or its address throttled.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl HelloError {
    /// The application error code the connection is closed with.
    fn close_code(&self) -> u32 {
        match self {
            // the edge is told why in the hello reply (or the close reason) either way
            HelloError::Timeout
            | HelloError::NoStream(_)
            | HelloError::Unreadable(_)
            | HelloError::Malformed(_)
            | HelloError::Auth(AuthError::Refused { .. } | AuthError::Throttled { .. }) => REFUSED,
        }
    }
}

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4_096;
/// Connections served at once from one address (an edge needs one per merger).
pub const MAX_PER_ADDRESS: usize = 64;
/// Receive window of a connection until its hello is accepted.
pub const HELLO_WINDOW: u32 = 64 << 10;
/// Bidirectional streams (frames in flight) an authenticated edge may open at once.
pub const EDGE_BIDI_STREAMS: u32 = 256;
/// Unidirectional streams (count-push interest) an authenticated edge may open at once.
pub const EDGE_UNI_STREAMS: u32 = 16;

/// The transport every connection starts with: room for the hello only (one
/// bidirectional stream, no unidirectional ones, a small window), and keep-alives.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.receive_window(HELLO_WINDOW.into());
    t.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    t
}

/// Accepts connections until the endpoint closes.
/// `live_timeout_ms` is passed to the count pushes (see [`crate::push`]).
pub async fn serve(endpoint: Endpoint, ingest: Ingest, live_timeout_ms: u64) {
    let doors = tally_link::listener::Slots::new(MAX_PER_ADDRESS, MAX_CONNECTIONS);
    while let Some(incoming) = endpoint.accept().await {
        let ip = incoming.remote_address().ip();
        let Some(place) = doors.take(&ip.to_string()) else {
            tracing::warn!(%ip, "QUIC connection refused: too many open");
            incoming.refuse();
            continue;
        };
        let ingest = ingest.clone();
        tokio::spawn(async move {
            let _place = place;
            match incoming.await {
                Ok(conn) => connection(conn, ingest, live_timeout_ms).await,
                Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
            }
        });
    }
}

/// An edge must say hello within this after its handshake.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn connection(conn: Connection, ingest: Ingest, live_timeout_ms: u64) {
    let remote = conn.remote_address();
    let said = tokio::time::timeout(HELLO_TIMEOUT, hello(&conn, &ingest, remote.ip()))
        .await
        .unwrap_or(Err(HelloError::Timeout));
    let edge = match said {
        Ok(edge) => edge,
        Err(why) => {
            tracing::warn!(%remote, reason = %why, "edge refused");
            // Give the edge a moment to read the refusal before the connection goes.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
            conn.close(why.close_code().into(), why.to_string().as_bytes());
            return;
        }
    };
    // an authenticated edge gets the room frames and the count push need
    conn.set_max_concurrent_bi_streams(EDGE_BIDI_STREAMS.into());
    conn.set_max_concurrent_uni_streams(EDGE_UNI_STREAMS.into());
    conn.set_receive_window(quinn::VarInt::MAX);
    tracing::info!(%remote, edge = %edge, "edge connected");
    tokio::spawn(crate::push::serve(
        conn.clone(),
        ingest.clone(),
        live_timeout_ms,
        std::time::Duration::from_secs(1),
    ));
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let ingest = ingest.clone();
                let edge = edge.clone();
                tokio::spawn(async move {
                    if let Err(e) = frame_stream(send, recv, &ingest, &edge).await {
                        tracing::debug!(edge = %edge, error = %e, "frame stream ended early");
                    }
                });
            }
            Err(e) => {
                tracing::info!(edge = %edge, reason = %e, "edge disconnected");
                return;
            }
        }
    }
}

async fn hello(conn: &Connection, ingest: &Ingest, ip: std::net::IpAddr) -> Result<String, HelloError> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let bytes = recv.read_to_end(4096).await?;
    let h: Hello = protocol::decode(&bytes)?;
    let verdict = ingest.authenticate(ip, &h.edge_id, &h.secret);
    if matches!(verdict, Err(AuthError::Throttled { .. })) {
        tokio::time::sleep(crate::edges::THROTTLED_DELAY).await;
    }
    let reply = match &verdict {
        Ok(()) => HelloReply::Welcome,
        Err(why) => HelloReply::Refused(why.to_string()),
    };
    let _ = send.write_all(&protocol::encode(&reply)).await;
    let _ = send.finish();
    verdict?;
    Ok(h.edge_id)
}

/// Why a frame stream ended before its answer was sent (the edge resends the frame).
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// The frame could not be read.
    #[error("reading the frame: {0}")]
    Read(#[from] quinn::ReadToEndError),
    /// The answer could not be written.
    #[error("writing the answer: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was already closed.
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
}

async fn frame_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    ingest: &Ingest,
    edge: &str,
) -> Result<(), StreamError> {
    let bytes = match recv.read_to_end(MAX_MESSAGE).await {
        Ok(b) => b,
        Err(quinn::ReadToEndError::TooLong) => {
            // Not wrong, but not takeable as one frame: say so (the edge keeps it; Tally
            // edges split such frames before sending).
            tracing::error!(edge, limit = MAX_MESSAGE, "frame too large; the edge must split it");
            ingest.metrics().frames(Outcome::TooLarge, 1);
            let _ = recv.stop(0u32.into());
            let why = format!("frame too large: over {MAX_MESSAGE} bytes; split it into frames under the limit");
            send.write_all(&protocol::encode(&Ack::Later(why))).await?;
            send.finish()?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    match ingest.submit(edge, bytes).await {
        Ok(ack) => {
            match &ack {
                Ack::Rejected(why) => tracing::warn!(edge, reason = %why, "frame rejected"),
                Ack::Later(why) => tracing::error!(edge, reason = %why, "frame deferred: upgrade this merger"),
                _ => {}
            }
            send.write_all(&protocol::encode(&ack)).await?;
            send.finish()?;
        }
        // Not durable: reset the stream without an ack; the edge resends.
        Err(why) => {
            tracing::error!(edge, reason = %why, "frame not made durable");
            send.reset(NOT_DURABLE.into())?;
        }
    }
    Ok(())
}

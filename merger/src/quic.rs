//! The QUIC endpoint edges ship frames to.

use crate::ingest::Ingest;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tally_link::protocol::{self, Ack, Hello, HelloReply, MAX_MESSAGE, REFUSED};

/// Accepts connections until the endpoint closes.
/// `live_timeout_ms` is passed to the count pushes (see [`crate::push`]).
pub async fn serve(endpoint: Endpoint, ingest: Ingest, live_timeout_ms: u64) {
    while let Some(incoming) = endpoint.accept().await {
        let ingest = ingest.clone();
        tokio::spawn(async move {
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
        .unwrap_or_else(|_| Err("no hello within 10 s".to_string()));
    let edge = match said {
        Ok(edge) => edge,
        Err(why) => {
            tracing::warn!(%remote, reason = %why, "edge refused");
            // Give the edge a moment to read the refusal before the connection goes.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
            conn.close(REFUSED.into(), why.as_bytes());
            return;
        }
    };
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

async fn hello(conn: &Connection, ingest: &Ingest, ip: std::net::IpAddr) -> Result<String, String> {
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| format!("no hello: {e}"))?;
    let bytes = recv.read_to_end(4096).await.map_err(|e| format!("bad hello: {e}"))?;
    let h: Hello = protocol::decode(&bytes).map_err(|e| format!("malformed hello: {e}"))?;
    let verdict = ingest.authenticate(ip, &h.edge_id, &h.secret);
    let reply = match &verdict {
        Ok(()) => HelloReply::Welcome,
        Err(why) => HelloReply::Refused(why.clone()),
    };
    let _ = send.write_all(&protocol::encode(&reply)).await;
    let _ = send.finish();
    verdict.map(|()| h.edge_id)
}

async fn frame_stream(mut send: SendStream, mut recv: RecvStream, ingest: &Ingest, edge: &str) -> anyhow::Result<()> {
    let bytes = match recv.read_to_end(MAX_MESSAGE).await {
        Ok(b) => b,
        Err(quinn::ReadToEndError::TooLong) => {
            // Not wrong, but not takeable as one frame: say so (the edge keeps it; Tally
            // edges split such frames before sending).
            tracing::error!(edge, limit = MAX_MESSAGE, "frame too large; the edge must split it");
            ingest.write().counters.frames_too_large += 1;
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
            send.reset(2u32.into())?;
        }
    }
    Ok(())
}

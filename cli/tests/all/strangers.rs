//! Strangers cost bounded resources: the merger's and the agent's listeners close
//! half-sent and idle connections after their header timeout, and a frame upload is
//! answered before its body is read unless its edge is authenticated.

use crate::common::{Agent, Merger};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The listeners' header-read timeout (`tally_link::listener::Bounds::default`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens `n` connections to `addr` that each send half a request's headers, and one
/// that sends a whole request and then stays idle; returns them.
async fn stalled(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n + 1);
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        conns.push(c);
    }
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "the idle connection was served once");
    conns.push(idle);
    conns
}

/// Waits (bounded) until every connection is closed by the server; returns how many were.
async fn closed_by_server(conns: Vec<TcpStream>, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut closed = 0;
    for mut c in conns {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue, // the rest of a response, or a 408
                Err(_) => break,       // still open at the deadline
            }
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_idle_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(dir.path());
    let spool = tempfile::tempdir().unwrap();
    let a = Agent::start((m.quic, &m.fingerprint), "fra", spool.path(), &[]);
    let started = Instant::now();
    let on_merger = stalled(m.http, 100).await;
    let on_agent = stalled(a.http, 100).await;
    let within = HEADER_TIMEOUT + Duration::from_secs(8);
    let (cm, ca) = tokio::join!(closed_by_server(on_merger, within), closed_by_server(on_agent, within));
    println!(
        "half-sent and idle connections closed: merger {cm}/101, agent {ca}/101, after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((cm, ca), (101, 101), "every stalled connection closed by the server");
    // and both still serve
    let http = reqwest::Client::new();
    assert!(
        http.get(format!("http://{}/healthz", m.http))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(http.get(a.url("/healthz")).send().await.unwrap().status().is_success());
}

/// Sends the head of a frame upload announcing a 16 MiB body, and none of the body;
/// returns the status the merger answers and how long it took.
async fn announce_upload(addr: SocketAddr, auth: &str) -> (u16, Duration) {
    let started = Instant::now();
    let mut c = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/frames HTTP/1.1\r\nhost: x\r\nx-tally-edge: fra-1\r\n{auth}content-length: {}\r\n\r\n",
        16 << 20
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .expect("an answer before any of the body was sent")
        .unwrap();
    let status = std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap();
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_upload_is_refused_before_its_body_unless_its_edge_is_known() {
    let dir = tempfile::tempdir().unwrap();
    // plain HTTP does not take frames at all: refused from the head
    let m = Merger::start(dir.path());
    assert_eq!(
        announce_upload(m.http, "authorization: Bearer edge-secret-123\r\n")
            .await
            .0,
        403
    );
    drop(m);
    // where frames are allowed, an unknown secret or none is refused from the head too
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start_with(dir.path(), &["--http-frames"]);
    let (s, took) = announce_upload(m.http, "authorization: Bearer wrong-secret\r\n").await;
    assert_eq!(s, 401, "wrong secret");
    assert!(took < Duration::from_secs(5));
    assert_eq!(announce_upload(m.http, "").await.0, 401, "no secret");
}

/// A QUIC connection to the merger, pinned to its certificate, that says nothing.
async fn silent_quic(endpoint: &quinn::Endpoint, m: &Merger) -> Result<quinn::Connection, String> {
    endpoint
        .connect(m.quic, "tally-merger")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_peer_without_a_hello_gets_one_stream_and_one_address_a_bounded_number_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(dir.path());
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(tally_link::tls::client_config(&m.fingerprint).unwrap());
    // before its hello a connection may open the hello's stream and nothing more
    let conn = silent_quic(&endpoint, &m).await.unwrap();
    let (_hello_send, _hello_recv) = conn.open_bi().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(2), conn.open_bi()).await;
    assert!(second.is_err(), "a second stream before the hello was allowed");
    let uni = tokio::time::timeout(Duration::from_secs(1), conn.open_uni()).await;
    assert!(uni.is_err(), "a unidirectional stream before the hello was allowed");
    // one address may hold a bounded number of connections: the rest are refused
    let mut held = vec![conn];
    let mut refused = 0;
    for _ in 0..(tally_merger::quic::MAX_PER_ADDRESS + 6) {
        match silent_quic(&endpoint, &m).await {
            Ok(c) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    println!("QUIC connections held {} refused {refused}", held.len());
    assert_eq!(
        held.len(),
        tally_merger::quic::MAX_PER_ADDRESS,
        "connections from one address"
    );
    assert_eq!(refused, 7);
    // an edge that says hello on its own connection from another endpoint still gets in,
    // and gets the streams frames need
    for c in &held {
        c.close(0u32.into(), b"bye");
    }
    drop(held);
    let client = crate::common::loop_until(Duration::from_secs(15), || async {
        tally_link::client::MergerClient::connect(m.quic, &m.fingerprint, "fra-1", crate::common::SECRET)
            .await
            .ok()
    })
    .await
    .expect("the edge gets in once the silent connections are gone");
    let frames = futures_util::future::join_all((0..4).map(|_| client.connection().open_bi())).await;
    assert!(
        frames.iter().all(Result::is_ok),
        "an authenticated edge opens several streams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_a_bounded_number_of_live_streams_and_gets_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let m = Merger::start(dir.path());
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/live/live-1/events", m.http);
    let mut open = Vec::new();
    for _ in 0..tally_link::listener::STREAMS_PER_ADDRESS {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        open.push(r);
    }
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429, "one stream more than an address may hold");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("live streams"), "{body}");
    // the public reads still answer, and a stream that ends gives its slot back
    assert!(
        http.get(format!("http://{}/v1/live/live-1", m.http))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    drop(open.pop());
    let again = crate::common::loop_until(Duration::from_secs(10), || async {
        let r = http.get(&url).send().await.ok()?;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert!(again.is_some(), "the slot came back once a stream ended");
}

//! Issue 13 finding 4, replayed against the real listener: slow-header
//! clients neither keep their connections nor stop webhooks being answered.

mod common;

use std::time::Duration;

use common::{Backend, WEBHOOK_TOKEN, spawn_app_with};
use remedy::http::{ConnectionLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves the app on 127.0.0.1:0 with `limits`; returns the address.
async fn listen(extra: &[(&str, &str)], limits: ConnectionLimits) -> std::net::SocketAddr {
    let app = spawn_app_with(Backend::Sqlite, extra).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let router = app.router.clone();
    tokio::spawn(async move {
        let _app = app;
        serve(listener, router, limits, std::future::pending()).await;
    });
    addr
}

/// One webhook over a fresh connection; returns the status line.
async fn webhook(addr: std::net::SocketAddr) -> String {
    let body = common::firing("abcd000000000042", "2026-11-26T10:00:00Z");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST /v1/alertmanager HTTP/1.1\r\nhost: remedy\r\nauthorization: Bearer {WEBHOOK_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("read");
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Opens `n` connections that send half a request line and stall.
async fn slow_clients(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"POST /v1/alertm").await.expect("write");
        streams.push(stream);
    }
    streams
}

/// Whether the server closed `stream` within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or similar before the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_thousand_slow_header_clients_do_not_stop_webhooks() {
    let limits = ConnectionLimits {
        max_connections: 5000,
        header_read_timeout: Duration::from_secs(3),
    };
    let addr = listen(&[], limits).await;
    let mut slow = slow_clients(addr, 4000).await;
    // All 4,000 are open and stalled; a webhook is still answered.
    assert_eq!(webhook(addr).await, "HTTP/1.1 200 OK");
    // And the stalled ones are closed once the header timeout passes.
    for stream in slow.iter_mut().step_by(97) {
        assert!(
            closed_within(stream, Duration::from_secs(30)).await,
            "a slow-header client kept its connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_until_a_slot_frees() {
    let limits = ConnectionLimits {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(2),
    };
    let addr = listen(&[], limits).await;
    let _slow = slow_clients(addr, 8).await;
    // Give the server time to accept all eight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn(webhook(addr));
    // While the eight hold every slot, the ninth is not served...
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !waiting.is_finished(),
        "a ninth connection was served at a limit of eight"
    );
    // ...and once the header timeout frees them, it is.
    let status = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("served once slots free")
        .expect("task");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

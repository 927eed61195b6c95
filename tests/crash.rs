//! Crash safety of the real binary: every notification that was answered
//! 2xx is in the store after a SIGKILL in the middle of a stream.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, firing};
use tokio::process::{Child, Command};

on_both_stores!(every_acknowledged_notification_survives_sigkill);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start(store_url: &str, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_remedy"))
        .arg("serve")
        .env("REMEDY__STORE__URL", store_url)
        .env("REMEDY__INTAKE__BEARER_TOKEN", common::WEBHOOK_TOKEN)
        .env("REMEDY__API__TOKEN", common::API_TOKEN)
        .env("REMEDY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the remedy binary starts");
    let client = remedy::net::client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return child;
        }
        assert!(Instant::now() < deadline, "remedy did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_acknowledged_notification_survives_sigkill(backend: Backend) {
    let store_url = common::fresh_store_url(backend).await;
    let port = free_port();
    let mut child = start(&store_url, port).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..8)
        .map(|sender| {
            let acked = acked.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = remedy::net::client();
                for n in 0..u32::MAX {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let fingerprint = format!("{sender:02x}{n:014x}");
                    let sent = client
                        .post(format!("http://127.0.0.1:{port}/v1/alertmanager"))
                        .bearer_auth(common::WEBHOOK_TOKEN)
                        .header("content-type", "application/json")
                        .body(firing(&fingerprint, "2026-11-26T10:00:00Z"))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            acked.lock().expect("lock").push(fingerprint);
                        }
                        Ok(r) => panic!("unexpected answer {}", r.status()),
                        Err(_) => break, // the server is gone
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.await.expect("sender");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 50,
        "the stream was running when it was killed ({} acked)",
        acked.len()
    );

    // Restart on the same store: it recovers and everything acknowledged is there.
    let mut child = start(&store_url, free_port()).await;
    let store = remedy::store::Store::connect(&store_url, &remedy::store::StoreOptions::default())
        .await
        .expect("store");
    let stored: Vec<String> = common::column(&store, "select fingerprint from incidents").await;
    let stored: std::collections::HashSet<String> = stored.into_iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|f| !stored.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged notifications lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    child.start_kill().expect("stop");
    child.wait().await.expect("reaped");
}

//! The `http` step: one request to a URL, answered with what came back.
//! Any HTTP status is an observation (`ok`, with `healthy` telling whether it
//! was the expected one); only an invalid method, a transport error or the
//! timeout make the step fail. The body is kept up to a byte cap.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::{StepError, StepOutput};

/// Sends `method url` and reports the answer.
///
/// On any HTTP answer `ok` is true, `value` is the status code and `rows`
/// holds one row `{status, expected, healthy, body}` where `healthy` is
/// `status == expect_status` and `body` is the first `body_cap` bytes as
/// lossy UTF-8 (a character cut by the cap is dropped); the rest of the
/// body is never read. Redirects are followed only within the origin
/// ([`crate::net::client`]); one to another origin fails the step.
///
/// # Errors
/// [`StepError::Failed`] for a method that is not a valid HTTP token or a
/// transport error (its text with the source chain); [`StepError::Timeout`]
/// when `timeout` elapses before the status and capped body are read.
pub async fn probe(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    expect_status: u16,
    timeout: Duration,
    body_cap: usize,
) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| StepError::Failed(format!("invalid HTTP method {method:?}")))?;
    let (status, body) = tokio::time::timeout(timeout, send(client, method, url, body_cap))
        .await
        .map_err(|_| StepError::Timeout(timeout))??;

    let mut row = Map::new();
    row.insert("status".to_owned(), Value::from(status));
    row.insert("expected".to_owned(), Value::from(expect_status));
    row.insert("healthy".to_owned(), Value::Bool(status == expect_status));
    row.insert("body".to_owned(), Value::String(body));
    Ok(StepOutput {
        ok: true,
        error: None,
        rows: vec![row],
        value: Some(f64::from(status)),
        truncated: 0,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// The status and the capped body.
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body_cap: usize,
) -> Result<(u16, String), StepError> {
    let mut response = client
        .request(method, url)
        .send()
        .await
        .map_err(|e| StepError::Failed(error_chain(&e.without_url())))?;
    let status = response.status().as_u16();

    let capped = crate::net::read_capped(&mut response, body_cap).await;
    if let Some(e) = &capped.error {
        // The status was observed; a body cut short does not undo it.
        tracing::debug!(error = %error_chain(e), "http probe: body read failed");
    }
    Ok((status, lossy_prefix(&capped.body)))
}

/// `bytes` as lossy UTF-8, minus a trailing character the cap cut in half.
fn lossy_prefix(bytes: &[u8]) -> String {
    let bytes = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    };
    String::from_utf8_lossy(bytes).into_owned()
}

/// An error and its sources, joined with `: ` (reqwest's own text alone
/// hides the cause, e.g. "connection refused").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use serde_json::json;

    use super::*;

    async fn fake_server() -> String {
        let app = Router::new()
            .route("/ok", get(|| async { "all good" }))
            .route(
                "/down",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "database unreachable") }),
            )
            .route("/posted", post(|| async { (StatusCode::CREATED, "made") }))
            .route("/long", get(|| async { "ab€cd".repeat(100) }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    const SECS_2: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn expected_status_is_healthy() {
        let base = fake_server().await;
        let out = probe(
            &crate::net::client(),
            "GET",
            &format!("{base}/ok"),
            200,
            SECS_2,
            1024,
        )
        .await
        .expect("probe answers");
        assert!(out.ok);
        assert_eq!(out.error, None);
        assert_eq!(out.value, Some(200.0));
        assert_eq!(out.rows.len(), 1);
        assert_eq!(
            Value::Object(out.rows[0].clone()),
            json!({"status": 200, "expected": 200, "healthy": true, "body": "all good"})
        );
    }

    #[tokio::test]
    async fn unexpected_status_is_an_unhealthy_observation() {
        let base = fake_server().await;
        let out = probe(
            &crate::net::client(),
            "GET",
            &format!("{base}/down"),
            200,
            SECS_2,
            1024,
        )
        .await
        .expect("a 503 is still an answer");
        assert!(out.ok);
        assert_eq!(out.value, Some(503.0));
        assert_eq!(
            Value::Object(out.rows[0].clone()),
            json!({"status": 503, "expected": 200, "healthy": false, "body": "database unreachable"})
        );
    }

    #[tokio::test]
    async fn method_is_used() {
        let base = fake_server().await;
        let out = probe(
            &crate::net::client(),
            "POST",
            &format!("{base}/posted"),
            201,
            SECS_2,
            1024,
        )
        .await
        .expect("probe answers");
        assert_eq!(out.rows[0]["healthy"], json!(true));
        assert_eq!(out.rows[0]["body"], json!("made"));
    }

    #[tokio::test]
    async fn body_is_capped_without_splitting_a_character() {
        let base = fake_server().await;
        // "ab€" is 5 bytes; a cap of 4 cuts the euro sign, which is dropped.
        let out = probe(
            &crate::net::client(),
            "GET",
            &format!("{base}/long"),
            200,
            SECS_2,
            4,
        )
        .await
        .expect("probe answers");
        assert_eq!(out.rows[0]["body"], json!("ab"));
        let out = probe(
            &crate::net::client(),
            "GET",
            &format!("{base}/long"),
            200,
            SECS_2,
            10,
        )
        .await
        .expect("probe answers");
        assert_eq!(out.rows[0]["body"], json!("ab€cdab"));
        let out = probe(
            &crate::net::client(),
            "GET",
            &format!("{base}/long"),
            200,
            SECS_2,
            0,
        )
        .await
        .expect("probe answers");
        assert_eq!(out.rows[0]["body"], json!(""));
    }

    #[tokio::test]
    async fn connection_refused_is_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let err = probe(
            &crate::net::client(),
            "GET",
            &format!("http://{addr}/"),
            200,
            SECS_2,
            1024,
        )
        .await
        .expect_err("nothing listens");
        let StepError::Failed(text) = err else {
            panic!("expected Failed, got {err:?}");
        };
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    #[tokio::test]
    async fn slow_server_times_out() {
        let base = fake_server().await;
        let timeout = Duration::from_millis(200);
        let err = probe(
            &crate::net::client(),
            "GET",
            &format!("{base}/slow"),
            200,
            timeout,
            1024,
        )
        .await
        .expect_err("times out");
        assert_eq!(err, StepError::Timeout(timeout));
    }

    #[tokio::test]
    async fn invalid_method_is_failed() {
        let err = probe(
            &crate::net::client(),
            "GE T",
            "http://127.0.0.1:9/",
            200,
            SECS_2,
            1024,
        )
        .await
        .expect_err("invalid method");
        assert_eq!(
            err,
            StepError::Failed("invalid HTTP method \"GE T\"".to_owned())
        );
    }

    #[test]
    fn lossy_prefix_keeps_invalid_bytes_visible() {
        assert_eq!(lossy_prefix(b"ok\xffok"), "ok\u{fffd}ok");
        assert_eq!(lossy_prefix("a€".as_bytes()), "a€");
        assert_eq!(lossy_prefix(&"a€".as_bytes()[..2]), "a");
    }
}

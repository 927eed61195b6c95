//! The outbound HTTP client remedy builds for everything it calls: diagnosis
//! (`http`, `promql`), actions (`http`, `silence`), chat (Slack, Discord),
//! reconciliation and the CLI. reqwest on rustls with the ring provider, no
//! OpenSSL. Redirects are followed only within the origin (scheme, host and
//! port) of the request: a probe or an API that answers `302 Location:
//! http://169.254.169.254/…` is refused, not followed.

use std::time::Duration;

/// Most same-origin redirects one request follows.
const MAX_REDIRECTS: usize = 5;

/// Installs ring as the process's rustls provider; harmless when one is
/// installed already. Call before building any client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client with a connect timeout that follows redirects only to the
/// origin the request was sent to.
///
/// # Panics
/// Only if the TLS backend cannot be initialised, which the provider
/// installed above rules out.
#[must_use]
pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("remedy/", env!("CARGO_PKG_VERSION")))
        .redirect(same_origin_redirects())
        .build()
        .expect("TLS provider installed above")
}

/// Follows a redirect only when it stays on the first request's origin,
/// at most [`MAX_REDIRECTS`] times; any other redirect is an error that
/// names where it pointed.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        if attempt.url().origin() != first.origin() {
            let to = attempt.url().origin().ascii_serialization();
            return attempt.error(format!("redirect to another origin ({to}) refused"));
        }
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        attempt.follow()
    })
}

/// A response body read up to a cap.
#[derive(Debug)]
pub struct Capped {
    /// At most the cap's bytes.
    pub body: Vec<u8>,
    /// More was sent than the cap; the rest was never read.
    pub cut: bool,
    /// A transport error that ended the body early, after `body`.
    pub error: Option<reqwest::Error>,
}

/// Reads at most `cap` bytes of `response`'s body, chunk by chunk, and
/// never the rest: a probe or an action target that answers with
/// gigabytes costs remedy `cap` bytes.
pub async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Capped {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return Capped {
                        body,
                        cut: true,
                        error: None,
                    };
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => {
                return Capped {
                    body,
                    cut: false,
                    error: None,
                };
            }
            Err(e) => {
                return Capped {
                    body,
                    cut: false,
                    error: Some(e),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::{StatusCode, header};
    use axum::routing::get;

    async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    fn redirect(to: String) -> Router {
        Router::new()
            .route(
                "/away",
                get(move || {
                    let to = to.clone();
                    async move { (StatusCode::FOUND, [(header::LOCATION, to)]) }
                }),
            )
            .route("/here", get(|| async { "landed" }))
    }

    #[tokio::test]
    async fn redirect_to_another_origin_is_an_error() {
        let elsewhere = serve(Router::new().route("/secret", get(|| async { "secret" }))).await;
        let base = serve(redirect(format!("{elsewhere}/secret"))).await;
        let err = super::client()
            .get(format!("{base}/away"))
            .send()
            .await
            .expect_err("refused");
        let text = format!("{err:?}");
        assert!(text.contains("another origin"), "{text}");
    }

    #[tokio::test]
    async fn redirect_within_the_origin_is_followed() {
        // The Location is relative, so it resolves against the same origin.
        let base = serve(redirect("/here".to_owned())).await;
        let body = super::client()
            .get(format!("{base}/away"))
            .send()
            .await
            .expect("followed")
            .text()
            .await
            .expect("body");
        assert_eq!(body, "landed");
    }

    #[tokio::test]
    async fn read_capped_stops_at_the_cap() {
        let base = serve(Router::new().route("/big", get(|| async { "x".repeat(100_000) }))).await;
        let mut response = super::client()
            .get(format!("{base}/big"))
            .send()
            .await
            .expect("answers");
        let capped = super::read_capped(&mut response, 10).await;
        assert_eq!(capped.body, b"xxxxxxxxxx");
        assert!(capped.cut);
        assert!(capped.error.is_none());
    }
}

//! Per-source rate limits (`governor`, keyed by the peer's IP address) for
//! the routes anyone can reach: every request to `/readyz` and `/metrics`;
//! only failures on the others — a bad signature on the interaction routes,
//! wrong credentials on the webhook and the API. A verified click or an
//! authenticated webhook is never charged: Slack sends every click from a
//! few addresses, and Alertmanager is refused only by the 503 overload
//! path. Over the limit: 429 with `Retry-After`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Sources remembered before stale ones are dropped (`retain_recent`).
const MAX_SOURCES: usize = 10_000;

/// One keyed limiter; a clone shares it.
#[derive(Clone)]
pub struct SourceLimiter(Arc<DefaultKeyedRateLimiter<IpAddr>>);

impl SourceLimiter {
    #[must_use]
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self(Arc::new(RateLimiter::keyed(quota)))
    }

    /// Charges one request to `source`; `Some` is the 429 to answer.
    fn charge(&self, source: IpAddr) -> Option<Response> {
        let outcome = self.0.check_key(&source);
        if self.0.len() > MAX_SOURCES {
            self.0.retain_recent();
        }
        outcome.err().map(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from this source\n",
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            response
        })
    }
}

/// The peer, as the accept loop recorded it. Requests without one come from
/// in-process callers (tests calling the router), which are not limited.
fn source(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// Charges every request (the unauthenticated probes).
pub async fn every_request(
    State(limiter): State<SourceLimiter>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(source) = source(&request)
        && let Some(refused) = limiter.charge(source)
    {
        return refused;
    }
    next.run(request).await
}

/// Charges only requests refused for their credentials or signature (401),
/// so authenticated traffic and verified clicks are never limited; a
/// source over its rate of failed attempts gets 429 instead of 401.
pub async fn failed_auth(
    State(limiter): State<SourceLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let source = source(&request);
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(source) = source
        && let Some(refused) = limiter.charge(source)
    {
        return refused;
    }
    response
}

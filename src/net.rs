//! The outbound HTTP client shared by diagnosis steps (and, later, chat):
//! reqwest on rustls with the ring provider, no OpenSSL.

use std::time::Duration;

/// Installs ring as the process's rustls provider; harmless when one is
/// installed already. Call before building any client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client with connect timeout and no redirects to other hosts' surprises.
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
        .build()
        .expect("TLS provider installed above")
}

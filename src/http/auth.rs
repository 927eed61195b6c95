//! Webhook credentials as Alertmanager's `http_config` sends them:
//! `Authorization: Bearer <credentials>` or `Authorization: Basic <b64>`.
//! Compared through SHA-256 digests in constant time, so neither the length
//! nor the content of a guess leaks through timing.

use axum::http::{HeaderMap, header};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::IntakeSettings;

#[derive(Debug)]
pub struct IntakeAuth {
    bearer: Option<[u8; 32]>,
    basic: Option<([u8; 32], [u8; 32])>,
    open: bool,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl IntakeAuth {
    #[must_use]
    pub fn from_settings(settings: &IntakeSettings) -> Self {
        let bearer =
            (!settings.bearer_token.is_empty()).then(|| digest(settings.bearer_token.expose()));
        let basic = (!settings.basic_auth.username.is_empty()).then(|| {
            (
                digest(&settings.basic_auth.username),
                digest(settings.basic_auth.password.expose()),
            )
        });
        Self {
            open: settings.allow_unauthenticated && bearer.is_none() && basic.is_none(),
            bearer,
            basic,
        }
    }

    /// True when the request carries one of the configured credentials, or
    /// when none are configured and unauthenticated intake was allowed.
    #[must_use]
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.open {
            return true;
        }
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self
                .bearer
                .is_some_and(|expected| bool::from(digest(credentials).ct_eq(&expected)));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Some((user, password)) = self.basic else {
                return false;
            };
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
                return false;
            };
            let Ok(decoded) = String::from_utf8(decoded) else {
                return false;
            };
            let (u, p) = decoded.split_once(':').unwrap_or((&decoded, ""));
            let user_ok = digest(u).ct_eq(&user);
            let password_ok = digest(p).ct_eq(&password);
            return bool::from(user_ok & password_ok);
        }
        false
    }
}

/// Checks `Authorization: Bearer <token>` against one expected token.
#[must_use]
pub fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, token)| bool::from(digest(token.trim()).ct_eq(&digest(expected))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BasicAuthSettings, Secret};

    fn settings(token: &str, user: &str, password: &str) -> IntakeSettings {
        IntakeSettings {
            allow_unauthenticated: false,
            bearer_token: Secret::new(token),
            bearer_token_file: None,
            basic_auth: BasicAuthSettings {
                username: user.into(),
                password: Secret::new(password),
                password_file: None,
            },
            max_body_bytes: 1,
            queue_capacity: 1,
            max_batch: 1,
            max_alerts_per_notification: 1,
            max_value_bytes: 1,
        }
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().expect("header value"));
        h
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn bearer_and_basic_are_both_accepted_when_configured() {
        let auth = IntakeAuth::from_settings(&settings("tok", "am", "pw"));
        assert!(auth.allows(&with_auth("Bearer tok")));
        assert!(auth.allows(&with_auth(&basic("am", "pw"))));
        assert!(!auth.allows(&with_auth("Bearer tok2")));
        assert!(!auth.allows(&with_auth(&basic("am", "pw2"))));
        assert!(!auth.allows(&with_auth(&basic("bob", "pw"))));
        assert!(!auth.allows(&HeaderMap::new()));
    }

    #[test]
    fn basic_is_refused_when_only_bearer_is_configured() {
        let auth = IntakeAuth::from_settings(&settings("tok", "", ""));
        assert!(!auth.allows(&with_auth(&basic("", ""))));
        assert!(!auth.allows(&with_auth("Basic !!!")));
    }
}

//! `http` actions: a request to a URL (a probe base or a fixed address),
//! method as declared; any 2xx is success.

use super::{Context, Outcome};
use crate::playbook::ActionInstance;

pub async fn run(action: &ActionInstance, context: &Context<'_>) -> Outcome {
    let Some(url) = action.url.as_deref() else {
        return Outcome::new("refused", "http action without a url");
    };
    let method = action.method.as_deref().unwrap_or("POST");
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return Outcome::new("refused", format!("`{method}` is not an HTTP method"));
    };
    match context.http.request(method, url).send().await {
        Ok(r) if r.status().is_success() => Outcome::new("done", format!("HTTP {}", r.status())),
        Ok(r) => Outcome::new("failed", format!("HTTP {}", r.status())),
        Err(e) => Outcome::new("failed", e.without_url().to_string()),
    }
}

//! `http` actions: a request to a URL (a probe base or a fixed address),
//! method and body as declared; success is `expect_status`, or any 2xx.

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
    let mut request = context.http.request(method, url).timeout(context.timeout);
    if let Some(body) = &action.body {
        let json = serde_json::from_str::<serde_json::Value>(body).is_ok();
        request = request
            .header(
                "content-type",
                if json {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                },
            )
            .body(body.clone());
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status();
            let ok = action
                .expect_status
                .map_or(status.is_success(), |want| status.as_u16() == want);
            let text = r.text().await.unwrap_or_default();
            let output = format!("HTTP {status}\n{}", crate::chat::text::cut(&text, 2000));
            Outcome::new(if ok { "done" } else { "failed" }, output)
        }
        Err(e) => Outcome::new("failed", e.without_url().to_string()),
    }
}

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
        Ok(mut r) => {
            let status = r.status();
            let ok = action
                .expect_status
                .map_or(status.is_success(), |want| status.as_u16() == want);
            // At most the cap is read, never the whole body.
            let capped = crate::net::read_capped(&mut r, context.max_output_bytes).await;
            let text = String::from_utf8_lossy(&capped.body);
            let mut output = format!("HTTP {status}\n{}", crate::chat::text::cut(&text, 2000));
            if capped.cut {
                output.push_str(&format!(
                    "\n(body cut at {} bytes, executor.max_output_bytes)",
                    context.max_output_bytes
                ));
            }
            Outcome::new(if ok { "done" } else { "failed" }, output)
        }
        Err(e) => Outcome::new(
            "failed",
            crate::diagnose::http::error_chain(&e.without_url()),
        ),
    }
}

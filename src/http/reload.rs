//! `POST /-/reload`, as Prometheus and Alertmanager have it: reload the
//! settings, the playbooks and the escalation matrix (what SIGHUP does),
//! and answer with the outcome. It changes what remedy does, so it takes a
//! person's token or the API token, never the webhook's credentials.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::auth::bearer_matches;
use super::incidents::bearer;
use super::{ApiError, AppState};

/// 200 with what was loaded and which changed settings need a restart;
/// 422 with every problem when the configuration is refused (and the
/// running one stays).
pub async fn reload(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let person =
        bearer(&headers).and_then(|t| state.chat().directory.authenticate(t).map(str::to_owned));
    if person.is_none() && !bearer_matches(&headers, state.settings().api.token.expose()) {
        return Err(ApiError::Unauthorized);
    }
    tracing::info!(
        person = person.as_deref().unwrap_or("api.token"),
        "reload requested"
    );
    let live = state.live.clone();
    // Reading files and building pools: off the async threads.
    match tokio::task::spawn_blocking(move || live.reload()).await {
        Ok(Ok(reloaded)) => Ok(Json(json!({
            "result": "reloaded",
            "playbooks": reloaded.playbooks,
            "escalation_rows": reloaded.escalation_rows,
            "needs_restart": reloaded.needs_restart,
        }))),
        Ok(Err(error)) => Err(ApiError::InvalidConfiguration(error.problems)),
        Err(error) => {
            tracing::error!(%error, "reload task failed");
            Err(ApiError::Unavailable("reload failed"))
        }
    }
}

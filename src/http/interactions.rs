//! Decisions: button clicks from Slack and Discord (signature checked over
//! the raw body before anything is parsed), from Mattermost (whose server
//! signs nothing: the HMAC remedy put in each button's context is checked
//! before the click is acted on) and the local API behind
//! `remedy approve` / `remedy reject`. Each click is authorized against the
//! action's approver roles and recorded once; the chat message is updated
//! by the worker afterwards, so a reply always leaves within Slack's and
//! Discord's three seconds.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::incidents::{authenticate_person, unavailable};
use super::{ApiError, AppState};
use crate::approvals::{Actor, Channel, Refusal};
use crate::chat::{ChatClient, Control, discord, mattermost, slack};
use crate::domain::{IncidentId, now_millis};
use crate::store::{Decision, DecisionOutcome, SilenceRules, StoreError};

/// How long a click's reply may wait for the decision to be recorded;
/// beyond it the reply acknowledges and the work finishes on its own.
const REPLY_WITHIN: Duration = Duration::from_millis(2_500);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unix_now() -> i64 {
    now_millis() / 1000
}

fn refused_signature(error: &slack::SignatureError) -> Response {
    metrics::counter!("remedy_interactions_refused_total", "reason" => "signature").increment(1);
    tracing::warn!(%error, "interaction refused");
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "unauthorized", "message": error.to_string()})),
    )
        .into_response()
}

/// Authorizes and records one click.
async fn decide(
    state: &AppState,
    who: &Actor,
    approval_id: i64,
    digest: &str,
    decision: Decision,
) -> Result<DecisionOutcome, StoreError> {
    let Some((_, roles)) = state.store.approval(approval_id).await? else {
        return Ok(DecisionOutcome::Refused(
            crate::approvals::Refusal::UnknownApproval.message(),
        ));
    };
    let authorized = state.chat.authorized(who, &roles).await;
    let outcome = state
        .store
        .decide(approval_id, digest, who, decision, authorized, now_millis())
        .await?;
    let result = match &outcome {
        DecisionOutcome::Recorded { repeat: true, .. } => "repeat",
        DecisionOutcome::Recorded { .. } => "recorded",
        DecisionOutcome::Refused(_) => "refused",
    };
    metrics::counter!("remedy_decisions_total", "decision" => decision.as_str(), "result" => result)
        .increment(1);
    if matches!(outcome, DecisionOutcome::Recorded { repeat: false, .. }) {
        state.work_ready.notify_one();
    }
    Ok(outcome)
}

/// Authorizes and records an Acknowledge, Snooze or Silence: allowed to
/// the roles the incident's escalation policy names.
async fn control(
    state: &AppState,
    who: &Actor,
    incident: IncidentId,
    control: Control,
) -> Result<DecisionOutcome, StoreError> {
    let now = now_millis();
    let roles = state
        .store
        .escalation(incident)
        .await?
        .map(|e| e.roles)
        .unwrap_or_default();
    let authorized = state.chat.authorized(who, &roles).await;
    let approver = who;
    let offered = |list: &[Duration], seconds: u64| list.iter().any(|d| d.as_secs() == seconds);
    let lengths = |list: &[Duration]| {
        list.iter()
            .map(|d| crate::escalation::human(*d))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (name, outcome) = match control {
        Control::Ack => (
            "ack",
            state
                .store
                .acknowledge(incident, approver, authorized, now)
                .await?,
        ),
        Control::Snooze(seconds) if !offered(&state.matrix.snooze, seconds) => (
            "snooze",
            DecisionOutcome::Refused(format!(
                "snooze for one of: {}",
                lengths(&state.matrix.snooze)
            )),
        ),
        Control::Snooze(seconds) => (
            "snooze",
            state
                .store
                .snooze(
                    incident,
                    approver,
                    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
                    authorized,
                    now,
                )
                .await?,
        ),
        Control::Silence(seconds) => {
            let key = format!(
                "silence-{}",
                crate::escalation::human(Duration::from_secs(seconds))
            );
            let offered = silence_lengths(state);
            let rules = SilenceRules {
                seconds,
                offered: &offered,
                required: &state.settings.silence.required_labels,
            };
            let outcome = match crate::engine::execute::silence_action(&key) {
                Some(action) => {
                    state
                        .store
                        .request_silence(
                            incident,
                            approver,
                            authorized,
                            &rules,
                            &key,
                            &action.title,
                            &roles,
                            &crate::engine::diagnose::action_digest(&action),
                            now,
                        )
                        .await?
                }
                None => DecisionOutcome::Refused("unknown silence length".into()),
            };
            ("silence", outcome)
        }
    };
    let result = match &outcome {
        DecisionOutcome::Recorded { repeat: true, .. } => "repeat",
        DecisionOutcome::Recorded { .. } => "recorded",
        DecisionOutcome::Refused(_) => "refused",
    };
    metrics::counter!("remedy_controls_total", "control" => name, "result" => result).increment(1);
    if matches!(outcome, DecisionOutcome::Recorded { repeat: false, .. }) {
        state.work_ready.notify_one();
    }
    Ok(outcome)
}

/// The matrix's silence lengths, in seconds.
fn silence_lengths(state: &AppState) -> Vec<u64> {
    state.matrix.silence.iter().map(Duration::as_secs).collect()
}

/// What a Silence would post, checked by the same rules as the request
/// ([`crate::approvals::control_refusal`], then
/// [`crate::approvals::silence_refusal`]) and recorded nowhere: the
/// matchers (`name="value"`), or the reason it would be refused. For the
/// confirmations shown before anything is silenced.
async fn silence_preview(
    state: &AppState,
    who: &Actor,
    incident: IncidentId,
    seconds: u64,
) -> Result<Result<Vec<String>, String>, StoreError> {
    let escalation = state.store.escalation(incident).await?;
    let roles = escalation
        .as_ref()
        .map(|e| e.roles.clone())
        .unwrap_or_default();
    let authorized = state.chat.authorized(who, &roles).await;
    let Some(scope) = state.store.silence_scope(incident).await? else {
        return Ok(Err(Refusal::NoEscalation.message()));
    };
    if let Some(refusal) =
        crate::approvals::control_refusal(authorized, escalation.map(|_| scope.status))
    {
        return Ok(Err(refusal.message()));
    }
    let offered = silence_lengths(state);
    let rules = SilenceRules {
        seconds,
        offered: &offered,
        required: &state.settings.silence.required_labels,
    };
    Ok(match scope.refusal(&rules) {
        Some(refusal) => Err(refusal.message()),
        None => Ok(scope
            .matchers
            .iter()
            .map(crate::approvals::SilenceMatcher::text)
            .collect()),
    })
}

/// The part of Slack's interaction payload remedy reads.
#[derive(Debug, Deserialize)]
pub struct SlackPayload {
    #[serde(rename = "type")]
    pub kind: String,
    pub user: SlackUser,
    #[serde(default)]
    pub actions: Vec<SlackAction>,
    #[serde(default)]
    pub response_url: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SlackUser {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct SlackAction {
    pub action_id: String,
    #[serde(default)]
    pub value: String,
}

/// Parses the (already verified) body of a Slack interaction: the form
/// field `payload`, JSON. The error names the field.
pub fn parse_slack(body: &[u8]) -> Result<SlackPayload, (&'static str, String)> {
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or(("payload", "form field `payload` is missing".to_owned()))?;
    serde_json::from_str(&payload).map_err(|e| ("payload", e.to_string()))
}

/// `POST /v1/interactions/slack`: Slack's signed form post with a
/// `payload` of `block_actions`.
pub async fn slack(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let secret = &state.chat.slack_signing_secret;
    if secret.is_empty() {
        return refused_signature(&slack::SignatureError::Missing);
    }
    if let Err(e) = slack::verify(
        secret,
        header(&headers, "x-slack-request-timestamp"),
        header(&headers, "x-slack-signature"),
        &body,
        unix_now(),
    ) {
        return refused_signature(&e);
    }
    let payload = match parse_slack(&body) {
        Ok(p) => p,
        Err((field, message)) => return bad_request(field, &message),
    };
    if payload.kind != "block_actions" {
        return StatusCode::OK.into_response();
    }
    let who = state.chat.directory.slack(&payload.user.id);
    let task = tokio::spawn(async move {
        for action in &payload.actions {
            let outcome = if let Some(c) = Control::parse_slack(&action.action_id) {
                let Ok(incident) = action.value.parse::<i64>() else {
                    continue;
                };
                control(&state, &who, IncidentId(incident), c).await
            } else {
                let decision = match action.action_id.as_str() {
                    "approve" => Decision::Approve,
                    "reject" => Decision::Reject,
                    _ => continue,
                };
                let Some((id, digest)) = action
                    .value
                    .split_once(':')
                    .and_then(|(id, d)| Some((id.parse::<i64>().ok()?, d.to_owned())))
                else {
                    continue;
                };
                decide(&state, &who, id, &digest, decision).await
            };
            let reason = match outcome {
                Ok(DecisionOutcome::Refused(reason)) => reason,
                Ok(DecisionOutcome::Recorded { .. }) => continue,
                Err(error) => {
                    tracing::error!(%error, "click could not be recorded");
                    "remedy could not record this click; try again".to_owned()
                }
            };
            if let (ChatClient::Slack(client), Some(url)) =
                (&state.chat.client, payload.response_url.as_deref())
                && let Err(error) = client.respond_ephemeral(url, &reason).await
            {
                tracing::warn!(%error, "ephemeral refusal not delivered");
            }
        }
    });
    // Answer within Slack's 3 s whether or not the work is done.
    let _ = tokio::time::timeout(REPLY_WITHIN, task).await;
    StatusCode::OK.into_response()
}

fn bad_request(field: &str, message: &str) -> Response {
    ApiError::BadParameter {
        field: field.into(),
        message: message.into(),
    }
    .into_response()
}

/// The part of a Discord interaction remedy reads (unknown fields are
/// ignored: Discord adds them often).
#[derive(Debug, Deserialize)]
pub struct DiscordInteraction {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default)]
    pub data: Option<DiscordData>,
    #[serde(default)]
    pub member: Option<DiscordMember>,
    #[serde(default)]
    pub user: Option<DiscordUser>,
}

#[derive(Debug, Deserialize)]
pub struct DiscordData {
    #[serde(default)]
    pub custom_id: String,
}

#[derive(Debug, Deserialize)]
pub struct DiscordMember {
    pub user: DiscordUser,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct DiscordUser {
    pub id: String,
}

/// Parses the (already verified) body of a Discord interaction.
pub fn parse_discord(body: &[u8]) -> Result<DiscordInteraction, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// An ephemeral reply (type 4, flags 64). The text may quote alert values
/// (a refused silence names the incident it would mute): escaped, as Slack's
/// ephemeral replies are.
fn ephemeral(text: &str) -> Response {
    Json(json!({
        "type": 4,
        "data": {
            "content": crate::chat::text::discord_escape(text),
            "flags": 64,
            "allowed_mentions": {"parse": []}
        }
    }))
    .into_response()
}

/// `POST /v1/interactions/discord`: Ed25519-signed interactions. PING gets
/// PONG; a button gets a deferred update (the worker edits the message) or
/// an ephemeral refusal.
pub async fn discord(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(verifier) = state.chat.discord_verifier.as_ref() else {
        return refused_signature(&slack::SignatureError::Missing);
    };
    if let Err(e) = discord::verify(
        verifier,
        header(&headers, "x-signature-timestamp"),
        header(&headers, "x-signature-ed25519"),
        &body,
        unix_now(),
    ) {
        return refused_signature(&e);
    }
    let interaction = match parse_discord(&body) {
        Ok(i) => i,
        Err(e) => return bad_request("body", &e),
    };
    match interaction.kind {
        1 => return Json(json!({"type": 1})).into_response(),
        3 => {}
        _ => return ephemeral("remedy only handles its own buttons"),
    }
    let custom_id = interaction.data.map(|d| d.custom_id).unwrap_or_default();
    let button = if let Some((approve, id, digest)) = discord::parse_custom_id(&custom_id) {
        DiscordButton::Decide(approve, id, digest)
    } else if let Some((incident, seconds)) = discord::parse_silence_confirm(&custom_id) {
        DiscordButton::ConfirmSilence(incident, seconds)
    } else if let Some((c, incident)) = Control::parse_discord(&custom_id) {
        DiscordButton::Control(c, incident)
    } else {
        return ephemeral("this button is not remedy's");
    };
    let (user, roles) = match (interaction.member, interaction.user) {
        (Some(m), _) => (m.user.id, m.roles),
        (None, Some(u)) => (u.id, Vec::new()),
        (None, None) => return bad_request("member", "no member or user in the interaction"),
    };
    let who = state.chat.directory.discord(&user, roles);
    let task = tokio::spawn(async move {
        match button {
            DiscordButton::Decide(approve, id, digest) => {
                let decision = if approve {
                    Decision::Approve
                } else {
                    Decision::Reject
                };
                decide(&state, &who, id, &digest, decision)
                    .await
                    .map(DiscordAnswer::Outcome)
            }
            // A Silence click only shows what would be silenced, to the
            // clicker alone; its Confirm button requests it.
            DiscordButton::Control(Control::Silence(seconds), incident) => Ok(
                match silence_preview(&state, &who, IncidentId(incident), seconds).await? {
                    Ok(matchers) => DiscordAnswer::Reply(discord::silence_confirmation(
                        incident, seconds, &matchers,
                    )),
                    Err(reason) => DiscordAnswer::Outcome(DecisionOutcome::Refused(reason)),
                },
            ),
            DiscordButton::ConfirmSilence(incident, seconds) => {
                let outcome = control(
                    &state,
                    &who,
                    IncidentId(incident),
                    Control::Silence(seconds),
                )
                .await?;
                if let DecisionOutcome::Recorded { .. } = outcome {
                    let matchers: Vec<String> = state
                        .store
                        .silence_scope(IncidentId(incident))
                        .await?
                        .map(|s| {
                            s.matchers
                                .iter()
                                .map(crate::approvals::SilenceMatcher::text)
                                .collect()
                        })
                        .unwrap_or_default();
                    return Ok(DiscordAnswer::Reply(discord::silence_requested(
                        seconds, &matchers,
                    )));
                }
                Ok(DiscordAnswer::Outcome(outcome))
            }
            DiscordButton::Control(c, incident) => control(&state, &who, IncidentId(incident), c)
                .await
                .map(DiscordAnswer::Outcome),
        }
    });
    match tokio::time::timeout(REPLY_WITHIN, task).await {
        Ok(Ok(Ok(DiscordAnswer::Reply(body)))) => Json(body).into_response(),
        Ok(Ok(Ok(DiscordAnswer::Outcome(DecisionOutcome::Refused(reason))))) => ephemeral(&reason),
        Ok(Ok(Err(error))) => {
            tracing::error!(%error, "click could not be recorded");
            ephemeral("remedy could not record this click; try again")
        }
        // Recorded, or still recording: acknowledge; the worker edits the message.
        _ => Json(json!({"type": 6})).into_response(),
    }
}

/// A Discord button of remedy's, by its `custom_id`.
enum DiscordButton {
    /// `ap:` / `rj:`: approve or reject an approval request.
    Decide(bool, i64, String),
    /// `sc:`: the Confirm button of a Silence confirmation.
    ConfirmSilence(i64, u64),
    /// `ack:`, `sz:`, `si:`.
    Control(Control, i64),
}

/// How a Discord click is answered: from its outcome, or with a message.
enum DiscordAnswer {
    Outcome(DecisionOutcome),
    Reply(Value),
}

/// What remedy reads of the two requests a Mattermost server sends to
/// `integration.url`: a button click (`PostActionIntegrationRequest`, with
/// the button's `context`) and a dialog submission (`SubmitDialogRequest`,
/// `type: "dialog_submission"`, with the dialog's `state`). Other fields
/// are ignored.
#[derive(Debug, Deserialize)]
pub struct MattermostRequest {
    pub user_id: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub trigger_id: String,
    #[serde(default)]
    pub context: Option<Value>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub cancelled: bool,
}

/// Parses a Mattermost request; the error names the field.
pub fn parse_mattermost(body: &[u8]) -> Result<MattermostRequest, (&'static str, String)> {
    let request: MattermostRequest =
        serde_json::from_slice(body).map_err(|e| ("body", e.to_string()))?;
    if request.user_id.is_empty() || !request.user_id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(("user_id", "a Mattermost user id is required".into()));
    }
    Ok(request)
}

fn refused_context(error: mattermost::ContextError) -> Response {
    metrics::counter!("remedy_interactions_refused_total", "reason" => "context").increment(1);
    tracing::warn!(%error, "mattermost interaction refused");
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "unauthorized", "message": error.to_string()})),
    )
        .into_response()
}

/// Carries out what a verified context asks for.
async fn mattermost_act(
    state: &AppState,
    who: &Actor,
    intent: mattermost::Intent,
) -> Result<DecisionOutcome, StoreError> {
    match intent {
        mattermost::Intent::Decide {
            approve,
            approval,
            digest,
        } => {
            let decision = if approve {
                Decision::Approve
            } else {
                Decision::Reject
            };
            decide(state, who, approval, &digest, decision).await
        }
        mattermost::Intent::Control {
            incident,
            control: c,
        } => control(state, who, IncidentId(incident), c).await,
    }
}

/// How a Mattermost click or submission is answered.
enum MattermostAnswer {
    /// Recorded: the worker updates the post.
    Done,
    /// Shown to the clicker alone.
    Refused(String),
    /// A confirmation dialog was opened.
    Confirming,
}

/// The confirmation a signed click needs first: Silence shows the exact
/// matchers (or why it would be refused); approving an action that is not
/// `safe` asks once more, as Slack's confirm dialog does.
async fn mattermost_confirm(
    state: &AppState,
    client: &mattermost::MattermostClient,
    who: &Actor,
    trigger_id: &str,
    signed: &mattermost::Signed,
    context: &Value,
) -> Result<MattermostAnswer, StoreError> {
    let (title, text, submit) = match &signed.intent {
        mattermost::Intent::Control {
            incident,
            control: Control::Silence(seconds),
        } => match silence_preview(state, who, IncidentId(*incident), *seconds).await? {
            Ok(matchers) => {
                let length = crate::escalation::human(Duration::from_secs(*seconds));
                (
                    format!("Silence for {length}?"),
                    mattermost::silence_text(*seconds, &matchers),
                    format!("Silence {length}"),
                )
            }
            Err(reason) => return Ok(MattermostAnswer::Refused(reason)),
        },
        mattermost::Intent::Decide { approval, .. } => {
            let Some((incident, roles)) = state.store.approval(*approval).await? else {
                return Ok(MattermostAnswer::Refused(
                    Refusal::UnknownApproval.message(),
                ));
            };
            // Someone who may not decide is refused (and the refusal
            // recorded) at once, not after confirming.
            if !state.chat.authorized(who, &roles).await {
                return Ok(
                    match mattermost_act(state, who, signed.intent.clone()).await? {
                        DecisionOutcome::Refused(reason) => MattermostAnswer::Refused(reason),
                        DecisionOutcome::Recorded { .. } => MattermostAnswer::Done,
                    },
                );
            }
            let incident = incident.0;
            (
                "Approve this action?".to_owned(),
                format!(
                    "Approve action request {approval} of incident #{incident}? It is disruptive \
                     or destructive: the report shows exactly what it runs."
                ),
                "Approve".to_owned(),
            )
        }
        mattermost::Intent::Control { .. } => {
            return Ok(MattermostAnswer::Refused("nothing to confirm".into()));
        }
    };
    let dialog = mattermost::confirmation_dialog(
        trigger_id,
        &client.interactions_url,
        &title,
        &text,
        &submit,
        context,
    );
    Ok(match client.open_dialog(&dialog).await {
        Ok(()) => MattermostAnswer::Confirming,
        Err(error) => {
            tracing::warn!(%error, "mattermost confirmation dialog not opened");
            MattermostAnswer::Refused(
                "remedy could not open the confirmation; click again".to_owned(),
            )
        }
    })
}

/// `POST /v1/interactions/mattermost`: button clicks and dialog
/// submissions from the Mattermost server. The signed context (or the
/// dialog's `state`, the same context) is verified before anything else;
/// then the clicker is authorized as on the other platforms. A click is
/// answered with `{}` (the worker updates the post) or an `ephemeral_text`
/// refusal; a submission with `{}` or `{"error": …}`, which the dialog shows.
pub async fn mattermost(State(state): State<AppState>, body: Bytes) -> Response {
    let ChatClient::Mattermost(client) = &state.chat.client else {
        return refused_context(mattermost::ContextError::Missing);
    };
    let secret = client.context_secret.clone();
    let request = match parse_mattermost(&body) {
        Ok(r) => r,
        Err((field, message)) => return bad_request(field, &message),
    };
    // remedy's dialogs do not ask to hear of a cancel; one is ignored.
    if request.kind == "dialog_cancellation" || request.cancelled {
        return Json(json!({})).into_response();
    }
    let submission = request.kind == "dialog_submission";
    let context = if submission {
        request
            .state
            .as_deref()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
    } else {
        request.context.clone()
    };
    let signed = match mattermost::verify(&secret, context.as_ref()) {
        Ok(s) => s,
        Err(e) => return refused_context(e),
    };
    let who = state.chat.directory.mattermost(&request.user_id);
    let context = context.unwrap_or_default();
    let task = tokio::spawn(async move {
        if signed.confirm && !submission {
            let ChatClient::Mattermost(client) = &state.chat.client else {
                return Ok(MattermostAnswer::Refused("not configured".into()));
            };
            return mattermost_confirm(
                &state,
                client,
                &who,
                &request.trigger_id,
                &signed,
                &context,
            )
            .await;
        }
        Ok(match mattermost_act(&state, &who, signed.intent).await? {
            DecisionOutcome::Refused(reason) => MattermostAnswer::Refused(reason),
            DecisionOutcome::Recorded { .. } => MattermostAnswer::Done,
        })
    });
    let answer = match tokio::time::timeout(REPLY_WITHIN, task).await {
        Ok(Ok(Ok(answer))) => answer,
        Ok(Ok(Err(error))) => {
            tracing::error!(%error, "click could not be recorded");
            MattermostAnswer::Refused("remedy could not record this click; try again".into())
        }
        // Still recording: acknowledge; the worker updates the post.
        _ => MattermostAnswer::Done,
    };
    // Refusals may quote alert values: escaped as in the report.
    match (answer, submission) {
        (MattermostAnswer::Refused(reason), false) => {
            Json(json!({"ephemeral_text": mattermost::escape(&reason)})).into_response()
        }
        (MattermostAnswer::Refused(reason), true) => {
            Json(json!({"error": crate::chat::text::one_line(&reason)})).into_response()
        }
        (MattermostAnswer::Done | MattermostAnswer::Confirming, _) => {
            Json(json!({})).into_response()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiDecision {
    /// Optional and only a check: the person is the one the token names;
    /// a different name is refused with 403 and nothing is recorded.
    #[serde(default, rename = "as")]
    approver: Option<String>,
}

/// The person behind a deciding request: the token's, never the body's.
/// `as` (kept so that old scripts fail loudly rather than act as someone
/// else) must name that same person. The CLI says `x-remedy-channel:
/// console`; any other client is recorded as `api`.
fn api_actor(
    state: &AppState,
    headers: &HeaderMap,
    claimed: Option<&str>,
) -> Result<Actor, ApiError> {
    let person = authenticate_person(state, headers)?;
    if let Some(claimed) = claimed
        && claimed != person
    {
        metrics::counter!("remedy_interactions_refused_total", "reason" => "impersonation")
            .increment(1);
        return Err(ApiError::Forbidden(format!(
            "your token is {person}'s; `as` may only name yourself"
        )));
    }
    let channel = match header(headers, "x-remedy-channel") {
        Some("console") => Channel::Console,
        _ => Channel::Api,
    };
    Ok(state.chat.directory.person(&person, channel))
}

fn parse_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    field: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadParameter {
        field: field.into(),
        message: e.to_string(),
    })
}

/// `POST /v1/incidents/{id}/actions/{key}/{approve|reject}` with a
/// person's token: the console's way to decide, as that person.
pub async fn decide_by_api(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, key, decision)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authenticate_person(&state, &headers)?;
    let id: IncidentId = id.parse().map_err(|_| ApiError::BadParameter {
        field: "id".into(),
        message: "must be an integer".into(),
    })?;
    let decision = match decision.as_str() {
        "approve" => Decision::Approve,
        "reject" => Decision::Reject,
        _ => return Err(ApiError::NotFound("no such route".into())),
    };
    let request: ApiDecision = parse_body(&body, "as")?;
    let who = api_actor(&state, &headers, request.approver.as_deref())?;
    let (approval, digest) = state
        .store
        .approval_by_key(id, &key)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| ApiError::NotFound(format!("incident {id} has no action `{key}`")))?;
    let outcome = decide(&state, &who, approval, &digest, decision)
        .await
        .map_err(|e| unavailable(&e))?;
    match outcome {
        DecisionOutcome::Recorded {
            state,
            approvals,
            quorum,
            repeat,
        } => Ok(Json(
            json!({"result": "recorded", "state": state, "approvals": approvals,
                            "quorum": quorum, "repeat": repeat, "person": who.person}),
        )),
        DecisionOutcome::Refused(reason) => Err(ApiError::Forbidden(reason)),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiControl {
    /// Optional and only a check, as in [`ApiDecision`].
    #[serde(default, rename = "as")]
    approver: Option<String>,
    /// Snooze / silence length (`15m`), one the matrix offers.
    #[serde(default, rename = "for")]
    length: Option<String>,
    /// Silence only: answer with the matchers the silence would post (or
    /// the reason it would be refused) and silence nothing.
    #[serde(default)]
    dry_run: bool,
    /// Silence only, and required: the matchers (`name="value"`) the
    /// person was shown and confirmed; a silence whose matchers differ is
    /// refused. `remedy silence` previews them and asks first.
    #[serde(default)]
    matchers: Option<Vec<String>>,
}

/// `POST /v1/incidents/{id}/{ack|snooze|silence}` with a person's token
/// and `{"for": "15m"}`: the console's Ack, Snooze and Silence. A silence
/// also takes `"dry_run": true` (the matchers it would post, or why it
/// would be refused) and needs `"matchers"`: the ones the person confirmed.
pub async fn control_by_api(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authenticate_person(&state, &headers)?;
    let id: IncidentId = id.parse().map_err(|_| ApiError::BadParameter {
        field: "id".into(),
        message: "must be an integer".into(),
    })?;
    let request: ApiControl = parse_body(&body, "body")?;
    let who = api_actor(&state, &headers, request.approver.as_deref())?;
    let seconds = || -> Result<u64, ApiError> {
        let text = request
            .length
            .as_deref()
            .ok_or_else(|| ApiError::BadParameter {
                field: "for".into(),
                message: "a length is required (`15m`)".into(),
            })?;
        humantime::parse_duration(text)
            .map(|d| d.as_secs())
            .map_err(|e| ApiError::BadParameter {
                field: "for".into(),
                message: e.to_string(),
            })
    };
    let c = match verb.as_str() {
        "ack" => Control::Ack,
        "snooze" => Control::Snooze(seconds()?),
        "silence" => Control::Silence(seconds()?),
        _ => return Err(ApiError::NotFound("no such route".into())),
    };
    if let Control::Silence(seconds) = c {
        // The person sees the exact matchers before anything is silenced:
        // a dry run shows them, and the silence needs them back. A silence
        // that would be refused goes on to `control`, which refuses it with
        // the reason and records the refusal.
        let preview = silence_preview(&state, &who, id, seconds)
            .await
            .map_err(|e| unavailable(&e))?;
        let length = crate::escalation::human(Duration::from_secs(seconds));
        if request.dry_run {
            let matchers = preview.map_err(ApiError::Forbidden)?;
            return Ok(Json(json!({
                "result": "preview", "for": length, "matchers": matchers,
                "person": who.person,
            })));
        }
        if let Ok(matchers) = preview {
            match &request.matchers {
                None => {
                    return Err(ApiError::BadParameter {
                        field: "matchers".into(),
                        message: format!(
                            "a silence needs the matchers you confirmed; it would silence {} \
                             for {length} (preview with \"dry_run\": true; `remedy silence` \
                             asks)",
                            matchers.join(", ")
                        ),
                    });
                }
                Some(confirmed) if *confirmed != matchers => {
                    return Err(ApiError::BadParameter {
                        field: "matchers".into(),
                        message: format!(
                            "the silence's matchers are {}, not the ones confirmed",
                            matchers.join(", ")
                        ),
                    });
                }
                Some(_) => {}
            }
        }
    } else if request.dry_run || request.matchers.is_some() {
        return Err(ApiError::BadParameter {
            field: if request.dry_run {
                "dry_run"
            } else {
                "matchers"
            }
            .into(),
            message: "only a silence takes it".into(),
        });
    }
    match control(&state, &who, id, c)
        .await
        .map_err(|e| unavailable(&e))?
    {
        DecisionOutcome::Recorded { state, repeat, .. } => Ok(Json(
            json!({"result": "recorded", "state": state, "repeat": repeat}),
        )),
        DecisionOutcome::Refused(reason) => Err(ApiError::Forbidden(reason)),
    }
}

//! Reconciliation: the resolve that never came. A periodic work item
//! (`reconcile`, one pending row, so one replica runs each pass) asks every
//! configured Alertmanager peer for its alerts (`GET /api/v2/alerts`, active,
//! silenced, inhibited and unprocessed) and closes a firing incident whose
//! alert none of them has any more, once it has been missing for
//! `reconcile.grace`. A run that cannot reach every peer changes nothing: a
//! partial view never closes an incident. It also holds an incident's
//! escalation back while Alertmanager reports its alert silenced.
//! [`step`] is one pass, public so tests drive it with their own clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{Engine, WorkError};
use crate::config::{AlertmanagerAuth, Settings};
use crate::domain::{IncidentId, Millis, to_millis};
use crate::store::{ClaimedWork, SilenceState, StoreError, WorkKind, redact_url};

/// What the reconciler needs from the settings, and its HTTP client.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pub enabled: bool,
    /// Base URLs of every Alertmanager peer.
    pub urls: Vec<String>,
    pub auth: AlertmanagerAuth,
    pub interval: Duration,
    pub grace: Duration,
    pub http: reqwest::Client,
}

impl Reconciler {
    #[must_use]
    pub fn from_settings(settings: &Settings, http: reqwest::Client) -> Self {
        Self {
            enabled: settings.reconcile_enabled(),
            urls: settings.alertmanager.urls.clone(),
            auth: settings.alertmanager.auth(),
            interval: settings.reconcile.interval,
            grace: settings.reconcile.grace,
            http,
        }
    }

    fn millis(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
    }

    /// One request's limit: a hung peer must not hold the run past its
    /// interval.
    fn timeout(&self) -> Duration {
        self.interval
            .clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let request = self.http.get(url).timeout(self.timeout());
        let request = match &self.auth {
            AlertmanagerAuth::None => request,
            AlertmanagerAuth::Bearer(token) => request.bearer_auth(token.expose()),
            AlertmanagerAuth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
        };
        // Errors name neither the URL (it may carry credentials) nor them.
        let response = request
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        response
            .json()
            .await
            .map_err(|e| format!("unexpected body: {}", e.without_url()))
    }
}

/// One alert of `GET /api/v2/alerts` (`gettableAlert` in Alertmanager's
/// `api/v2/openapi.yaml`): only the fields reconciliation reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GettableAlert {
    pub fingerprint: String,
    /// Millisecond precision here (the webhook carries nanoseconds).
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: time::OffsetDateTime,
    pub status: AlertStatus,
}

/// `alertStatus`: `state` is `active`, `suppressed` or `unprocessed`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertStatus {
    pub state: String,
    #[serde(default)]
    pub silenced_by: Vec<String>,
    #[serde(default)]
    pub inhibited_by: Vec<String>,
}

/// The part of `gettableSilence` (`GET /api/v2/silence/{id}`) read here.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GettableSilence {
    #[serde(with = "time::serde::rfc3339")]
    ends_at: time::OffsetDateTime,
    status: SilenceStatus,
}

#[derive(Debug, Clone, Deserialize)]
struct SilenceStatus {
    state: String,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// Peers that could not be asked (redacted URL and why). Non-empty:
    /// the pass changed nothing.
    pub unreachable: Vec<String>,
    /// Distinct alerts the peers reported.
    pub alerts: usize,
    /// Incidents closed by this pass.
    pub closed: Vec<IncidentId>,
    /// Firing incidents whose alert is missing but still within the grace.
    pub absent: usize,
    /// Firing incidents whose alert is silenced.
    pub silenced: usize,
}

impl RunOutcome {
    #[must_use]
    pub fn complete(&self) -> bool {
        self.unreachable.is_empty()
    }
}

/// How the peers together see one alert.
#[derive(Debug, Default)]
struct Seen {
    /// Peers that listed it.
    peers: usize,
    /// Peers that listed it silenced.
    silenced_on: usize,
    silences: BTreeSet<String>,
    /// A peer that listed it, to ask about its silences.
    peer: usize,
    /// The earliest `startsAt` any peer has for it.
    starts_at: Millis,
}

/// Whether the alert Alertmanager lists is the incident's episode. Merges
/// only ever move an alert's `startsAt` earlier (protocols.md 1.5a), so a
/// listed `startsAt` later than the incident's means its episode ended and
/// a new one began (remedy missed the resolve, and maybe the new firing):
/// the incident's alert is gone all the same. Compared in milliseconds,
/// the API's precision; an unreadable time counts as the same episode.
fn same_episode(listed_starts_at: Millis, incident_starts_at: &str) -> bool {
    time::OffsetDateTime::parse(
        incident_starts_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_or(true, |t| listed_starts_at <= to_millis(t))
}

/// One pass: asks every peer, then (only when all answered) updates what
/// is missing, closes what has been missing past the grace, and holds or
/// releases escalation for silenced alerts.
pub async fn step(engine: &Engine, now: Millis) -> Result<RunOutcome, StoreError> {
    let reconciler = &engine.reconciler;
    let mut outcome = RunOutcome::default();
    let mut alerts: BTreeMap<String, Seen> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, base) in reconciler.urls.iter().enumerate() {
        let reconciler = reconciler.clone();
        let url = format!(
            "{}/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true",
            base.trim_end_matches('/')
        );
        tasks.spawn(async move { (index, reconciler.get::<Vec<GettableAlert>>(&url).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (index, answer) = match joined {
            Ok(done) => done,
            Err(panic) => {
                outcome
                    .unreachable
                    .push(format!("a peer request panicked: {panic}"));
                continue;
            }
        };
        match answer {
            Ok(list) => {
                for alert in list {
                    let starts_at = to_millis(alert.starts_at);
                    let seen = alerts.entry(alert.fingerprint).or_insert_with(|| Seen {
                        starts_at,
                        ..Seen::default()
                    });
                    seen.peers += 1;
                    seen.peer = index;
                    seen.starts_at = seen.starts_at.min(starts_at);
                    if alert.status.state == "suppressed" && !alert.status.silenced_by.is_empty() {
                        seen.silenced_on += 1;
                        seen.silences.extend(alert.status.silenced_by);
                    }
                }
            }
            Err(error) => outcome
                .unreachable
                .push(format!("{}: {error}", redact_url(&reconciler.urls[index]))),
        }
    }
    outcome.alerts = alerts.len();
    if !outcome.complete() {
        return Ok(outcome);
    }

    let grace = Reconciler::millis(reconciler.grace);
    let mut newly_absent = Vec::new();
    let mut back = Vec::new();
    let mut silence_ends: BTreeMap<String, Option<Millis>> = BTreeMap::new();
    for candidate in engine.store.reconcile_candidates().await? {
        let id = IncidentId(candidate.id);
        let listed = alerts.get(&candidate.fingerprint);
        let current = listed.filter(|seen| same_episode(seen.starts_at, &candidate.starts_at));
        let Some(seen) = current else {
            let since = candidate.absent_since.unwrap_or(now);
            if now - since >= grace {
                let detail = json!({
                    "absent_since": crate::domain::format_millis(since),
                    "grace_ms": grace,
                    "peers": reconciler.urls.len(),
                    "reason": if listed.is_some() { "a later episode is firing" }
                              else { "no peer has the alert" },
                });
                if engine
                    .store
                    .close_by_reconciliation(id, detail, now)
                    .await?
                {
                    tracing::info!(incident = id.0, fingerprint = %candidate.fingerprint,
                        "closed by reconciliation: the alert is gone from Alertmanager");
                    metrics::counter!("remedy_incidents_reconciled_total").increment(1);
                    outcome.closed.push(id);
                }
            } else {
                outcome.absent += 1;
                if candidate.absent_since.is_none() {
                    newly_absent.push(id);
                }
            }
            continue;
        };
        if candidate.absent_since.is_some() {
            back.push(id);
        }
        // Silenced only when every peer that has it says so, so a page is
        // never held back on one peer's word (silences gossip; they agree
        // once settled).
        if seen.silenced_on == seen.peers {
            outcome.silenced += 1;
            let state = silence_state(reconciler, seen, &mut silence_ends, now).await;
            engine.store.hold_for_silence(id, &state, now).await?;
        } else if candidate.silenced_at.is_some() {
            engine.store.end_silence_hold(id, now).await?;
        }
    }
    engine
        .store
        .record_absences(&newly_absent, &back, now)
        .await?;
    Ok(outcome)
}

/// The silences on one alert and when the last ends (each silence asked
/// once per pass, of a peer that listed the alert; unknown when any
/// answer is missing).
async fn silence_state(
    reconciler: &Reconciler,
    seen: &Seen,
    ends: &mut BTreeMap<String, Option<Millis>>,
    now: Millis,
) -> SilenceState {
    let base = reconciler.urls[seen.peer].trim_end_matches('/');
    let mut until = Some(Millis::MIN);
    for id in &seen.silences {
        let end = match ends.get(id) {
            Some(end) => *end,
            None => {
                let url = format!("{base}/api/v2/silence/{id}");
                let end = match reconciler.get::<GettableSilence>(&url).await {
                    Ok(s) if s.status.state == "active" => Some(to_millis(s.ends_at)),
                    Ok(_) => None,
                    Err(error) => {
                        tracing::warn!(silence = %id, %error, "silence end unknown");
                        None
                    }
                };
                ends.insert(id.clone(), end);
                end
            }
        };
        until = until.zip(end).map(|(a, b)| a.max(b));
    }
    let until = until.filter(|u| *u > now);
    // Without a known end the hold lasts a little past the next pass, which
    // renews it: if Alertmanager becomes unreachable, escalation resumes.
    let lease = now.saturating_add(Reconciler::millis(reconciler.interval).saturating_mul(2));
    SilenceState {
        silences: seen.silences.iter().cloned().collect(),
        until,
        hold_until: until.unwrap_or(lease),
    }
}

/// `reconcile` work: one pass, then the next run is scheduled, whatever
/// the pass found (a failed pass changes nothing and is not retried early).
pub(super) async fn run(
    engine: &Engine,
    work: &ClaimedWork,
    now: Millis,
) -> Result<bool, WorkError> {
    let reconciler = &engine.reconciler;
    if !reconciler.enabled {
        // Left from a run with reconciliation on: finish without a next.
        return Ok(engine.store.complete_work(work, now).await?);
    }
    let result = match step(engine, now).await {
        Ok(outcome) if outcome.complete() => {
            tracing::debug!(
                alerts = outcome.alerts,
                closed = outcome.closed.len(),
                absent = outcome.absent,
                silenced = outcome.silenced,
                "reconciled with Alertmanager"
            );
            "complete"
        }
        Ok(outcome) => {
            tracing::warn!(unreachable = ?outcome.unreachable,
                "reconciliation skipped: not every Alertmanager peer answered; nothing closed");
            "partial"
        }
        Err(error) => {
            tracing::warn!(%error, "reconciliation failed; nothing more closed this run");
            "error"
        }
    };
    metrics::counter!("remedy_reconcile_runs_total", "result" => result).increment(1);
    let next = now.saturating_add(Reconciler::millis(reconciler.interval));
    Ok(engine
        .store
        .complete_periodic(work, WorkKind::Reconcile, next, now)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::same_episode;

    // 2026-11-27T01:00:00Z
    const ONE: i64 = 1_795_741_200_000;

    #[test]
    fn a_listed_alert_is_the_same_episode_unless_it_started_later() {
        let incident = "2026-11-27T01:00:00.000123456Z";
        assert!(same_episode(ONE, incident), "the API's millisecond copy");
        assert!(
            same_episode(ONE - 35_000, incident),
            "a merge moved it earlier"
        );
        assert!(!same_episode(ONE + 1, incident), "a new episode");
        assert!(same_episode(ONE + 1, "not a time"));
    }
}

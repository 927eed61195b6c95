//! The platform-neutral chat report: what one message about one incident
//! shows, built from the incident, its diagnosis and its approval requests.
//! Each adapter renders it within its platform's limits.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::{ApprovalState, Decision, IncidentStatus, Millis};
use crate::playbook::model::{Risk, Severity};
use crate::playbook::{Report, Suggestion};
use crate::store::{ApprovalView, ExecutionView, IncidentRecord, StormView};

/// Evidence rows shown under a finding before "… and N more rows".
pub const EVIDENCE_ROWS: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatReport {
    pub incident_id: i64,
    pub alertname: String,
    pub severity: String,
    pub resolved: bool,
    pub summary: String,
    /// The alert's labels, `alertname` first.
    pub labels: Vec<(String, String)>,
    pub findings: Vec<ReportFinding>,
    /// Steps that failed: id and reason.
    pub step_errors: Vec<(String, String)>,
    pub suggestions: Vec<Suggestion>,
    pub actions: Vec<ReportAction>,
    /// Where the whole report is (API URL or CLI command).
    pub full_report: String,
    /// Who responds, where escalation stands, and the Ack / Snooze /
    /// Silence controls.
    pub escalation: Option<ReportEscalation>,
    /// When the incident is a storm: its members and what differs.
    pub storm: Option<ReportStorm>,
    /// The matchers a Silence of this incident posts (`name="value"`,
    /// unescaped), for the confirmations that show them before it does.
    pub silence_matchers: Vec<String>,
}

/// Label values shown per differing label before "… and N more".
pub const STORM_VALUES: usize = 10;
/// Differing labels shown before "… and N more labels".
pub const STORM_LABELS: usize = 5;
/// A label value in a storm line is cut to this many characters.
const STORM_VALUE_CHARS: usize = 60;

/// The storm part of a report: how many alerts the incident stands for
/// and the label values that differ between them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportStorm {
    /// `group` or `alertname`.
    pub scope: String,
    pub members: i64,
    pub firing: i64,
    /// The member whose diagnosis and actions the report shows.
    pub representative: i64,
    /// Labels whose value is not the same on every member, most values
    /// first.
    pub varying: Vec<VaryingLabel>,
    /// Differing labels not listed.
    pub more_labels: usize,
}

/// One label that differs between a storm's members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VaryingLabel {
    pub name: String,
    /// The most frequent values (ties by value), with how many members
    /// carry each.
    pub values: Vec<(String, usize)>,
    /// Distinct values not listed.
    pub more: usize,
    /// Every name of a differing label, listed or not, is left out of the
    /// report's common labels.
    #[serde(skip)]
    pub listed: bool,
}

impl ReportStorm {
    /// From the storm's live counts and its members' labels, summed here
    /// (the store sums them itself: [`Self::from_counts`]).
    #[cfg(test)]
    #[must_use]
    pub fn build(view: &StormView, members: &[crate::domain::Labels]) -> Self {
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for labels in members {
            for (k, v) in labels {
                *counts.entry((k, v)).or_default() += 1;
            }
        }
        let counts = counts
            .into_iter()
            .map(|((k, v), n)| (k.to_owned(), v.to_owned(), n));
        Self::from_counts(view, members.len(), counts)
    }

    /// From the storm's live counts, how many members it has now, and how
    /// many of them carry each label value (name, value, members), as
    /// `Store::storm_label_counts` sums them.
    #[must_use]
    pub fn from_counts(
        view: &StormView,
        members: usize,
        counts: impl IntoIterator<Item = (String, String, i64)>,
    ) -> Self {
        let mut names: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for (name, value, n) in counts {
            let n = usize::try_from(n).unwrap_or(0);
            *names.entry(name).or_default().entry(value).or_default() += n;
        }
        let mut varying: Vec<VaryingLabel> = names
            .into_iter()
            .filter(|(_, values)| values.len() > 1 || values.values().sum::<usize>() < members)
            .map(|(name, values)| {
                let mut values: Vec<(String, usize)> = values.into_iter().collect();
                values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let more = values.len().saturating_sub(STORM_VALUES);
                values.truncate(STORM_VALUES);
                VaryingLabel {
                    name,
                    values,
                    more,
                    listed: true,
                }
            })
            .collect();
        // The labels with the most distinct values say most about the
        // outage (instance, pod); ties by name.
        varying.sort_by(|a, b| {
            (b.values.len() + b.more)
                .cmp(&(a.values.len() + a.more))
                .then_with(|| a.name.cmp(&b.name))
        });
        let more_labels = varying.len().saturating_sub(STORM_LABELS);
        for v in varying.iter_mut().skip(STORM_LABELS) {
            v.listed = false;
        }
        Self {
            scope: view.scope.clone(),
            members: view.members,
            firing: view.firing,
            representative: view.representative_id,
            varying,
            more_labels,
        }
    }

    /// "Storm: 200 alerts of one Alertmanager group, 150 firing, 50
    /// resolved · diagnosis and actions of incident #12".
    #[must_use]
    pub fn line(&self) -> String {
        let of = if self.scope == "group" {
            "of one Alertmanager group"
        } else {
            "of this alertname"
        };
        let state = if self.firing == 0 {
            "all resolved".to_owned()
        } else {
            format!(
                "{} firing, {} resolved",
                self.firing,
                self.members - self.firing
            )
        };
        format!(
            "Storm: {} alerts {of}, {state} · diagnosis and actions of incident #{}",
            self.members, self.representative
        )
    }

    /// One line per listed label: its name and values as `quote` renders
    /// them (code spans), "×N" when more than one member carries a value,
    /// then "… and N more"; a last line counts the labels not listed.
    pub fn value_lines(&self, quote: impl Fn(&str) -> String) -> Vec<String> {
        let mut lines: Vec<String> = self
            .varying
            .iter()
            .filter(|v| v.listed)
            .map(|v| {
                let mut values: Vec<String> = v
                    .values
                    .iter()
                    .map(|(value, n)| {
                        let shown = quote(&crate::chat::text::cut(value, STORM_VALUE_CHARS));
                        if *n > 1 {
                            format!("{shown} ×{n}")
                        } else {
                            shown
                        }
                    })
                    .collect();
                if v.more > 0 {
                    values.push(format!("… and {} more", v.more));
                }
                format!("{}: {}", quote(&v.name), values.join(", "))
            })
            .collect();
        if self.more_labels > 0 {
            lines.push(format!("… and {} more labels", self.more_labels));
        }
        lines
    }
}

/// The escalation part of a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportEscalation {
    /// The initial responder role's name (`On-Call Engineer`).
    pub responder: String,
    /// Its members as the platform mentions them (from the settings).
    pub mentions: Vec<String>,
    /// Discord: the users and roles the first post may notify.
    pub ping_users: Vec<String>,
    pub ping_roles: Vec<String>,
    /// Who acknowledged (a verified clicker's mention, or a console name).
    pub acked_by: Option<String>,
    /// The highest role pinged so far.
    pub escalated_to: Option<String>,
    /// The next timer: whom it pings (or "review reminder") and when.
    pub next: Option<(String, Millis)>,
    pub snoozed_until: Option<Millis>,
    /// Alertmanager reports the alert silenced (escalation is held back):
    /// `Some(None)` when the silence's end is unknown.
    pub silenced: Option<Option<Millis>>,
    /// Button lengths, in seconds.
    pub snooze: Vec<u64>,
    pub silence: Vec<u64>,
}

impl ReportEscalation {
    #[must_use]
    pub fn can_ack(&self) -> bool {
        self.acked_by.is_none()
    }

    #[must_use]
    pub fn can_snooze(&self) -> bool {
        self.acked_by.is_none() && self.next.is_some()
    }

    /// "Responder: <@U1> (On-Call Engineer) · escalates to Team Lead at
    /// 03:15 UTC unless resolved or acknowledged"; names pass through
    /// `escape` except the configured mentions and verified clickers.
    pub fn line(&self, escape: impl Fn(&str) -> String) -> String {
        let who = if self.mentions.is_empty() {
            escape(&self.responder)
        } else {
            format!("{} ({})", self.mentions.join(" "), escape(&self.responder))
        };
        let mut line = format!("Responder: {who}");
        if let Some(reached) = &self.escalated_to {
            line.push_str(&format!(" · escalated to {}", escape(reached)));
        }
        if let Some(by) = &self.acked_by {
            let by = if is_user_mention(by) {
                by.clone()
            } else {
                escape(by)
            };
            line.push_str(&format!(" · acknowledged by {by}"));
        } else if let Some(until) = self.silenced {
            line.push_str(" · silenced in Alertmanager");
            if let Some(until) = until {
                line.push_str(&format!(" until {}", clock(until)));
            }
            line.push_str(": escalation paused");
        } else if let Some((whom, due)) = &self.next {
            line.push_str(&format!(
                " · {} at {} unless resolved or acknowledged",
                escape(whom),
                clock(*due)
            ));
            if let Some(until) = self.snoozed_until {
                line.push_str(&format!(" (snoozed until {})", clock(until)));
            }
        }
        line
    }
}

/// `2026-11-27 03:15 UTC`.
#[must_use]
pub fn clock(at: Millis) -> String {
    let text = crate::domain::format_millis(at);
    match (text.get(..10), text.get(11..16)) {
        (Some(date), Some(hhmm)) => format!("{date} {hhmm} UTC"),
        _ => text,
    }
}

/// `07:42:10 UTC`: the time of a measurement, to the second.
#[must_use]
pub fn clock_seconds(at: Millis) -> String {
    let text = crate::domain::format_millis(at);
    text.get(11..19)
        .map_or(text.clone(), |hms| format!("{hms} UTC"))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportFinding {
    pub severity: Severity,
    pub text: String,
    /// The first rows of the evidence, one line each (`key=value …`).
    pub evidence: Vec<String>,
    /// Evidence rows not shown.
    pub more_rows: usize,
    /// When the evidence was measured again while the incident fires (the
    /// escalation threshold's steps); none: as diagnosed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<Millis>,
}

impl ReportFinding {
    /// "as of 07:42:10 UTC", for evidence measured again.
    #[must_use]
    pub fn as_of_line(&self) -> Option<String> {
        self.as_of
            .map(|at| format!("measured again: as of {}", clock_seconds(at)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportAction {
    pub approval_id: i64,
    pub key: String,
    pub title: String,
    pub risk: Risk,
    pub roles: Vec<String>,
    pub quorum: i64,
    /// The digest prefix the buttons carry.
    pub digest: String,
    pub state: ActionState,
    pub approved_by: Vec<String>,
    pub rejected_by: Vec<String>,
    /// An env_file action's exact lines, `- before` / `+ after`, as the
    /// digest covers them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// An undo: the approval of the change it undoes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undoes: Option<i64>,
}

/// Where an action stands as the report shows it: its approval request's
/// state until an execution exists, then the execution's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionState {
    Approval(ApprovalState),
    Running,
    /// Finished, with the execution's outcome (`succeeded`, `dry_run`, …).
    Executed(String),
}

impl std::fmt::Display for ActionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Approval(state) => f.write_str(state.as_str()),
            Self::Running => f.write_str("running"),
            Self::Executed(outcome) => write!(f, "executed ({outcome})"),
        }
    }
}

impl Serialize for ActionState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl ReportAction {
    /// Buttons are shown only while a decision can still be taken.
    #[must_use]
    pub fn open(&self) -> bool {
        self.state == ActionState::Approval(ApprovalState::Pending)
    }

    /// "approved by a, b (2 of 2)", "pending (0 of 2)", "rejected by c".
    #[must_use]
    pub fn status_line(&self) -> String {
        self.status_with(|names| names.join(", "))
    }

    /// [`ReportAction::status_line`] for a platform: names pass through
    /// `escape`, except the user mentions of verified clickers.
    pub fn status_escaped(&self, escape: impl Fn(&str) -> String) -> String {
        self.status_with(|names| {
            names
                .iter()
                .map(|n| {
                    if is_user_mention(n) {
                        n.clone()
                    } else {
                        escape(n)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    fn status_with(&self, names: impl Fn(&[String]) -> String) -> String {
        let progress = format!("{} of {}", self.approved_by.len(), self.quorum);
        match &self.state {
            ActionState::Approval(ApprovalState::Rejected) => {
                format!("rejected by {}", names(&self.rejected_by))
            }
            _ if self.approved_by.is_empty() => format!("{} ({progress})", self.state),
            state => format!(
                "{state}: approved by {} ({progress})",
                names(&self.approved_by)
            ),
        }
    }
}

/// The digest prefix carried by buttons (Discord's `custom_id` is short).
pub const DIGEST_PREFIX: usize = 16;

impl ChatReport {
    #[must_use]
    pub fn build(
        incident: &IncidentRecord,
        report: &Report,
        approvals: &[ApprovalView],
        executions: &[ExecutionView],
        public_url: &str,
    ) -> Self {
        let mut labels: Vec<(String, String)> = incident
            .labels
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort_by_key(|(k, _)| (k != "alertname", k.clone()));
        let findings = report
            .findings
            .iter()
            .map(|f| {
                let rows = f
                    .evidence
                    .as_ref()
                    .and_then(|step| report.steps.get(step))
                    .map(|s| (s.rows.as_slice(), usize::try_from(s.truncated).unwrap_or(0)))
                    .unwrap_or_default();
                ReportFinding {
                    severity: f.severity,
                    text: f.text.clone(),
                    evidence: rows.0.iter().take(EVIDENCE_ROWS).map(row_line).collect(),
                    more_rows: rows.0.len().saturating_sub(EVIDENCE_ROWS) + rows.1,
                    as_of: f
                        .evidence
                        .as_ref()
                        .and_then(|step| report.measured.get(step).copied()),
                }
            })
            .collect();
        let step_errors = report
            .steps
            .iter()
            .filter(|(_, s)| !s.ok)
            .map(|(id, s)| {
                (
                    id.clone(),
                    s.error.clone().unwrap_or_else(|| "failed".into()),
                )
            })
            .chain(
                report
                    .errors
                    .iter()
                    .map(|e| ("template".to_owned(), e.clone())),
            )
            .collect();
        let actions = approvals
            .iter()
            .map(|a| {
                let by = |d: Decision| {
                    a.decisions
                        .iter()
                        .filter(|x| x.decision == d)
                        .map(|x| x.display.clone())
                        .collect()
                };
                ReportAction {
                    approval_id: a.id,
                    key: a.key.clone(),
                    title: a.title.clone(),
                    risk: match a.risk.as_str() {
                        "safe" => Risk::Safe,
                        "disruptive" => Risk::Disruptive,
                        _ => Risk::Destructive,
                    },
                    roles: a.roles.clone(),
                    quorum: a.quorum,
                    digest: a.digest.chars().take(DIGEST_PREFIX).collect(),
                    // An execution's outcome replaces "approved".
                    state: executions.iter().find(|e| e.approval_id == a.id).map_or(
                        ActionState::Approval(a.state),
                        |e| {
                            // Execution outcomes are an open set (no CHECK).
                            match e.state.as_str() {
                                "running" => ActionState::Running,
                                outcome => ActionState::Executed(outcome.to_owned()),
                            }
                        },
                    ),
                    approved_by: by(Decision::Approve),
                    rejected_by: by(Decision::Reject),
                    // Only from the very action approved (same digest).
                    changes: usize::try_from(a.seq)
                        .ok()
                        .and_then(|seq| report.actions.get(seq))
                        .filter(|action| action.digest() == a.digest)
                        .map(crate::playbook::ActionInstance::diff_lines)
                        .unwrap_or_default(),
                    undoes: usize::try_from(a.seq)
                        .ok()
                        .and_then(|seq| crate::engine::diagnose::undone_by(report, seq))
                        .and_then(|change| {
                            approvals
                                .iter()
                                .find(|b| usize::try_from(b.seq) == Ok(change))
                        })
                        .map(|b| b.id),
                }
            })
            .collect();
        let full_report = if public_url.is_empty() {
            format!("remedy incidents show {}", incident.id)
        } else {
            format!(
                "{}/v1/incidents/{}",
                public_url.trim_end_matches('/'),
                incident.id
            )
        };
        Self {
            incident_id: incident.id,
            alertname: incident.alertname.clone(),
            severity: incident.severity.clone(),
            resolved: incident.status == IncidentStatus::Resolved,
            summary: report.summary.clone(),
            labels,
            findings,
            step_errors,
            suggestions: report.suggestions.clone(),
            actions,
            full_report,
            escalation: None,
            storm: None,
            silence_matchers: crate::approvals::silence_matchers(&incident.labels.0)
                .iter()
                .map(crate::approvals::SilenceMatcher::text)
                .collect(),
        }
    }

    /// A storm report: the labels every member shares stay in the label
    /// line; the ones that differ are listed with their values instead.
    #[must_use]
    pub fn with_storm(mut self, storm: Option<ReportStorm>) -> Self {
        if let Some(storm) = &storm {
            self.labels
                .retain(|(k, _)| !storm.varying.iter().any(|v| &v.name == k));
        }
        self.storm = storm;
        self
    }

    #[must_use]
    pub fn with_escalation(mut self, escalation: Option<ReportEscalation>) -> Self {
        self.escalation = escalation;
        self
    }

    /// One line for notifications and fallbacks.
    #[must_use]
    pub fn headline(&self) -> String {
        let storm = self
            .storm
            .as_ref()
            .map_or_else(String::new, |s| format!(" · storm of {} alerts", s.members));
        format!(
            "[{}] {} ({}){storm}",
            if self.resolved { "RESOLVED" } else { "FIRING" },
            self.alertname,
            if self.severity.is_empty() {
                "no severity"
            } else {
                &self.severity
            }
        )
    }
}

fn row_line(row: &serde_json::Map<String, serde_json::Value>) -> String {
    row.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join("  ")
}

/// Marker for a finding's severity.
#[must_use]
pub fn severity_mark(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "🔴",
        Severity::Warning => "🟠",
        Severity::Info => "🔵",
    }
}

/// A user mention as a platform renders it (`<@U0ABC>`, `<@1234>`), and
/// nothing else: only such strings pass unescaped into a message.
pub(crate) fn is_user_mention(name: &str) -> bool {
    name.strip_prefix("<@")
        .and_then(|r| r.strip_suffix('>'))
        .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// The risk tier as messages show it.
#[must_use]
pub fn risk_name(risk: Risk) -> &'static str {
    match risk {
        Risk::Safe => "safe",
        Risk::Disruptive => "disruptive",
        Risk::Destructive => "destructive",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Labels;

    fn escalation() -> ReportEscalation {
        ReportEscalation {
            responder: "On-Call Engineer".into(),
            // 2026-11-27 03:15 UTC
            next: Some(("escalates to Team Lead".into(), 1_795_749_300_000)),
            ..ReportEscalation::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn view(members: i64, firing: i64) -> StormView {
        StormView {
            incident_id: 99,
            scope: "group".into(),
            key: "{}:{}".into(),
            representative_id: 12,
            opened_at: 0,
            resolved_at: None,
            members,
            firing,
        }
    }

    #[test]
    fn a_silenced_alert_says_so_instead_of_the_next_escalation() {
        let plain = escalation().line(str::to_owned);
        assert!(
            plain.contains("escalates to Team Lead at 2026-11-27 03:15 UTC"),
            "{plain}"
        );

        let until = ReportEscalation {
            silenced: Some(Some(1_795_752_900_000)),
            ..escalation()
        }
        .line(str::to_owned);
        assert_eq!(
            until,
            "Responder: On-Call Engineer · silenced in Alertmanager until 2026-11-27 04:15 UTC: \
             escalation paused"
        );

        let unknown = ReportEscalation {
            silenced: Some(None),
            ..escalation()
        }
        .line(str::to_owned);
        assert!(
            unknown.ends_with("silenced in Alertmanager: escalation paused"),
            "{unknown}"
        );
    }

    #[test]
    fn a_storm_lists_only_the_labels_that_differ_with_their_top_values() {
        let mut members: Vec<Labels> = (0..25)
            .map(|i| {
                labels(&[
                    ("alertname", "PgDown"),
                    ("instance", &format!("db{i:02}")),
                    ("zone", if i % 5 == 0 { "b" } else { "a" }),
                ])
            })
            .collect();
        members.push(labels(&[("alertname", "PgDown"), ("instance", "db00")]));
        let storm = ReportStorm::build(&view(26, 20), &members);
        let names: Vec<&str> = storm.varying.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["instance", "zone"]);
        let instance = &storm.varying[0];
        assert_eq!(instance.values.len(), STORM_VALUES);
        assert_eq!(instance.values[0], ("db00".to_owned(), 2));
        assert_eq!(instance.more, 25 - STORM_VALUES);
        let lines = storm.value_lines(|v| format!("`{v}`"));
        assert!(
            lines[0].starts_with("`instance`: `db00` ×2, `db01`, "),
            "{lines:?}"
        );
        assert!(lines[0].ends_with("… and 15 more"), "{lines:?}");
        assert_eq!(lines[1], "`zone`: `a` ×20, `b` ×5");
        assert_eq!(
            storm.line(),
            "Storm: 26 alerts of one Alertmanager group, 20 firing, 6 resolved · diagnosis and actions of incident #12"
        );
    }

    #[test]
    fn a_storm_with_many_differing_labels_counts_the_ones_not_listed() {
        let members: Vec<Labels> = (0..3)
            .map(|i| {
                (0..8)
                    .map(|k| (format!("l{k}"), format!("v{i}")))
                    .collect::<Labels>()
            })
            .collect();
        let storm = ReportStorm::build(&view(3, 0), &members);
        let lines = storm.value_lines(str::to_owned);
        assert_eq!(lines.len(), STORM_LABELS + 1);
        assert_eq!(lines[STORM_LABELS], "… and 3 more labels");
        assert!(storm.line().contains("all resolved"));
    }
}

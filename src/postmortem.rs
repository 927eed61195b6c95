//! The incident record: everything remedy recorded about one incident, in
//! order, and what the runbook's "Post-Incident Actions" ask for — the
//! summary posted when a CRITICAL incident resolves, the postmortem
//! checklist when it lasted longer than 15 minutes, and the draft that
//! `remedy incidents export ID --format md|json` writes.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::{Decision, IncidentId, IncidentStatus, Millis, TimerState, format_millis};
use crate::escalation::{Matrix, human};
use crate::store::{
    ApprovalView, EscalationView, ExecutionView, IncidentRecord, PageView, Store, StoreError,
    TimelineEntry,
};

/// One incident with everything recorded about it.
#[derive(Debug, Clone)]
pub struct Record {
    pub incident: IncidentRecord,
    pub timeline: Vec<TimelineEntry>,
    pub approvals: Vec<ApprovalView>,
    pub executions: Vec<ExecutionView>,
    pub escalation: Option<EscalationView>,
    /// Deliveries to pagers (PagerDuty, Opsgenie, webhooks).
    pub pages: Vec<PageView>,
}

impl Record {
    pub async fn load(store: &Store, id: IncidentId) -> Result<Option<Self>, StoreError> {
        let Some(incident) = store.get_incident(id).await? else {
            return Ok(None);
        };
        Ok(Some(Self {
            incident,
            timeline: store.timeline(id).await?,
            approvals: store.approvals(id).await?,
            executions: store.executions(id).await?,
            escalation: store.escalation(id).await?,
            pages: store.pages(id).await?,
        }))
    }

    /// When the incident began and ended: the alert's own `startsAt` /
    /// `endsAt` when Alertmanager sent them, else when remedy opened and
    /// resolved it.
    #[must_use]
    pub fn span(&self) -> (Millis, Option<Millis>) {
        let parse = |t: &str| {
            OffsetDateTime::parse(t, &Rfc3339)
                .ok()
                .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
                .filter(|ms| *ms > 0)
        };
        let i = &self.incident;
        let start = parse(&i.starts_at).unwrap_or(i.opened_at);
        let end = i
            .ends_at
            .as_deref()
            .and_then(parse)
            .filter(|end| *end >= start)
            .or(i.resolved_at);
        (start, end)
    }

    #[must_use]
    pub fn duration(&self) -> Option<Duration> {
        let (start, end) = self.span();
        end.map(|end| Duration::from_millis(u64::try_from(end - start).unwrap_or(0)))
    }

    /// "terminate_leaks — done (effective), approved by olga, @U2": people
    /// by name, unmapped platform users by [`plain_name`], never a mention.
    fn what_ran(&self) -> Vec<String> {
        self.executions
            .iter()
            .map(|e| {
                let approval = self.approvals.iter().find(|a| a.id == e.approval_id);
                let key = approval.map_or("action", |a| a.key.as_str());
                let approvers: Vec<String> = approval
                    .map(|a| {
                        a.decisions
                            .iter()
                            .filter(|d| d.decision == Decision::Approve)
                            .map(|d| plain_name(&d.display))
                            .collect()
                    })
                    .unwrap_or_default();
                let verdict = e
                    .verification
                    .as_deref()
                    .map_or_else(String::new, |v| format!(" ({v})"));
                let by = if approvers.is_empty() {
                    "approved by policy".to_owned()
                } else {
                    format!("approved by {}", approvers.join(", "))
                };
                format!("{key} — {}{verdict}, {by}", e.state)
            })
            .collect()
    }

    fn escalations(&self, matrix: &Matrix) -> Vec<String> {
        self.escalation
            .as_ref()
            .map(|e| {
                e.timers
                    .iter()
                    .filter(|t| t.state == TimerState::Fired)
                    .map(|t| {
                        let whom = t.role.as_deref().map_or("review reminder".to_owned(), |r| {
                            format!("pinged {}", matrix.role_name(r))
                        });
                        format!(
                            "{} {whom} ({})",
                            t.fired_at
                                .map(crate::chat::report::clock)
                                .unwrap_or_default(),
                            t.reason
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A decider's display as plain text: a person keeps their name; a
/// platform mention (`<@U1>`, `<@&2>`, `<!subteam^S3>`) becomes `@U1`,
/// `@2`, `@S3`. The summary is posted after the fact and must not notify
/// the approvers again (README, "Mentions"); only pings mention.
#[must_use]
pub fn plain_name(display: &str) -> String {
    match display.strip_prefix('<').and_then(|d| d.strip_suffix('>')) {
        Some(inner) if inner.starts_with('@') || inner.starts_with("!subteam^") => {
            let id = inner
                .trim_start_matches("!subteam^")
                .trim_start_matches('@')
                .trim_start_matches(['&', '!']);
            format!("@{id}")
        }
        _ => display.to_owned(),
    }
}

/// The runbook's post-incident checklist, with the meeting's deadline.
fn checklist(resolved: Millis) -> Vec<String> {
    let meeting = crate::chat::report::clock(resolved + 48 * 3600 * 1000);
    vec![
        "Document: start and end timestamps, root cause, resolution steps, user impact".into(),
        format!("Runbook meeting within 48 h (by {meeting})"),
        "Identify monitoring gaps; create improvement tickets".into(),
        "Prevention: update the runbook with what was learned, add preventive alerts, improve the docs".into(),
        "Communication: notify stakeholders, update the status page, share learnings in Slack / email".into(),
    ]
}

/// Whether this incident gets a summary when it resolves, and whether
/// that includes the postmortem checklist.
#[must_use]
pub fn wants_summary(record: &Record, matrix: &Matrix) -> Option<bool> {
    let severity = record.incident.severity.to_lowercase();
    if record.incident.status != IncidentStatus::Resolved || !matrix.summary_for.contains(&severity)
    {
        return None;
    }
    Some(
        record
            .duration()
            .is_some_and(|d| d > matrix.postmortem_after),
    )
}

/// The summary posted in the thread when the incident resolves.
#[must_use]
pub fn summary(record: &Record, matrix: &Matrix, postmortem: bool) -> String {
    let i = &record.incident;
    let (start, end) = record.span();
    let end = end.unwrap_or(start);
    let mut out = format!(
        "✅ {} (incident #{}) resolved after {} — from {} to {}.\n",
        i.alertname,
        i.id,
        record.duration().map_or_else(|| "?".to_owned(), human),
        crate::chat::report::clock(start),
        crate::chat::report::clock(end)
    );
    let ran = record.what_ran();
    if ran.is_empty() {
        out.push_str("What ran: nothing was executed by remedy.\n");
    } else {
        out.push_str("What ran:\n");
        for line in ran {
            let _ = writeln!(out, "• {line}");
        }
    }
    let escalations = record.escalations(matrix);
    if !escalations.is_empty() {
        out.push_str("Escalations:\n");
        for line in escalations {
            let _ = writeln!(out, "• {line}");
        }
    }
    if let Some(by) = record
        .escalation
        .as_ref()
        .and_then(|e| e.acked_by.as_deref())
    {
        let _ = writeln!(out, "Acknowledged by {}.", plain_name(by));
    }
    if postmortem {
        let _ = writeln!(
            out,
            "Postmortem (it lasted longer than {}):",
            human(matrix.postmortem_after)
        );
        for item in checklist(end) {
            let _ = writeln!(out, "☐ {item}");
        }
    }
    let _ = write!(
        out,
        "Timeline draft: `remedy incidents export {} --format md`",
        i.id
    );
    out
}

/// Alert-derived text in the Markdown export, inert: on one line (no
/// control characters, escape sequences or bidi overrides), `&` `<` `>` and
/// `|` as HTML entities (no raw HTML, tracking images or table cells), and
/// every other Markdown punctuation backslash-escaped (no headings, links,
/// images, emphasis, lists or code spans; `(` needs no escape once `[`
/// and `]` have one).
#[must_use]
pub fn md(text: &str) -> String {
    let text = crate::chat::text::one_line(text);
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            // A list or block marker only counts at the start.
            '-' | '+' | '.' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("&#124;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '!' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Alert-derived text inside a Markdown code span: a backtick would end it
/// (it becomes `ˋ`) and a `|` would end a table cell even there (GFM), so
/// it becomes `¦`; on one line, cleaned as [`md`].
#[must_use]
pub fn md_code(text: &str) -> String {
    crate::chat::text::one_line(text)
        .replace('`', "ˋ")
        .replace('|', "¦")
}

/// One line per timeline entry, for people; every alert- or
/// person-derived value passes through [`md`].
fn describe(entry: &TimelineEntry) -> String {
    let d = &entry.detail;
    let s = |k: &str| md(d.get(k).and_then(Value::as_str).unwrap_or_default());
    let n = |k: &str| md(&d.get(k).map(ToString::to_string).unwrap_or_default());
    match entry.kind.as_str() {
        "opened" => format!("alert received: {}", s("summary")),
        "diagnosed" => format!("diagnosed: {}", s("summary")),
        "escalation_scheduled" => format!(
            "escalation policy `{}`: initial responder {}",
            s("policy"),
            s("initial")
        ),
        "chat_posted" => "report posted in chat".into(),
        "approval_recorded" | "approved" | "rejected" if entry.source == "timeline" => format!(
            "{} {} ({} of {})",
            s("display"),
            s("decision"),
            n("approvals"),
            n("quorum")
        ),
        "decision_refused" => format!(
            "{} of {} refused: {}",
            s("decision"),
            s("display"),
            s("reason")
        ),
        "ack_refused" | "snooze_refused" | "silence_refused" => format!(
            "{} by {} refused: {}",
            entry.kind.trim_end_matches("_refused"),
            s("display"),
            s("reason")
        ),
        "execution_started" => {
            let what = match (
                d.get("statement").and_then(Value::as_str),
                d.get("program").and_then(Value::as_str),
            ) {
                (Some(sql), _) => format!("`{}` with {}", md_code(sql), n("params")),
                (None, Some(program)) => format!("`{}` {}", md_code(program), n("args")),
                _ => s("kind"),
            };
            format!("execution started: {} — {what}", s("action"))
        }
        "execution_finished" => {
            let raw = d.get("output").and_then(Value::as_str).unwrap_or_default();
            let output = md(&raw.chars().take(200).collect::<String>());
            format!("execution finished: {} {output}", s("outcome"))
        }
        "verified" | "action_verified" => {
            format!("effect judged {}: {}", s("verdict"), s("evidence"))
        }
        "escalation_triggered" => format!(
            "escalation triggered to level {}: {}",
            n("level"),
            s("reason")
        ),
        "escalated" => format!(
            "escalation timer fired: {} ({}){}",
            s("role"),
            s("reason"),
            if d.get("late") == Some(&Value::Bool(true)) {
                format!(", late by {} ms", n("lag_ms"))
            } else {
                String::new()
            }
        ),
        "pinged" => format!("pinged {}", s("role")),
        "review_reminder" => format!("review reminder: {}", s("reason")),
        "acknowledged" => format!("acknowledged by {}", s("display")),
        "page_queued" => format!(
            "page queued: {} to {}",
            s("action"),
            if d.get("pager").is_some() {
                s("pager")
            } else {
                format!("{} pagers", n("pagers"))
            }
        ),
        "paged" => format!(
            "paged {}: {} (level {}, {})",
            s("pager"),
            s("action"),
            n("level"),
            s("dedup_key")
        ),
        "page_failed" => format!(
            "page to {} refused: {} — {}",
            s("pager"),
            s("action"),
            s("detail")
        ),
        "page_skipped" => format!(
            "page to {} not sent: {} — {}",
            s("pager"),
            s("action"),
            s("detail")
        ),
        "snoozed" => format!(
            "snoozed by {} until {}",
            s("display"),
            d.get("until")
                .and_then(Value::as_i64)
                .map(format_millis)
                .unwrap_or_default()
        ),
        "silence_requested" => format!("silence requested by {} ({})", s("display"), s("key")),
        "escalation_cancelled" => format!(
            "escalation cancelled ({} timers): {}",
            n("timers"),
            s("reason")
        ),
        "resolved" => "alert resolved".into(),
        "resolution_summary" => "resolution summary posted".into(),
        _ => {
            let text = d.to_string();
            if text.len() > 300 {
                format!("{}…", md(&text.chars().take(300).collect::<String>()))
            } else {
                md(&text)
            }
        }
    }
}

/// The postmortem draft in Markdown.
#[must_use]
pub fn markdown(record: &Record, matrix: &Matrix) -> String {
    let i = &record.incident;
    let (start, end) = record.span();
    let mut out = format!(
        "# Incident #{}: {} ({})\n\n",
        i.id,
        md(&i.alertname),
        md(&i.severity)
    );
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| Status | {} |", i.status.as_str());
    let _ = writeln!(out, "| Started | {} |", format_millis(start));
    let _ = writeln!(
        out,
        "| Ended | {} |",
        end.map_or_else(|| "still firing".to_owned(), format_millis)
    );
    let _ = writeln!(
        out,
        "| Duration | {} |",
        record.duration().map_or_else(|| "—".to_owned(), human)
    );
    let labels: Vec<String> = i
        .labels
        .0
        .iter()
        .map(|(k, v)| format!("`{}={}`", md_code(k), md_code(v)))
        .collect();
    let _ = writeln!(out, "| Labels | {} |", labels.join(" "));
    if let Some(e) = &record.escalation {
        let _ = writeln!(
            out,
            "| Escalation policy | {} (initial: {}) |",
            md(&e.policy),
            md(matrix.role_name(&e.initial_role))
        );
        if let Some(by) = &e.acked_by {
            let _ = writeln!(out, "| Acknowledged by | {} |", md(by));
        }
    }
    out.push_str("\n## Timeline (UTC)\n\n| Time | Event |\n|---|---|\n");
    for entry in &record.timeline {
        let _ = writeln!(out, "| {} | {} |", format_millis(entry.at), describe(entry));
    }
    out.push_str("\n## What ran\n\n");
    let ran = record.what_ran();
    if ran.is_empty() {
        out.push_str("Nothing was executed by remedy.\n");
    }
    for line in ran {
        let _ = writeln!(out, "- {}", md(&line));
    }
    let escalations = record.escalations(matrix);
    if !escalations.is_empty() {
        out.push_str("\n## Escalations\n\n");
        for line in escalations {
            let _ = writeln!(out, "- {}", md(&line));
        }
    }
    out.push_str("\n## Root cause\n\n_To be written._\n\n## User impact\n\n_To be written._\n\n## Resolution steps\n\n");
    let steps: Vec<String> = record.what_ran();
    if steps.is_empty() {
        out.push_str("_To be written._\n");
    }
    for (n, line) in steps.iter().enumerate() {
        let _ = writeln!(out, "{}. {}", n + 1, md(line));
    }
    out.push_str("\n## Postmortem checklist\n\n");
    for item in checklist(end.unwrap_or(start)) {
        let _ = writeln!(out, "- [ ] {item}");
    }
    out
}

/// The record as JSON.
#[must_use]
pub fn to_json(record: &Record) -> Value {
    let (start, end) = record.span();
    json!({
        "incident": record.incident,
        "started_at": format_millis(start),
        "ended_at": end.map(format_millis),
        "duration_seconds": record.duration().map(|d| d.as_secs()),
        "timeline": record.timeline,
        "approvals": record.approvals,
        "executions": record.executions,
        "escalation": record.escalation,
        "pages": record.pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_never_mention() {
        assert_eq!(plain_name("<@U1>"), "@U1");
        assert_eq!(plain_name("<@&22>"), "@22");
        assert_eq!(plain_name("<@!33>"), "@33");
        assert_eq!(plain_name("<!subteam^S3>"), "@S3");
        assert_eq!(plain_name("olga"), "olga");
    }

    #[test]
    fn markdown_escaping_defuses_structure() {
        assert_eq!(md("# h [x](y) | <b>"), "\\# h \\[x\\](y) &#124; &lt;b&gt;");
        assert_eq!(md("- item\nline"), "\\- item ⏎ line");
        assert_eq!(md_code("a`b|c"), "aˋb¦c");
    }
}

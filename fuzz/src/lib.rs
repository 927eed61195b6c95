//! What each fuzz target runs, one function per target. The targets in
//! `fuzz_targets/` call these, and `tests/fuzz_regressions.rs` includes this
//! file as a module, so a seed or a regression input replays exactly the
//! code path the fuzzer drove. None of them may panic on any input.

use std::path::Path;

use remedy::domain::Notification;
use remedy::intake::InvalidPayload;
use remedy::playbook::matcher::{Labels, Matcher, matches_all, parse_matchers};
use remedy::playbook::{Playbook, PlaybookError, References};

/// `webhook`: the Alertmanager webhook payload parser, then what intake reads
/// of every alert it accepted.
pub fn webhook(data: &[u8]) -> Result<Notification, InvalidPayload> {
    let result = remedy::intake::parse(data);
    match &result {
        Ok(n) => {
            for alert in &n.alerts {
                let _ = (alert.alertname(), alert.severity(), alert.starts_at_key());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    result
}

/// `slack_interaction`: the form body of a Slack click. Whether it parsed.
pub fn slack_interaction(data: &[u8]) -> bool {
    remedy::http::interactions::parse_slack(data).is_ok()
}

/// `discord_interaction`: a Discord interaction body, the `custom_id` of its
/// button as the handler reads it, and the input itself as a `custom_id`
/// when it is UTF-8. Whether the body parsed.
pub fn discord_interaction(data: &[u8]) -> bool {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = remedy::chat::discord::parse_custom_id(text);
    }
    match remedy::http::interactions::parse_discord(data) {
        Ok(interaction) => {
            let custom_id = interaction.data.map(|d| d.custom_id).unwrap_or_default();
            let _ = remedy::chat::discord::parse_custom_id(&custom_id);
            true
        }
        Err(_) => false,
    }
}

/// `mattermost_interaction`: what the Mattermost server sends to remedy
/// (a click or a dialog submission), then its context (or the dialog's
/// `state`) verified with a fixed key. Whether the body parsed.
pub fn mattermost_interaction(data: &[u8]) -> bool {
    const KEY: &str = "fuzz-context-secret-of-32-characters-or-more";
    match remedy::http::interactions::parse_mattermost(data) {
        Ok(request) => {
            let _ = remedy::chat::mattermost::verify(KEY, request.context.as_ref());
            if let Some(state) = request.state.as_deref()
                && let Ok(context) = serde_json::from_str::<serde_json::Value>(state)
            {
                let _ = remedy::chat::mattermost::verify(KEY, Some(&context));
            }
            true
        }
        Err(_) => false,
    }
}

/// What the shipped `config/default.toml` lets playbooks refer to.
fn references() -> References {
    References {
        targets: ["main".to_owned()].into(),
        programs: ["/usr/bin/docker".into()].into(),
        probes: ["pms".to_owned()].into(),
        redis: ["cache".to_owned()].into(),
        compose: [("app".to_owned(), "/usr/bin/docker".into())].into(),
        env_files: [(
            "app".to_owned(),
            vec![
                "POSTGRES_POOL_SIZE".to_owned(),
                "POSTGRES_MAX_OVERFLOW".to_owned(),
            ],
        )]
        .into(),
    }
}

/// `playbook`: the playbook loader on the input as YAML; `None` when the
/// input is not UTF-8.
pub fn playbook(data: &[u8]) -> Option<Result<Playbook, Vec<PlaybookError>>> {
    let text = std::str::from_utf8(data).ok()?;
    let result = remedy::playbook::load_str(Path::new("fuzz/input.yaml"), text, &references());
    if let Err(errors) = &result {
        for e in errors {
            let _ = e.to_string();
        }
    }
    Some(result)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Runs the matchers against a few label sets, including one built from the
/// matchers themselves (each name set to its own value) and one built from
/// the input, so the regexes see both matching and unrelated text.
fn exercise(matchers: &[Matcher], input: &str) {
    let own: Labels = matchers
        .iter()
        .map(|m| (m.name.clone(), m.value.clone()))
        .collect();
    let raw: Labels = matchers
        .iter()
        .map(|m| (m.name.clone(), input.to_owned()))
        .collect();
    let sets = [
        Labels::new(),
        labels(&[
            ("alertname", "DatabasePoolExhaustionCritical"),
            ("severity", "critical"),
            ("instance", "db-1:9187"),
            ("job", "postgres"),
        ]),
        labels(&[("alertname", ""), ("severity", "warning|critical")]),
        own,
        raw,
    ];
    for set in &sets {
        let _ = matches_all(matchers, set);
    }
}

/// `matcher`: the list parser and the single-matcher parser on the input as
/// UTF-8, and for what parses, matching and the documented round trip of the
/// canonical form (`Display` parses back to the same matcher). Whether
/// (list, single) parsed; `None` when the input is not UTF-8.
///
/// # Panics
/// When a parsed matcher's canonical form does not parse back to it.
pub fn matcher(data: &[u8]) -> Option<(bool, bool)> {
    let text = std::str::from_utf8(data).ok()?;
    let list = parse_matchers(text);
    if let Ok(matchers) = &list {
        exercise(matchers, text);
    }
    let single = Matcher::parse(text);
    if let Ok(m) = &single {
        exercise(std::slice::from_ref(m), text);
        let canonical = m.to_string();
        match Matcher::parse(&canonical) {
            Ok(back) => assert!(
                back.name == m.name && back.op == m.op && back.value == m.value,
                "{text:?} -> {canonical:?} -> {back:?}"
            ),
            Err(e) => panic!("{text:?} -> {canonical:?} does not parse back: {e}"),
        }
    }
    Some((list.is_ok(), single.is_ok()))
}

//! Silence safety: the matchers an incident's Silence sends to
//! Alertmanager, and why a silence is refused — a length the matrix does
//! not offer, matchers too broad for `silence.required_labels`, or matchers
//! that would also mute another firing incident outside the incident's
//! storm. Pure: the store reads the firing incidents and calls
//! [`silence_refusal`] in its transaction; the executor calls it again
//! right before it posts; the chat renderers show [`SilenceMatcher::text`].

use crate::domain::Labels;

use super::Refusal;

/// One equality matcher of an Alertmanager v2 silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilenceMatcher {
    pub name: String,
    pub value: String,
}

impl SilenceMatcher {
    /// Alertmanager's matcher syntax, `name="value"`, the value quoted as
    /// amtool quotes it (`\`, `"` and a newline escaped). Chat renderers
    /// still escape the result for their markup.
    #[must_use]
    pub fn text(&self) -> String {
        let mut value = String::with_capacity(self.value.len());
        for c in self.value.chars() {
            match c {
                '\\' => value.push_str("\\\\"),
                '"' => value.push_str("\\\""),
                '\n' => value.push_str("\\n"),
                c => value.push(c),
            }
        }
        format!("{}=\"{value}\"", self.name)
    }

    /// Whether an alert with `labels` matches: Alertmanager compares an
    /// absent label as the empty string.
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        labels.get(&self.name).map_or("", String::as_str) == self.value
    }
}

/// The matchers of an incident's silence: one equality per label of the
/// alert, in label-name order. Exactly these are shown in the confirm
/// dialogs and exactly these are posted.
#[must_use]
pub fn silence_matchers(labels: &Labels) -> Vec<SilenceMatcher> {
    labels
        .iter()
        .map(|(name, value)| SilenceMatcher {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// Whether a silence with `matchers` mutes an alert with `labels`.
#[must_use]
pub fn mutes(matchers: &[SilenceMatcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// Another firing incident, as the store read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiringIncident {
    pub id: i64,
    /// The storm it is a member of (`incidents.storm_id`), or its own id
    /// when it is a storm incident.
    pub storm: Option<i64>,
    pub alertname: String,
    pub labels: Labels,
}

/// What a silence is checked against.
#[derive(Debug, Clone)]
pub struct SilenceCheck<'a> {
    /// The incident being silenced.
    pub incident: i64,
    /// Its storm: the storm it is a member of, or its own id when it is a
    /// storm incident; `None` outside storms.
    pub storm: Option<i64>,
    pub matchers: &'a [SilenceMatcher],
    pub seconds: u64,
    /// The matrix's silence lengths, in seconds.
    pub offered: &'a [u64],
    /// `silence.required_labels`: at least one must be among the
    /// matchers' names; empty requires none.
    pub required: &'a [String],
    /// The firing incidents the store read (itself and its storm may be
    /// among them: they are left out here).
    pub firing: &'a [FiringIncident],
}

/// The refusal that applies to a silence, checked in this order: a length
/// the matrix does not offer, no matchers at all, none of the required
/// labels among the matchers, another firing incident (not this one, not
/// in its storm) that the matchers would mute. `None`: it may be posted.
#[must_use]
pub fn silence_refusal(c: &SilenceCheck<'_>) -> Option<Refusal> {
    if !c.offered.contains(&c.seconds) {
        return Some(Refusal::SilenceLength(c.offered.to_vec()));
    }
    if c.matchers.is_empty() {
        return Some(Refusal::SilenceWithoutMatchers);
    }
    if !c.required.is_empty() && !c.matchers.iter().any(|m| c.required.contains(&m.name)) {
        return Some(Refusal::SilenceTooBroad {
            matchers: c.matchers.iter().map(SilenceMatcher::text).collect(),
            required: c.required.to_vec(),
        });
    }
    let same_storm = |other: &FiringIncident| {
        c.storm
            .is_some_and(|s| other.storm == Some(s) || other.id == s)
    };
    let mut muted = c
        .firing
        .iter()
        .filter(|o| o.id != c.incident && !same_storm(o) && mutes(c.matchers, &o.labels));
    let first = muted.next()?;
    Some(Refusal::SilenceMutesOthers {
        incident: first.id,
        alertname: first.alertname.clone(),
        more: muted.count(),
    })
}

/// Alertmanager's `createdBy` for a silence: the names of the people who
/// approved it (decision keys `person:NAME`). Someone who is not in
/// `[people]` (an unmapped Slack or Discord identity that holds a role)
/// is named by platform and id, marked as such; an automatic silence has
/// no approver.
#[must_use]
pub fn created_by<'a>(approvers: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = approvers
        .into_iter()
        .map(|key| match key.split_once(':') {
            Some(("person", name)) => name.to_owned(),
            Some((platform, id)) => format!("{platform} user {id} (not in [people])"),
            None => key.to_owned(),
        })
        .collect();
    if names.is_empty() {
        "remedy (automatic)".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn firing(id: i64, storm: Option<i64>, pairs: &[(&str, &str)]) -> FiringIncident {
        FiringIncident {
            id,
            storm,
            alertname: labels(pairs).get("alertname").cloned().unwrap_or_default(),
            labels: labels(pairs),
        }
    }

    const OFFERED: [u64; 2] = [3600, 14_400];

    fn required() -> Vec<String> {
        vec!["instance".into(), "service".into()]
    }

    fn check<'a>(
        matchers: &'a [SilenceMatcher],
        required: &'a [String],
        firing: &'a [FiringIncident],
    ) -> SilenceCheck<'a> {
        SilenceCheck {
            incident: 1,
            storm: None,
            matchers,
            seconds: 3600,
            offered: &OFFERED,
            required,
            firing,
        }
    }

    #[test]
    fn the_matchers_are_the_alerts_labels_as_equalities_in_name_order() {
        let m = silence_matchers(&labels(&[
            ("service", "api"),
            ("alertname", "HighErrorRate5xx"),
        ]));
        let shown: Vec<String> = m.iter().map(SilenceMatcher::text).collect();
        assert_eq!(shown, ["alertname=\"HighErrorRate5xx\"", "service=\"api\""]);
    }

    #[test]
    fn a_matcher_quotes_its_value_as_alertmanager_does() {
        let m = SilenceMatcher {
            name: "x".into(),
            value: "a\"b\\c\nd".into(),
        };
        assert_eq!(m.text(), r#"x="a\"b\\c\nd""#);
    }

    #[test]
    fn a_silence_on_the_alertname_alone_is_too_broad() {
        let m = silence_matchers(&labels(&[("alertname", "HighErrorRate5xx")]));
        let refusal = silence_refusal(&check(&m, &required(), &[])).expect("refused");
        assert_eq!(
            refusal,
            Refusal::SilenceTooBroad {
                matchers: vec!["alertname=\"HighErrorRate5xx\"".into()],
                required: required(),
            }
        );
        let message = refusal.message();
        assert!(
            message.contains("instance, service") && message.contains("silence.required_labels"),
            "{message}"
        );
    }

    #[test]
    fn one_required_label_is_enough_and_an_empty_list_requires_none() {
        let m = silence_matchers(&labels(&[("alertname", "X"), ("instance", "db1")]));
        assert_eq!(silence_refusal(&check(&m, &required(), &[])), None);
        let broad = silence_matchers(&labels(&[("alertname", "X")]));
        assert_eq!(silence_refusal(&check(&broad, &[], &[])), None);
    }

    #[test]
    fn a_silence_without_matchers_is_refused_whatever_is_required() {
        assert_eq!(
            silence_refusal(&check(&[], &[], &[])),
            Some(Refusal::SilenceWithoutMatchers)
        );
    }

    #[test]
    fn a_length_the_matrix_does_not_offer_is_refused_first() {
        let c = SilenceCheck {
            seconds: 7200,
            ..check(&[], &[], &[])
        };
        let refusal = silence_refusal(&c).expect("refused");
        assert_eq!(refusal, Refusal::SilenceLength(OFFERED.to_vec()));
        assert_eq!(refusal.message(), "silence for one of: 1h, 4h");
    }

    #[test]
    fn a_silence_that_would_mute_another_firing_incident_is_refused() {
        let m = silence_matchers(&labels(&[("alertname", "X"), ("instance", "db1")]));
        let others = [
            // Itself: not another incident.
            firing(1, None, &[("alertname", "X"), ("instance", "db1")]),
            // Another instance: not muted.
            firing(2, None, &[("alertname", "X"), ("instance", "db2")]),
            // Same labels and more: muted.
            firing(
                3,
                None,
                &[("alertname", "X"), ("instance", "db1"), ("pool", "a")],
            ),
            firing(
                4,
                None,
                &[("alertname", "X"), ("instance", "db1"), ("pool", "b")],
            ),
        ];
        let refusal = silence_refusal(&check(&m, &required(), &others)).expect("refused");
        assert_eq!(
            refusal,
            Refusal::SilenceMutesOthers {
                incident: 3,
                alertname: "X".into(),
                more: 1,
            }
        );
        assert!(refusal.message().contains("incident #3"), "{refusal:?}");
        assert!(refusal.message().contains("1 more"), "{refusal:?}");
        assert_eq!(silence_refusal(&check(&m, &required(), &others[..2])), None);
    }

    #[test]
    fn the_members_of_the_incidents_own_storm_do_not_count() {
        let m = silence_matchers(&labels(&[("alertname", "X"), ("instance", "db1")]));
        let wide = [("alertname", "X"), ("instance", "db1"), ("pool", "a")];
        // The storm incident 10 and its member 11; a member of storm 20.
        let others = [firing(10, Some(10), &wide), firing(11, Some(10), &wide)];
        let member = SilenceCheck {
            incident: 12,
            storm: Some(10),
            ..check(&m, &[], &others)
        };
        assert_eq!(silence_refusal(&member), None);
        let storm = SilenceCheck {
            incident: 10,
            storm: Some(10),
            ..check(&m, &[], &others[1..])
        };
        assert_eq!(silence_refusal(&storm), None);
        let elsewhere = [firing(21, Some(20), &wide)];
        let outsider = SilenceCheck {
            incident: 12,
            storm: Some(10),
            ..check(&m, &[], &elsewhere)
        };
        assert!(matches!(
            silence_refusal(&outsider),
            Some(Refusal::SilenceMutesOthers { incident: 21, .. })
        ));
        // Outside any storm, a storm's members are other incidents.
        let alone = check(&m, &[], &others);
        assert!(silence_refusal(&alone).is_some());
    }

    #[test]
    fn an_absent_label_matches_only_an_empty_value() {
        let m = SilenceMatcher {
            name: "pool".into(),
            value: String::new(),
        };
        assert!(m.matches(&labels(&[("alertname", "X")])));
        assert!(!m.matches(&labels(&[("pool", "a")])));
    }

    #[test]
    fn created_by_names_people_not_platform_keys() {
        assert_eq!(created_by(["person:alice"]), "alice");
        assert_eq!(
            created_by(["person:alice", "slack:U0X"]),
            "alice, slack user U0X (not in [people])"
        );
        assert_eq!(created_by([]), "remedy (automatic)");
    }
}

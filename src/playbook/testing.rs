//! `remedy test`: playbook unit tests, like `promtool test rules`. Each case
//! gives an alert and canned step outputs, and the findings, actions and
//! suggestions it expects; no database or network is touched. A step the
//! case does not mention ran and returned nothing (`ok: true`, no rows).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use super::evaluate::{AlertContext, Report, evaluate};
use super::model::Severity;
use super::{Playbook, find};
use crate::diagnose::StepOutput;
use crate::domain::Labels;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The cases' alerts must be matched by this playbook (by name).
    pub playbook: String,
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    /// Variable overrides for this case.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub steps: BTreeMap<String, StepOutput>,
    pub expect: Expect,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Every finding, in order: its severity and a part of its text.
    #[serde(default)]
    pub findings: Vec<ExpectFinding>,
    /// Every action instance, in order.
    #[serde(default)]
    pub actions: Vec<ExpectAction>,
    /// Every suggestion's title, in order.
    #[serde(default)]
    pub suggestions: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectFinding {
    pub severity: Severity,
    pub contains: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectAction {
    pub id: String,
    #[serde(default)]
    pub params: Option<Vec<String>>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// compose and env_file actions: the service acted on.
    #[serde(default)]
    pub service: Option<String>,
    /// env_file actions: the values set.
    #[serde(default)]
    pub set: Option<BTreeMap<String, String>>,
}

/// The outcome of one test file.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: usize,
    /// One readable block per failed case.
    pub failures: Vec<String>,
}

/// Runs every `*.yaml` test file under `path` (a file or a folder).
pub fn run_path(path: &Path, playbooks: &[Playbook], probes: &BTreeMap<String, String>) -> Outcome {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut outcome = Outcome::default();
    if files.is_empty() {
        outcome
            .failures
            .push(format!("{}: no test files", path.display()));
    }
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_saphyr::from_str::<TestFile>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(tests) => run_file(&file, &tests, playbooks, probes, &mut outcome),
            Err(e) => outcome.failures.push(format!("{}: {e}", file.display())),
        }
    }
    outcome
}

fn run_file(
    file: &Path,
    tests: &TestFile,
    playbooks: &[Playbook],
    probes: &BTreeMap<String, String>,
    outcome: &mut Outcome,
) {
    for case in &tests.cases {
        let header = format!("{} › {}", file.display(), case.name);
        let Some(playbook) = find(playbooks, &case.labels) else {
            outcome.failures.push(format!(
                "{header}\n  no playbook matches labels {:?}",
                case.labels
            ));
            continue;
        };
        if playbook.spec.name != tests.playbook {
            outcome.failures.push(format!(
                "{header}\n  matched playbook `{}`, expected `{}`",
                playbook.spec.name, tests.playbook
            ));
            continue;
        }
        let report = case_report(playbook, case, probes);
        match compare(&report, &case.expect) {
            None => outcome.passed += 1,
            Some(diff) => outcome.failures.push(format!("{header}\n{diff}")),
        }
    }
}

/// The report a case's canned step outputs produce (also used by the chat
/// golden tests).
#[must_use]
pub fn case_report(
    playbook: &Playbook,
    case: &TestCase,
    probes: &BTreeMap<String, String>,
) -> Report {
    let mut playbook = playbook.clone();
    for (name, value) in &case.vars {
        playbook.set_var(name, value.clone());
    }
    let alert = AlertContext {
        labels: case.labels.clone(),
        annotations: case.annotations.clone(),
        status: "firing".into(),
        ..AlertContext::default()
    };
    let steps = playbook
        .spec
        .steps
        .iter()
        .map(|s| {
            let id = s.value.id().to_owned();
            let output = case.steps.get(&id).cloned().unwrap_or(StepOutput {
                ok: true,
                ..StepOutput::default()
            });
            (id, output)
        })
        .collect();
    evaluate(&playbook, &alert, probes, steps)
}

/// A readable diff, or `None` when the report is as expected.
fn compare(report: &Report, expect: &Expect) -> Option<String> {
    let mut diff = String::new();
    let findings_ok = report.findings.len() == expect.findings.len()
        && report
            .findings
            .iter()
            .zip(&expect.findings)
            .all(|(got, want)| got.severity == want.severity && got.text.contains(&want.contains));
    if !findings_ok {
        let _ = writeln!(diff, "  findings differ:");
        for want in &expect.findings {
            let _ = writeln!(
                diff,
                "    - expected {:?} containing {:?}",
                want.severity, want.contains
            );
        }
        for got in &report.findings {
            let _ = writeln!(diff, "    + got      {:?}: {}", got.severity, got.text);
        }
    }
    let actions_ok = report.actions.len() == expect.actions.len()
        && report
            .actions
            .iter()
            .zip(&expect.actions)
            .all(|(got, want)| {
                got.id == want.id
                    && want.params.as_ref().is_none_or(|p| *p == got.params)
                    && want.args.as_ref().is_none_or(|a| *a == got.args)
                    && want
                        .service
                        .as_ref()
                        .is_none_or(|s| Some(s) == got.service.as_ref())
                    && want.set.as_ref().is_none_or(|s| *s == got.set)
            });
    if !actions_ok {
        let _ = writeln!(diff, "  actions differ:");
        for want in &expect.actions {
            let _ = writeln!(
                diff,
                "    - expected {} params {:?} args {:?} service {:?} set {:?}",
                want.id, want.params, want.args, want.service, want.set
            );
        }
        for got in &report.actions {
            let _ = writeln!(
                diff,
                "    + got      {} params {:?} args {:?} service {:?} set {:?}",
                got.id, got.params, got.args, got.service, got.set
            );
        }
    }
    let titles: Vec<&str> = report
        .suggestions
        .iter()
        .map(|s| s.title.as_str())
        .collect();
    if titles
        != expect
            .suggestions
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    {
        let _ = writeln!(
            diff,
            "  suggestions differ:\n    - expected {:?}\n    + got      {titles:?}",
            expect.suggestions
        );
    }
    if !report.errors.is_empty() {
        let _ = writeln!(diff, "  template errors:");
        for e in &report.errors {
            let _ = writeln!(diff, "    ! {e}");
        }
    }
    (!diff.is_empty()).then_some(diff)
}

//! Playbooks: the YAML model operators write, loading and validation with
//! positions, Alertmanager matchers, and the templates that turn step
//! outputs into findings, actions with bound parameters, and suggestions.

pub mod evaluate;
pub mod load;
pub mod matcher;
pub mod model;
pub mod template;
pub mod testing;

use std::path::PathBuf;

use serde_json::{Map, Value};

pub use evaluate::{ActionInstance, AlertContext, Finding, Report, Suggestion};
pub use load::{PlaybookError, References, load_dir, load_str};

use crate::domain::Labels;

/// A validated playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub file: PathBuf,
    pub spec: model::PlaybookFile,
    pub matchers: Vec<matcher::Matcher>,
    /// `vars` with `NAME_seconds` added for every duration.
    pub vars: Map<String, Value>,
}

impl Playbook {
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        matcher::matches_all(&self.matchers, labels)
    }

    /// Overrides variables (tests and operators), recomputing the `_seconds` forms.
    pub fn set_var(&mut self, name: &str, value: Value) {
        self.spec.vars.insert(name.to_owned(), value);
        self.vars = expand_vars(&self.spec.vars);
    }
}

/// The first playbook, in file-name order, whose matchers all match.
#[must_use]
pub fn find<'a>(playbooks: &'a [Playbook], labels: &Labels) -> Option<&'a Playbook> {
    playbooks.iter().find(|p| p.matches(labels))
}

pub(crate) fn expand_vars(vars: &std::collections::BTreeMap<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in vars {
        if let Some(d) = value
            .as_str()
            .and_then(|s| humantime::parse_duration(s).ok())
        {
            out.insert(format!("{name}_seconds"), Value::from(d.as_secs_f64()));
        }
        out.insert(name.clone(), value.clone());
    }
    out
}

/// The parameter number `N` of a precondition's `backend_start = $N`: the
/// one that pins the backend a cancel or terminate may touch.
#[must_use]
pub fn pinned_backend_start(query: &str) -> Option<usize> {
    static PIN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?i)\bbackend_start\s*=\s*\$([1-9][0-9]*)").expect("valid regex")
    });
    PIN.captures(query).and_then(|c| c[1].parse().ok())
}

/// Whether a statement cancels or terminates backends.
#[must_use]
pub fn signals_backends(statement: &str) -> bool {
    let lowered = statement.to_ascii_lowercase();
    lowered.contains("pg_terminate_backend") || lowered.contains("pg_cancel_backend")
}

//! Loading and validating playbooks. Every problem is reported with its
//! file, line, column and field, and all of a folder's problems are
//! reported at once, so `remedy check` is one round trip for the operator.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_saphyr::{Location, Spanned};

use super::Playbook;
use super::matcher::{Matcher, parse_matchers};
use super::model::{ActionKind, ActionSpec, ArgSpec, PlaybookFile, StepSpec};
use super::template;
use crate::config::Settings;

/// One problem in one playbook file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybookError {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub field: String,
    pub message: String,
}

impl fmt::Display for PlaybookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.field,
            self.message
        )
    }
}

/// What a playbook may refer to, from the settings.
#[derive(Debug, Clone, Default)]
pub struct References {
    pub targets: BTreeSet<String>,
    pub programs: BTreeSet<PathBuf>,
    pub probes: BTreeSet<String>,
    /// `[redis.NAME]` names, for `redis` steps.
    pub redis: BTreeSet<String>,
    /// `[compose.NAME]` names and their programs (the argv's first element).
    pub compose: BTreeMap<String, PathBuf>,
    /// `[env_files.NAME]` names and their allowed keys.
    pub env_files: BTreeMap<String, Vec<String>>,
}

impl References {
    #[must_use]
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            targets: settings.targets.keys().cloned().collect(),
            programs: settings.commands.allow.iter().cloned().collect(),
            probes: settings.probes.keys().cloned().collect(),
            redis: settings.redis.keys().cloned().collect(),
            compose: settings
                .compose
                .iter()
                .map(|(name, c)| {
                    (
                        name.clone(),
                        PathBuf::from(c.program.first().cloned().unwrap_or_default()),
                    )
                })
                .collect(),
            env_files: settings
                .env_files
                .iter()
                .map(|(name, f)| (name.clone(), f.allowed_keys.clone()))
                .collect(),
        }
    }
}

/// Loads every `*.yaml` / `*.yml` file directly in `dir`, in name order.
pub fn load_dir(dir: &Path, refs: &References) -> Result<Vec<Playbook>, Vec<PlaybookError>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect(),
        Err(e) => {
            return Err(vec![PlaybookError {
                file: dir.to_owned(),
                line: 0,
                column: 0,
                field: "playbooks.dir".into(),
                message: format!("cannot read the folder: {e}"),
            }]);
        }
    };
    files.sort();
    let mut playbooks = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match load_str(&file, &text, refs) {
                Ok(p) => playbooks.push(p),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => errors.push(PlaybookError {
                file: file.clone(),
                line: 0,
                column: 0,
                field: ".".into(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let mut names: BTreeMap<&str, &Path> = BTreeMap::new();
    for p in &playbooks {
        if let Some(first) = names.insert(&p.spec.name, &p.file) {
            errors.push(PlaybookError {
                file: p.file.clone(),
                line: 1,
                column: 1,
                field: "name".into(),
                message: format!("`{}` is also the name of {}", p.spec.name, first.display()),
            });
        }
    }
    if errors.is_empty() {
        Ok(playbooks)
    } else {
        Err(errors)
    }
}

/// Parses and validates one playbook.
pub fn load_str(
    file: &Path,
    text: &str,
    refs: &References,
) -> Result<Playbook, Vec<PlaybookError>> {
    let spec: PlaybookFile = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default();
        // serde-saphyr prefixes "error: line L column C: "; the position is ours to print.
        let message = first
            .rsplit_once(&format!("column {column}: "))
            .map_or(first, |(_, m)| m);
        vec![PlaybookError {
            file: file.to_owned(),
            line,
            column,
            field: field_named_in(message),
            message: message.to_owned(),
        }]
    })?;
    let mut v = Validator {
        file,
        refs,
        errors: Vec::new(),
    };
    let matchers = v.matchers(&spec);
    v.steps(&spec);
    v.findings(&spec);
    v.actions(&spec);
    v.suggestions(&spec);
    if v.errors.is_empty() {
        Ok(Playbook {
            file: file.to_owned(),
            vars: super::expand_vars(&spec.vars),
            matchers,
            spec,
        })
    } else {
        Err(v.errors)
    }
}

fn field_named_in(message: &str) -> String {
    message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
        .unwrap_or(".")
        .to_owned()
}

struct Validator<'a> {
    file: &'a Path,
    refs: &'a References,
    errors: Vec<PlaybookError>,
}

impl Validator<'_> {
    fn error(&mut self, at: Location, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(PlaybookError {
            file: self.file.to_owned(),
            line: at.line(),
            column: at.column(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn template(&mut self, at: Location, field: String, source: &str) {
        if let Err(e) = template::check_template(source) {
            self.error(at, field, format!("template error: {e}"));
        }
    }

    fn expression(&mut self, at: Location, field: String, source: &str) {
        if let Err(e) = template::check_expression(source) {
            self.error(at, field, format!("expression error: {e}"));
        }
    }

    fn matchers(&mut self, spec: &PlaybookFile) -> Vec<Matcher> {
        if spec.matchers.is_empty() {
            self.error(
                Location::UNKNOWN,
                "match",
                "at least one matcher is required",
            );
        }
        let mut all = Vec::new();
        for (i, m) in spec.matchers.iter().enumerate() {
            match parse_matchers(&m.value) {
                Ok(mut parsed) => all.append(&mut parsed),
                Err(e) => self.error(m.referenced, format!("match[{i}]"), e.to_string()),
            }
        }
        all
    }

    fn target(&mut self, at: Location, field: String, target: &str) {
        if !target.contains("{{") && !self.refs.targets.contains(target) {
            let known: Vec<&str> = self.refs.targets.iter().map(String::as_str).collect();
            self.error(
                at,
                field,
                format!("unknown target `{target}` (configured: {})", list(&known)),
            );
        }
    }

    /// Every `probes.NAME` an HTTP step's URL names must be configured.
    fn probes(&mut self, at: Location, field: &str, url: &str) {
        static PROBE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
            Regex::new(r"\bprobes\.([A-Za-z_][A-Za-z0-9_]*)").expect("valid regex")
        });
        for name in PROBE.captures_iter(url).map(|c| c[1].to_owned()) {
            if !self.refs.probes.contains(&name) {
                let known: Vec<&str> = self.refs.probes.iter().map(String::as_str).collect();
                self.error(
                    at,
                    field,
                    format!("unknown probe `{name}` (configured: {})", list(&known)),
                );
            }
        }
    }

    /// An argv template; `allow_dash` only where a template could put a
    /// dash first.
    fn arg(&mut self, at: Location, field: &str, arg: &ArgSpec) {
        let source = arg.source();
        self.template(at, field.to_owned(), source);
        if arg.allow_dash() && (!source.contains("{{") || source.trim_start().starts_with('-')) {
            self.error(
                at,
                format!("{field}.allow_dash"),
                "only for an argument whose template inserts a value at its start",
            );
        }
    }

    /// An http URL's scheme, host and port come from a probe or the
    /// playbook's own text, never from an alert.
    fn url_base(&mut self, at: Location, field: String, url: &str) {
        if let Err(e) = template::url_base(url) {
            self.error(at, field, e);
        }
    }

    fn program(&mut self, at: Location, field: String, program: &str) {
        if !self.refs.programs.contains(Path::new(program)) {
            self.error(at, field, format!("`{program}` is not in commands.allow"));
        }
    }

    fn compose_project(&mut self, at: Location, field: String, name: &str) {
        match self.refs.compose.get(name) {
            None => {
                let known: Vec<&str> = self.refs.compose.keys().map(String::as_str).collect();
                self.error(
                    at,
                    field,
                    format!(
                        "unknown compose project `{name}` (configured: {})",
                        list(&known)
                    ),
                );
            }
            Some(program) if !self.refs.programs.contains(program) => {
                let message = format!(
                    "compose.{name}.program: `{}` is not in commands.allow",
                    program.display()
                );
                self.error(at, field, message);
            }
            Some(_) => {}
        }
    }

    fn env_file(&mut self, at: Location, field: String, name: &str) -> Option<Vec<String>> {
        let allowed = self.refs.env_files.get(name).cloned();
        if allowed.is_none() {
            let known: Vec<&str> = self.refs.env_files.keys().map(String::as_str).collect();
            self.error(
                at,
                field,
                format!("unknown env file `{name}` (configured: {})", list(&known)),
            );
        }
        allowed
    }

    fn steps(&mut self, spec: &PlaybookFile) {
        let mut ids = BTreeSet::new();
        let default_target = spec.target.as_ref();
        if let Some(t) = default_target {
            self.target(t.referenced, "target".into(), &t.value);
        }
        for (
            i,
            Spanned {
                value: step,
                referenced: at,
                ..
            },
        ) in spec.steps.iter().enumerate()
        {
            let at = *at;
            let id = step.id();
            if !is_identifier(id) {
                self.error(
                    at,
                    format!("steps[{i}].id"),
                    format!("`{id}` must be a name of letters, digits and _"),
                );
            } else if !ids.insert(id) {
                self.error(
                    at,
                    format!("steps[{i}].id"),
                    format!("`{id}` is used by another step"),
                );
            }
            match step {
                StepSpec::Sql {
                    target,
                    query,
                    params,
                    ..
                }
                | StepSpec::Explain {
                    target,
                    query,
                    params,
                    ..
                } => {
                    match (target, default_target) {
                        (Some(t), _) => self.target(at, format!("steps[{i}].target"), t),
                        (None, Some(_)) => {}
                        (None, None) => self.error(
                            at,
                            format!("steps[{i}].target"),
                            "no target here and no playbook `target`",
                        ),
                    }
                    if query.contains("{{") {
                        self.error(
                            at,
                            format!("steps[{i}].query"),
                            "SQL is not a template: pass values as `params` ($1, $2, …)",
                        );
                    }
                    for (j, p) in params.iter().enumerate() {
                        self.template(at, format!("steps[{i}].params[{j}]"), p);
                    }
                    // An explain step's table-size floor is a template too.
                    if let StepSpec::Explain { min_rows, .. } = step {
                        self.template(at, format!("steps[{i}].min_rows"), min_rows);
                    }
                }
                StepSpec::Promql { query, .. } => {
                    self.template(at, format!("steps[{i}].query"), query);
                }
                StepSpec::Redis {
                    target, slowlog, ..
                } => {
                    if !self.refs.redis.contains(target) {
                        let known: Vec<&str> = self.refs.redis.iter().map(String::as_str).collect();
                        self.error(
                            at,
                            format!("steps[{i}].target"),
                            format!(
                                "unknown redis `{target}` (configured [redis.NAME]: {})",
                                list(&known)
                            ),
                        );
                    }
                    if slowlog.is_some_and(|n| n > 128) {
                        self.error(at, format!("steps[{i}].slowlog"), "at most 128 entries");
                    }
                }
                StepSpec::Http { url, method, .. } => {
                    self.template(at, format!("steps[{i}].url"), url);
                    self.probes(at, &format!("steps[{i}].url"), url);
                    self.url_base(at, format!("steps[{i}].url"), url);
                    if reqwest::Method::from_bytes(method.as_bytes()).is_err() {
                        self.error(
                            at,
                            format!("steps[{i}].method"),
                            format!("`{method}` is not an HTTP method"),
                        );
                    }
                }
                StepSpec::Command {
                    program,
                    args,
                    pattern,
                    ..
                } => {
                    self.program(at, format!("steps[{i}].program"), program);
                    for (j, a) in args.iter().enumerate() {
                        self.arg(at, &format!("steps[{i}].args[{j}]"), a);
                    }
                    if let Some(Err(e)) = pattern.as_deref().map(Regex::new) {
                        self.error(at, format!("steps[{i}].pattern"), format!("bad regex: {e}"));
                    }
                }
                StepSpec::Compose {
                    project,
                    logs,
                    pattern,
                    ..
                } => {
                    self.compose_project(at, format!("steps[{i}].project"), project);
                    self.template(at, format!("steps[{i}].logs"), logs);
                    if let Some(Err(e)) = pattern.as_deref().map(Regex::new) {
                        self.error(at, format!("steps[{i}].pattern"), format!("bad regex: {e}"));
                    }
                }
                StepSpec::EnvFile { env_file, .. } => {
                    self.env_file(at, format!("steps[{i}].env_file"), env_file);
                }
            }
        }
    }

    fn step_ref(&mut self, spec: &PlaybookFile, at: Location, field: String, id: &str) {
        if !spec.steps.iter().any(|s| s.value.id() == id) {
            self.error(at, field, format!("no step `{id}`"));
        }
    }

    fn findings(&mut self, spec: &PlaybookFile) {
        for (i, f) in spec.findings.iter().enumerate() {
            let at = f.referenced;
            if let Some(when) = &f.value.when {
                self.expression(at, format!("findings[{i}].when"), when);
            }
            self.template(at, format!("findings[{i}].text"), &f.value.text);
            if let Some(step) = &f.value.evidence {
                self.step_ref(spec, at, format!("findings[{i}].evidence"), step);
            }
        }
    }

    fn actions(&mut self, spec: &PlaybookFile) {
        let mut ids = BTreeSet::new();
        for (i, a) in spec.actions.iter().enumerate() {
            let (at, action) = (a.referenced, &a.value);
            if !is_identifier(&action.id) || !ids.insert(action.id.as_str()) {
                self.error(
                    at,
                    format!("actions[{i}].id"),
                    format!(
                        "`{}` must be a unique name of letters, digits and _",
                        action.id
                    ),
                );
            }
            if action.quorum == 0 {
                self.error(at, format!("actions[{i}].quorum"), "must be at least 1");
            }
            self.template(at, format!("actions[{i}].title"), &action.title);
            if let Some(when) = &action.when {
                self.expression(at, format!("actions[{i}].when"), when);
            }
            if let Some(step) = &action.for_each {
                self.step_ref(spec, at, format!("actions[{i}].for_each"), step);
            }
            for (j, p) in action.params.iter().enumerate() {
                self.template(at, format!("actions[{i}].params[{j}]"), p);
            }
            for (j, a) in action.args.iter().enumerate() {
                self.arg(at, &format!("actions[{i}].args[{j}]"), a);
            }
            let field = |name: &str| format!("actions[{i}].{name}");
            match action.kind {
                ActionKind::Sql => match &action.statement {
                    None => self.error(at, field("statement"), "a sql action needs a statement"),
                    Some(s) if s.contains("{{") => self.error(
                        at,
                        field("statement"),
                        "SQL is not a template: pass values as `params`",
                    ),
                    Some(_) => match (&action.target, spec.target.is_some()) {
                        (Some(t), _) => self.target(at, field("target"), t),
                        (None, true) => {}
                        (None, false) => self.error(
                            at,
                            field("target"),
                            "no target here and no playbook `target`",
                        ),
                    },
                },
                ActionKind::Command => match &action.program {
                    None => self.error(at, field("program"), "a command action needs a program"),
                    Some(p) => self.program(at, field("program"), p),
                },
                ActionKind::Http => {
                    match &action.url {
                        None => self.error(at, field("url"), "an http action needs a url"),
                        Some(u) => {
                            self.template(at, field("url"), u);
                            self.probes(at, &field("url"), u);
                            self.url_base(at, field("url"), u);
                        }
                    }
                    if let Some(b) = &action.body {
                        self.template(at, field("body"), b);
                    }
                }
                ActionKind::Silence => {
                    if action.duration.is_none() {
                        self.error(at, field("duration"), "a silence needs a duration");
                    }
                }
                ActionKind::RoleSetting | ActionKind::CreateIndex => {
                    let (wanted, what) = if action.kind == ActionKind::RoleSetting {
                        (2, "a role_setting action takes `params: [ROLE, VALUE]`")
                    } else {
                        (
                            3,
                            "a create_index action takes `params: [SCHEMA, TABLE, COLUMNS]`",
                        )
                    };
                    if action.params.len() != wanted {
                        self.error(at, field("params"), what);
                    }
                    if action.statement.is_some() {
                        self.error(
                            at,
                            field("statement"),
                            "the executor builds this statement itself (identifiers quoted by the server)",
                        );
                    }
                    match (&action.target, spec.target.is_some()) {
                        (Some(t), _) => self.target(at, field("target"), t),
                        (None, true) => {}
                        (None, false) => self.error(
                            at,
                            field("target"),
                            "no target here and no playbook `target`",
                        ),
                    }
                    if action.kind == ActionKind::RoleSetting {
                        match action.setting.as_deref() {
                            Some(s) if crate::actions::ddl::ROLE_SETTINGS.contains(&s) => {}
                            Some(s) => self.error(
                                at,
                                field("setting"),
                                format!(
                                    "`{s}` is not one of {}",
                                    crate::actions::ddl::ROLE_SETTINGS.join(", ")
                                ),
                            ),
                            None => self.error(
                                at,
                                field("setting"),
                                "a role_setting action needs a setting",
                            ),
                        }
                    } else if action.risk == crate::playbook::model::Risk::Safe {
                        self.error(
                            at,
                            field("risk"),
                            "building an index loads the database: at least `disruptive`",
                        );
                    }
                }
                ActionKind::Compose => {
                    self.service(at, &field, action);
                    if action.operation.is_none() {
                        self.error(
                            at,
                            field("operation"),
                            "a compose action needs an operation: restart, up or recreate",
                        );
                    }
                }
                ActionKind::EnvFile => {
                    self.service(at, &field, action);
                    match &action.env_file {
                        None => self.error(
                            at,
                            field("env_file"),
                            "an env_file action needs an env_file",
                        ),
                        Some(name) => {
                            if let Some(allowed) = self.env_file(at, field("env_file"), name) {
                                for key in action.set.keys().filter(|k| !allowed.contains(k)) {
                                    self.error(
                                        at,
                                        format!("actions[{i}].set.{key}"),
                                        format!(
                                            "env_files.{name} does not allow `{key}` (allowed_keys: {})",
                                            allowed.join(", ")
                                        ),
                                    );
                                }
                            }
                        }
                    }
                    if action.set.is_empty() {
                        self.error(at, field("set"), "an env_file action sets at least one key");
                    }
                    for (key, value) in &action.set {
                        self.template(at, format!("actions[{i}].set.{key}"), value);
                    }
                }
            }
            if let Some(verify) = &action.verify {
                self.expression(at, field("verify"), verify);
            }
            if let Some(undone) = &action.undoes {
                let undos = spec
                    .actions
                    .iter()
                    .filter(|a| a.value.undoes.as_ref() == Some(undone))
                    .count();
                match spec.actions.iter().map(|a| &a.value).find(|a| &a.id == undone) {
                    None => self.error(
                        at,
                        field("undoes"),
                        format!("no action `{undone}` in this playbook"),
                    ),
                    Some(other) if other.id == action.id || other.undoes.is_some() => self.error(
                        at,
                        field("undoes"),
                        format!("`{undone}` is itself an undo (or this action): an undo undoes a change"),
                    ),
                    // Each row's undo answers the change made from that row.
                    Some(other) if other.for_each != action.for_each => self.error(
                        at,
                        field("undoes"),
                        format!("an undo has the `for_each` of `{undone}`, so each row's undo answers that row's change"),
                    ),
                    // An env file's undo would set what the file holds when
                    // the report is made: nothing to do, so never offered.
                    Some(other)
                        if other.kind == ActionKind::EnvFile || action.kind == ActionKind::EnvFile =>
                    {
                        self.error(
                            at,
                            field("undoes"),
                            "an env_file edit is undone by remedy itself (its backup, when the check or the verification fails), not by an action",
                        );
                    }
                    Some(_) if undos > 1 => self.error(
                        at,
                        field("undoes"),
                        format!("`{undone}` has {undos} undos: one is offered, so name one"),
                    ),
                    Some(_) => {}
                }
                if action.automatic {
                    self.error(
                        at,
                        field("automatic"),
                        "an undo is offered to people, never automatic",
                    );
                }
            }
            if action.automatic && action.risk != crate::playbook::model::Risk::Safe {
                self.error(
                    at,
                    field("automatic"),
                    "only `risk: safe` actions may be automatic",
                );
            }
            if action.kind == ActionKind::Sql
                && action
                    .statement
                    .as_deref()
                    .is_some_and(super::signals_backends)
            {
                // The executor's cancel/terminate re-checks this value in the
                // same statement: a recycled pid is never signalled.
                let pinned = action.precondition.as_ref().is_some_and(|pre| {
                    super::pinned_backend_start(&pre.query).is_some_and(|n| n <= pre.params.len())
                });
                if !pinned {
                    self.error(
                        at,
                        field("precondition"),
                        "an action that cancels or terminates a backend needs a precondition that pins it: `backend_start = $N::timestamptz` with its value in `params`",
                    );
                }
            }
            if let Some(pre) = &action.precondition {
                if pre.query.contains("{{") {
                    self.error(
                        at,
                        field("precondition.query"),
                        "SQL is not a template: pass values as `params`",
                    );
                }
                for (j, p) in pre.params.iter().enumerate() {
                    self.template(at, format!("actions[{i}].precondition.params[{j}]"), p);
                }
            }
        }
    }

    /// A compose or env_file action's project and service.
    fn service(&mut self, at: Location, field: &dyn Fn(&str) -> String, action: &ActionSpec) {
        match &action.project {
            None => self.error(at, field("project"), "needs a compose `project`"),
            Some(p) => self.compose_project(at, field("project"), p),
        }
        match &action.service {
            None => self.error(at, field("service"), "needs the `service` it acts on"),
            Some(s) => self.template(at, field("service"), s),
        }
    }

    fn suggestions(&mut self, spec: &PlaybookFile) {
        for (i, s) in spec.suggestions.iter().enumerate() {
            let at = s.referenced;
            self.template(at, format!("suggestions[{i}].title"), &s.value.title);
            if let Some(when) = &s.value.when {
                self.expression(at, format!("suggestions[{i}].when"), when);
            }
            for (name, t) in [("text", &s.value.text), ("command", &s.value.command)] {
                if let Some(t) = t {
                    self.template(at, format!("suggestions[{i}].{name}"), t);
                }
            }
        }
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

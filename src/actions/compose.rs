//! `compose` actions: `restart`, `up` or `recreate` one service of a
//! configured compose project, always with its folder, files and project
//! name (see [`crate::diagnose::compose`]). `restart` keeps the container's
//! environment; an edited `.env` needs `up` (or an `env_file` action).

use super::Outcome;
use crate::config::ExecutorSettings;
use crate::diagnose::Diagnoser;
use crate::diagnose::compose::{Invocation, invocation};
use crate::playbook::ActionInstance;

/// Lines of output kept for the report.
const MAX_LINES: usize = 200;

pub async fn run(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    action: &ActionInstance,
) -> Outcome {
    let (Some(name), Some(service), Some(operation)) = (
        action.project.as_deref(),
        action.service.as_deref(),
        action.operation,
    ) else {
        return Outcome::new(
            "refused",
            "compose action without a project, service or operation",
        );
    };
    let Some(project) = diagnoser.compose(name) else {
        return Outcome::new("refused", format!("unknown compose project `{name}`"));
    };
    let mut rest = operation.args().to_vec();
    rest.push(service);
    let (ok, output) = run_invocation(diagnoser, settings, &invocation(project, &rest)).await;
    Outcome::new(if ok { "done" } else { "failed" }, output)
}

/// Runs one compose command; whether it exited 0, and `$ command`, the
/// exit code and its output lines, for the audit log.
pub(super) async fn run_invocation(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    invocation: &Invocation,
) -> (bool, String) {
    let shown = format!("$ {}", invocation.display());
    if !diagnoser.allows(&invocation.program) {
        return (
            false,
            format!(
                "{shown}\n{} is not in commands.allow",
                invocation.program.display()
            ),
        );
    }
    match crate::diagnose::command::run_in(
        Some(&invocation.dir),
        &invocation.program,
        &invocation.args,
        diagnoser.child_env(),
        None,
        settings.command_timeout,
        settings.max_output_bytes,
        MAX_LINES,
    )
    .await
    {
        Ok(out) => {
            let lines: Vec<&str> = out
                .rows
                .iter()
                .filter_map(|r| r.get("line").and_then(|l| l.as_str()))
                .collect();
            let code = out
                .value
                .map_or_else(|| "killed by a signal".into(), |c| format!("exit {c}"));
            (
                out.value == Some(0.0),
                format!("{shown}\n{code}\n{}", lines.join("\n")),
            )
        }
        Err(e) => (false, format!("{shown}\n{e}")),
    }
}

//! `command` actions: an allow-listed program with its argv (values from
//! alerts are single argv elements, never parsed by a shell), a cleared
//! environment plus `commands.env`, a timeout and an output cap.

use std::path::Path;

use super::Outcome;
use crate::config::ExecutorSettings;
use crate::diagnose::Diagnoser;
use crate::playbook::ActionInstance;

/// Lines of output kept for the report.
const MAX_LINES: usize = 200;

pub async fn run(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    action: &ActionInstance,
) -> Outcome {
    let Some(program) = action.program.as_deref().map(Path::new) else {
        return Outcome::new("refused", "command action without a program");
    };
    if !diagnoser.allows(program) {
        return Outcome::new(
            "refused",
            format!("{} is not in commands.allow", program.display()),
        );
    }
    match crate::diagnose::command::run(
        program,
        &action.args,
        diagnoser.child_env(),
        None,
        settings.command_timeout,
        settings.max_output_bytes,
        MAX_LINES,
    )
    .await
    {
        Ok(out) => {
            let lines: Vec<String> = out
                .rows
                .iter()
                .filter_map(|r| r.get("line").and_then(|l| l.as_str()).map(str::to_owned))
                .collect();
            let code = out
                .value
                .map_or_else(|| "killed by a signal".into(), |c| format!("exit {c}"));
            let output = format!("{code}\n{}", lines.join("\n"));
            if out.value == Some(0.0) {
                Outcome::new("done", output)
            } else {
                Outcome::new("failed", output)
            }
        }
        Err(e) => Outcome::new("failed", e.to_string()),
    }
}

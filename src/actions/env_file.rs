//! `env_file` actions: set allow-listed keys in a configured environment
//! file, then recreate the service that reads it. The file is backed up
//! (timestamped, beside it) and replaced atomically; only the lines the
//! approvers saw change, and only if they are still the file's lines. The
//! new container's value is read back (`exec SERVICE printenv KEY`); when
//! recreating or that check fails, the backup is restored and the service
//! recreated again. A later ineffective verification undoes it the same way.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use time::macros::format_description;

use super::Outcome;
use super::compose::run_invocation;
use crate::config::{ComposeSettings, EnvFileSettings, ExecutorSettings};
use crate::diagnose::Diagnoser;
use crate::diagnose::compose::invocation;
use crate::domain::env_file;
use crate::playbook::ActionInstance;
use crate::playbook::model::ComposeOperation;

/// The line of an outcome that names the backup (read back to undo).
const BACKUP_PREFIX: &str = "backup: ";

/// What an env_file action acts on, resolved from the settings.
struct Resolved<'a> {
    file: &'a EnvFileSettings,
    project: &'a ComposeSettings,
    service: &'a str,
}

fn resolve<'a>(
    diagnoser: &'a Diagnoser,
    action: &'a ActionInstance,
) -> Result<Resolved<'a>, String> {
    let name = action.env_file.as_deref().unwrap_or_default();
    let file = diagnoser
        .env_file(name)
        .ok_or_else(|| format!("unknown env file `{name}`"))?;
    if let Some(change) = action
        .changes
        .iter()
        .find(|c| !file.allowed_keys.contains(&c.key))
    {
        return Err(format!("env_files.{name} does not allow `{}`", change.key));
    }
    let project_name = action.project.as_deref().unwrap_or_default();
    let project = diagnoser
        .compose(project_name)
        .ok_or_else(|| format!("unknown compose project `{project_name}`"))?;
    let service = action
        .service
        .as_deref()
        .ok_or("an env_file action needs the service to recreate")?;
    Ok(Resolved {
        file,
        project,
        service,
    })
}

pub async fn run(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    action: &ActionInstance,
) -> Outcome {
    let target = match resolve(diagnoser, action) {
        Ok(target) => target,
        Err(e) => return Outcome::new("refused", e),
    };
    if action.changes.is_empty() {
        return Outcome::new("refused", "no lines to change");
    }
    let path = &target.file.path;
    let original = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) => return Outcome::new("failed", format!("cannot read {}: {e}", path.display())),
    };
    let edited = match env_file::apply(&original, &action.changes) {
        Ok(text) => text,
        Err(e) => return Outcome::new("precondition_failed", e.to_string()),
    };
    let backup = match backup(path, &original).await {
        Ok(backup) => backup,
        Err(e) => return Outcome::new("failed", e),
    };
    let mut log = vec![format!("{BACKUP_PREFIX}{}", backup.display())];
    log.extend(action.diff_lines());
    if let Err(e) = write_atomically(path, &edited).await {
        log.push(e);
        return Outcome::new("failed", log.join("\n"));
    }
    let (recreated, output) = recreate(diagnoser, settings, &target).await;
    log.push(output);
    let checked = if recreated {
        check_values(diagnoser, settings, &target, action).await
    } else {
        Err("recreating the service failed".to_owned())
    };
    match checked {
        Ok(seen) => {
            log.push(seen);
            Outcome::new("done", log.join("\n"))
        }
        Err(why) => {
            log.push(why);
            log.push(restore_text(diagnoser, settings, &target, &original).await);
            Outcome::new("failed", log.join("\n"))
        }
    }
}

/// Undoes a run whose verification judged it ineffective: the backup named
/// in its `output` goes back in place (only if the file still holds the
/// lines the run wrote) and the service is recreated. What happened, for
/// the audit log and the thread.
pub async fn undo(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    action: &ActionInstance,
    output: &str,
) -> String {
    let target = match resolve(diagnoser, action) {
        Ok(target) => target,
        Err(e) => return format!("not undone: {e}"),
    };
    let Some(backup) = output
        .lines()
        .find_map(|l| l.strip_prefix(BACKUP_PREFIX))
        .map(PathBuf::from)
    else {
        return "not undone: the run named no backup".into();
    };
    let current = match tokio::fs::read_to_string(&target.file.path).await {
        Ok(text) => text,
        Err(e) => {
            return format!(
                "not undone: cannot read {}: {e}",
                target.file.path.display()
            );
        }
    };
    let still_ours = action
        .changes
        .iter()
        .all(|c| env_file::lookup(&current, &c.key).is_some_and(|(_, line, _)| line == c.after));
    if !still_ours {
        return format!(
            "not undone: {} changed since remedy wrote it",
            target.file.path.display()
        );
    }
    match tokio::fs::read_to_string(&backup).await {
        Ok(original) => restore_text(diagnoser, settings, &target, &original).await,
        Err(e) => format!(
            "not undone: cannot read the backup {}: {e}",
            backup.display()
        ),
    }
}

/// Puts `original` back and recreates the service.
async fn restore_text(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    target: &Resolved<'_>,
    original: &str,
) -> String {
    if let Err(e) = write_atomically(&target.file.path, original).await {
        return format!("restoring {} failed: {e}", target.file.path.display());
    }
    let (ok, output) = recreate(diagnoser, settings, target).await;
    format!(
        "restored {} from the backup; {}\n{output}",
        target.file.path.display(),
        if ok {
            "the service was recreated with it"
        } else {
            "recreating the service FAILED"
        }
    )
}

async fn recreate(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    target: &Resolved<'_>,
) -> (bool, String) {
    let mut rest = ComposeOperation::Recreate.args().to_vec();
    rest.push(target.service);
    run_invocation(diagnoser, settings, &invocation(target.project, &rest)).await
}

/// Reads every changed key inside the new container.
async fn check_values(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    target: &Resolved<'_>,
    action: &ActionInstance,
) -> Result<String, String> {
    let mut seen = Vec::new();
    for change in &action.changes {
        let expected = change.after.split_once('=').map_or("", |(_, value)| value);
        let rest = [
            "exec",
            "-T",
            target.service,
            "printenv",
            change.key.as_str(),
        ];
        let inv = invocation(target.project, &rest);
        let (ok, output) = run_invocation(diagnoser, settings, &inv).await;
        // The output is `$ command`, `exit N`, then the value.
        let value = output.lines().nth(2).unwrap_or_default().trim();
        if !ok || value != expected {
            return Err(format!(
                "the new container has {}={value:?}, not {expected:?}:\n{output}",
                change.key
            ));
        }
        seen.push(format!("{}={value} in the new container", change.key));
    }
    Ok(seen.join("\n"))
}

/// Copies `text` (the file as read) to `FILE.remedy-YYYYmmddTHHMMSSZ.bak`
/// beside it, never over an existing file, with the file's permissions.
async fn backup(path: &Path, text: &str) -> Result<PathBuf, String> {
    let stamp = OffsetDateTime::now_utc()
        .format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let permissions = tokio::fs::metadata(path)
        .await
        .map(|m| m.permissions())
        .ok();
    for n in 0..100 {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        let backup = path.with_file_name(format!("{name}.remedy-{stamp}{suffix}.bak"));
        let created = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&backup)
            .await;
        match created {
            Ok(mut file) => {
                use tokio::io::AsyncWriteExt as _;
                let written = async {
                    file.write_all(text.as_bytes()).await?;
                    file.sync_all().await?;
                    if let Some(p) = &permissions {
                        tokio::fs::set_permissions(&backup, p.clone()).await?;
                    }
                    Ok::<_, std::io::Error>(())
                };
                return written
                    .await
                    .map(|()| backup.clone())
                    .map_err(|e| format!("cannot write the backup {}: {e}", backup.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "cannot create the backup {}: {e}",
                    backup.display()
                ));
            }
        }
    }
    Err(format!("cannot name a backup of {}", path.display()))
}

/// Replaces `path` by a file holding `text`: written beside it, synced,
/// given the old file's permissions, then renamed over it, so a reader sees
/// the old file or the new one, never half of one.
async fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.remedy-{}.tmp", std::process::id()));
    let permissions = tokio::fs::metadata(path)
        .await
        .map(|m| m.permissions())
        .ok();
    let written = async {
        let mut file = tokio::fs::File::create(&temporary).await?;
        file.write_all(text.as_bytes()).await?;
        file.sync_all().await?;
        if let Some(p) = permissions {
            tokio::fs::set_permissions(&temporary, p).await?;
        }
        tokio::fs::rename(&temporary, path).await
    };
    if let Err(e) = written.await {
        let _ = tokio::fs::remove_file(&temporary).await;
        return Err(format!("cannot write {}: {e}", path.display()));
    }
    Ok(())
}

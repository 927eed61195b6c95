//! Docker Compose, configured: every compose command remedy runs is built
//! here from a `[compose.NAME]` project, so the working directory,
//! `--project-directory`, each `-f` and `-p` are always explicit. The
//! `compose` step reads a service's recent logs and keeps the newest
//! matching lines, counting every match.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::{StepError, StepOutput};
use crate::config::ComposeSettings;

/// Characters of one log line kept (docker splits lines at 16 KiB).
const MAX_LINE_CHARS: usize = 2_000;
/// Bytes of compose's stderr kept for an error message.
const MAX_STDERR_BYTES: u64 = 4_096;

/// One compose command, ready to run: the program, its whole argv and the
/// folder it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub dir: PathBuf,
}

impl Invocation {
    /// The command line, for the audit log and the thread.
    #[must_use]
    pub fn display(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `project`'s compose command with `rest` after the global options.
#[must_use]
pub fn invocation(project: &ComposeSettings, rest: &[&str]) -> Invocation {
    let (program, prefix) = project
        .program
        .split_first()
        .map_or(("", &[][..]), |(p, rest)| (p.as_str(), rest));
    let mut args: Vec<String> = prefix.to_vec();
    args.push("--project-directory".into());
    args.push(project.project_dir.display().to_string());
    for file in &project.files {
        args.push("-f".into());
        args.push(file.clone());
    }
    args.push("-p".into());
    args.push(project.project_name.clone());
    args.extend(rest.iter().map(|s| (*s).to_owned()));
    Invocation {
        program: PathBuf::from(program),
        args,
        dir: project.project_dir.clone(),
    }
}

/// Lines read from the end of the log where compose has no `--since`
/// (docker-compose 1.x): without it the whole log since the container
/// started would be read on every diagnosis.
pub const TAIL_WITHOUT_SINCE: u32 = 10_000;

/// `logs` of one service over the last `since`, without colours, each line
/// with its timestamp (`--since` where the compose version has it, else
/// the last [`TAIL_WITHOUT_SINCE`] lines, filtered by their timestamps).
#[must_use]
pub fn logs_invocation(project: &ComposeSettings, service: &str, since: Duration) -> Invocation {
    let since_arg = format!("{}s", since.as_secs().max(1));
    let tail_arg = TAIL_WITHOUT_SINCE.to_string();
    let mut rest = vec!["logs", "--no-color", "--timestamps", "--no-log-prefix"];
    if project.logs_since {
        rest.extend(["--since", &since_arg]);
    } else {
        rest.extend(["--tail", &tail_arg]);
    }
    rest.push(service);
    invocation(project, &rest)
}

/// Whether a `--timestamps` line is older than `cutoff`. A line without a
/// readable timestamp is kept.
fn older_than(line: &str, cutoff: OffsetDateTime) -> bool {
    line.split_once(' ')
        .and_then(|(stamp, _)| OffsetDateTime::parse(stamp, &Rfc3339).ok())
        .is_some_and(|at| at < cutoff)
}

/// Runs `invocation` (a [`logs_invocation`]) and keeps the newest
/// `max_lines` lines of the last `since` that match `pattern`.
///
/// On success `rows` holds one `{line}` per kept line, oldest first;
/// `value` is the number of matching lines, all of them; `truncated` the
/// matching lines dropped for `max_lines`.
///
/// # Errors
/// [`StepError::Failed`] when compose cannot start or exits non-zero (with
/// the end of its stderr); [`StepError::Timeout`] past `timeout`.
pub async fn logs(
    invocation: &Invocation,
    env: &[(String, std::ffi::OsString)],
    pattern: Option<&Regex>,
    since: Duration,
    timeout: Duration,
    max_lines: usize,
) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let cutoff = OffsetDateTime::now_utc() - since;
    let mut child = Command::new(&invocation.program)
        .args(&invocation.args)
        .current_dir(&invocation.dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            StepError::Failed(format!("cannot run {}: {e}", invocation.program.display()))
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let read_lines = async {
            let mut kept: VecDeque<String> = VecDeque::new();
            let mut matches: u64 = 0;
            let Some(stdout) = stdout else {
                return Ok((kept, matches));
            };
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                if reader.read_until(b'\n', &mut buf).await? == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']);
                if older_than(line, cutoff) || !pattern.is_none_or(|re| re.is_match(line)) {
                    continue;
                }
                matches += 1;
                if max_lines == 0 {
                    continue;
                }
                if kept.len() == max_lines {
                    kept.pop_front();
                }
                kept.push_back(line.chars().take(MAX_LINE_CHARS).collect());
            }
            Ok::<_, std::io::Error>((kept, matches))
        };
        let read_err = async {
            let mut text = Vec::new();
            if let Some(mut stderr) = stderr {
                (&mut stderr)
                    .take(MAX_STDERR_BYTES)
                    .read_to_end(&mut text)
                    .await?;
                tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await?;
            }
            Ok::<_, std::io::Error>(text)
        };
        let (lines, err) = tokio::join!(read_lines, read_err);
        let status = child.wait().await;
        (lines, err, status)
    };
    let Ok((lines, err, status)) = tokio::time::timeout(timeout, work).await else {
        return Err(StepError::Timeout(timeout));
    };
    let failed = |e: std::io::Error| StepError::Failed(format!("reading compose logs: {e}"));
    let (kept, matches) = lines.map_err(failed)?;
    let err = err.map_err(failed)?;
    let status = status.map_err(failed)?;
    if !status.success() {
        let stderr = String::from_utf8_lossy(&err);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(StepError::Failed(format!(
            "`{}` failed ({status}): {}",
            invocation.display(),
            last.unwrap_or("no output")
        )));
    }
    let rows: Vec<Map<String, Value>> = kept
        .into_iter()
        .map(|line| {
            let mut row = Map::new();
            row.insert("line".into(), Value::String(line));
            row
        })
        .collect();
    #[allow(clippy::cast_precision_loss)] // a count of log lines
    let value = Some(matches as f64);
    Ok(StepOutput {
        ok: true,
        error: None,
        truncated: matches - rows.len() as u64,
        rows,
        value,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(program: &[&str], logs_since: bool) -> ComposeSettings {
        ComposeSettings {
            program: program.iter().map(|s| (*s).to_owned()).collect(),
            project_dir: "/srv/app".into(),
            files: vec!["compose.yaml".into(), "compose.prod.yaml".into()],
            project_name: "app".into(),
            logs_since,
        }
    }

    #[test]
    fn every_invocation_names_folder_files_and_project() {
        let inv = invocation(
            &project(&["/usr/bin/docker", "compose"], true),
            &["restart", "api"],
        );
        assert_eq!(inv.program, PathBuf::from("/usr/bin/docker"));
        assert_eq!(inv.dir, PathBuf::from("/srv/app"));
        assert_eq!(
            inv.args,
            [
                "compose",
                "--project-directory",
                "/srv/app",
                "-f",
                "compose.yaml",
                "-f",
                "compose.prod.yaml",
                "-p",
                "app",
                "restart",
                "api"
            ]
        );
    }

    #[test]
    fn logs_ask_for_since_only_where_compose_has_it() {
        let v2 = logs_invocation(
            &project(&["/usr/bin/docker", "compose"], true),
            "api",
            Duration::from_secs(3600),
        );
        assert!(
            v2.display()
                .ends_with("logs --no-color --timestamps --no-log-prefix --since 3600s api"),
            "{}",
            v2.display()
        );
        let v1 = logs_invocation(
            &project(&["/usr/bin/docker-compose"], false),
            "api",
            Duration::from_secs(600),
        );
        assert_eq!(v1.program, PathBuf::from("/usr/bin/docker-compose"));
        assert!(
            v1.display()
                .ends_with("-p app logs --no-color --timestamps --no-log-prefix --tail 10000 api"),
            "{}",
            v1.display()
        );
    }

    #[test]
    fn lines_before_the_cutoff_are_old() {
        let cutoff = OffsetDateTime::parse("2026-11-30T10:00:00Z", &Rfc3339).expect("time");
        assert!(older_than(
            "2026-11-30T09:59:59.999999999Z QueuePool",
            cutoff
        ));
        assert!(!older_than("2026-11-30T10:00:01.5Z QueuePool", cutoff));
        assert!(!older_than("no timestamp here", cutoff));
    }

    /// A fake compose that prints timestamped lines: the newest matches
    /// are kept and every match is counted.
    #[tokio::test]
    async fn the_newest_matching_lines_are_kept_and_all_are_counted() {
        let now = OffsetDateTime::now_utc();
        let stamp = |ago: i64| {
            (now - time::Duration::seconds(ago))
                .format(&Rfc3339)
                .expect("format")
        };
        let mut script = String::new();
        script.push_str(&format!("{} QueuePool limit old\n", stamp(7200)));
        for i in 0..30 {
            script.push_str(&format!("{} QueuePool limit {i}\n", stamp(100 - i)));
            script.push_str(&format!("{} GET /health 200\n", stamp(100 - i)));
        }
        let invocation = Invocation {
            program: "/usr/bin/printf".into(),
            args: vec!["%s".into(), script],
            dir: "/".into(),
        };
        let re = Regex::new("(?i)queuepool").expect("regex");
        let out = logs(
            &invocation,
            &[],
            Some(&re),
            Duration::from_secs(3600),
            Duration::from_secs(5),
            20,
        )
        .await
        .expect("printf runs");
        assert_eq!(out.value, Some(30.0), "the 2 h old line is out of range");
        assert_eq!(out.truncated, 10);
        assert_eq!(out.rows.len(), 20);
        assert!(
            out.rows[0]["line"]
                .as_str()
                .is_some_and(|l| l.ends_with("limit 10"))
        );
        assert!(
            out.rows[19]["line"]
                .as_str()
                .is_some_and(|l| l.ends_with("limit 29"))
        );
    }

    #[tokio::test]
    async fn a_failing_compose_is_a_failed_step_with_its_stderr() {
        let invocation = Invocation {
            program: "/bin/ls".into(),
            args: vec!["/nonexistent-remedy-compose".into()],
            dir: "/".into(),
        };
        let err = logs(
            &invocation,
            &[],
            None,
            Duration::from_secs(60),
            Duration::from_secs(5),
            5,
        )
        .await
        .expect_err("ls fails");
        assert!(
            err.to_string().contains("nonexistent-remedy-compose"),
            "{err}"
        );
    }
}

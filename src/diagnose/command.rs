//! The `command` step: runs one allow-listed program directly (argv only,
//! never through a shell), stdin closed, with a cleared environment plus
//! the `commands.env` allow-list (so remedy's `REMEDY__*` secrets never
//! reach it), stdout and stderr captured up to a byte cap. Running at all is success, whatever the exit code; the rows are
//! the output lines that match the step's pattern.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{StepError, StepOutput};

/// Runs `program` with `args` and reports its output.
///
/// Arguments are passed as they are: no shell sees them, so `$(…)`, `;` or
/// globs are plain text. The child's environment is exactly `env`. At most `max_output_bytes` of output are kept,
/// stdout first, then stderr in what room is left; both streams are still
/// drained to the end so the child never blocks on a full pipe.
///
/// On success `ok` is true (even for a non-zero exit), `value` is the exit
/// code (`None` when a signal ended the program), `rows` holds one `{line}`
/// per kept output line (stdout's, then stderr's) that matches `pattern`
/// (every line when `None`), at most `max_lines` of them, and `truncated`
/// counts the matching lines dropped beyond that.
///
/// # Errors
/// [`StepError::Failed`] when the program cannot be started (`cannot run
/// <program>: <error>`) or its output cannot be read; [`StepError::Timeout`]
/// when it runs longer than `timeout`, in which case it is killed.
pub async fn run(
    program: &Path,
    args: &[String],
    env: &[(String, std::ffi::OsString)],
    pattern: Option<&Regex>,
    timeout: Duration,
    max_output_bytes: usize,
    max_lines: usize,
) -> Result<StepOutput, StepError> {
    run_in(
        None,
        program,
        args,
        env,
        pattern,
        timeout,
        max_output_bytes,
        max_lines,
    )
    .await
}

/// [`run`] with the child's working directory set to `dir` (compose
/// projects run in their folder).
///
/// # Errors
/// As [`run`].
#[allow(clippy::too_many_arguments)]
pub async fn run_in(
    dir: Option<&Path>,
    program: &Path,
    args: &[String],
    env: &[(String, std::ffi::OsString)],
    pattern: Option<&Regex>,
    timeout: Duration,
    max_output_bytes: usize,
    max_lines: usize,
) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let mut command = Command::new(program);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| StepError::Failed(format!("cannot run {}: {e}", program.display())))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let work = async {
        let (out, err) = tokio::join!(
            read_capped(stdout, max_output_bytes),
            read_capped(stderr, max_output_bytes)
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let Ok((out, err, status)) = tokio::time::timeout(timeout, work).await else {
        // kill_on_drop would do it too; killing here also reaps the child.
        if let Err(e) = child.kill().await {
            tracing::warn!(program = %program.display(), error = %e, "cannot kill timed-out command");
        }
        return Err(StepError::Timeout(timeout));
    };
    let read_failed = |e: std::io::Error| {
        StepError::Failed(format!("reading output of {}: {e}", program.display()))
    };
    let mut out = out.map_err(read_failed)?;
    let mut err = err.map_err(read_failed)?;
    let status =
        status.map_err(|e| StepError::Failed(format!("waiting for {}: {e}", program.display())))?;

    // One budget for both streams, stdout first.
    out.truncate(max_output_bytes);
    err.truncate(max_output_bytes - out.len());

    let mut rows = Vec::new();
    let mut truncated: u64 = 0;
    let stdout_text = String::from_utf8_lossy(&out);
    let stderr_text = String::from_utf8_lossy(&err);
    let matching = stdout_text
        .lines()
        .chain(stderr_text.lines())
        .filter(|line| pattern.is_none_or(|re| re.is_match(line)));
    for line in matching {
        if rows.len() < max_lines {
            let mut row = Map::new();
            row.insert("line".to_owned(), Value::String(line.to_owned()));
            rows.push(row);
        } else {
            truncated += 1;
        }
    }

    Ok(StepOutput {
        ok: true,
        error: None,
        rows,
        value: status.code().map(f64::from),
        truncated,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Reads up to `cap` bytes from `stream`, then drains (and discards) the
/// rest so the writer never blocks.
async fn read_capped<R>(stream: Option<R>, cap: usize) -> std::io::Result<Vec<u8>>
where
    R: AsyncRead + Unpin,
{
    let Some(mut stream) = stream else {
        return Ok(Vec::new());
    };
    let mut kept = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX);
    (&mut stream).take(limit).read_to_end(&mut kept).await?;
    tokio::io::copy(&mut stream, &mut tokio::io::sink()).await?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    const SECS_5: Duration = Duration::from_secs(5);

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    fn lines(out: &StepOutput) -> Vec<String> {
        out.rows
            .iter()
            .map(|row| row["line"].as_str().expect("line is a string").to_owned())
            .collect()
    }

    #[tokio::test]
    async fn echo_output_becomes_rows() {
        let out = run(
            Path::new("/bin/echo"),
            &strings(&["hello", "world"]),
            &[],
            None,
            SECS_5,
            1024,
            10,
        )
        .await
        .expect("echo runs");
        assert!(out.ok);
        assert_eq!(out.error, None);
        assert_eq!(out.value, Some(0.0));
        assert_eq!(out.truncated, 0);
        assert_eq!(
            out.rows,
            vec![
                json!({"line": "hello world"})
                    .as_object()
                    .cloned()
                    .expect("object")
            ]
        );
    }

    #[tokio::test]
    async fn pattern_keeps_matching_lines_only() {
        let re = Regex::new("(?i)queuepool").expect("valid regex");
        let out = run(
            Path::new("/usr/bin/printf"),
            &strings(&["a\nQueuePool limit\nb\n"]),
            &[],
            Some(&re),
            SECS_5,
            1024,
            10,
        )
        .await
        .expect("printf runs");
        assert!(out.ok);
        assert_eq!(lines(&out), ["QueuePool limit"]);
        assert_eq!(out.truncated, 0);
    }

    #[tokio::test]
    async fn lines_beyond_max_are_counted_as_truncated() {
        let out = run(
            Path::new("/usr/bin/printf"),
            &strings(&["1\n2\n3\n4\n5\n"]),
            &[],
            None,
            SECS_5,
            1024,
            2,
        )
        .await
        .expect("printf runs");
        assert_eq!(lines(&out), ["1", "2"]);
        assert_eq!(out.truncated, 3);
    }

    #[tokio::test]
    async fn output_beyond_byte_cap_is_dropped_but_drained() {
        // 200 000 bytes, more than a pipe buffer: the child must not block.
        let big = "x".repeat(99_999) + "\n";
        let out = run(
            Path::new("/usr/bin/printf"),
            &strings(&["%s%s", &big, &big]),
            &[],
            None,
            SECS_5,
            10,
            100,
        )
        .await
        .expect("printf runs");
        assert_eq!(out.value, Some(0.0));
        assert_eq!(lines(&out), ["xxxxxxxxxx"]);
    }

    #[tokio::test]
    async fn non_zero_exit_is_ok_with_stderr_lines() {
        let out = run(
            Path::new("/bin/ls"),
            &strings(&["/nonexistent-remedy-test-path"]),
            &[],
            None,
            SECS_5,
            1024,
            10,
        )
        .await
        .expect("ls runs");
        assert!(out.ok);
        assert!(out.value.is_some_and(|code| code != 0.0), "{:?}", out.value);
        let lines = lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("/nonexistent-remedy-test-path"),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn slow_program_times_out_and_is_killed() {
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = run(
            Path::new("/bin/sleep"),
            &strings(&["5"]),
            &[],
            None,
            timeout,
            1024,
            10,
        )
        .await
        .expect_err("times out");
        assert_eq!(err, StepError::Timeout(timeout));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn missing_program_is_failed() {
        let program = PathBuf::from("/nonexistent/remedy-no-such-program");
        let err = run(&program, &[], &[], None, SECS_5, 1024, 10)
            .await
            .expect_err("cannot start");
        let StepError::Failed(text) = err else {
            panic!("expected Failed, got {err:?}");
        };
        assert!(
            text.starts_with("cannot run /nonexistent/remedy-no-such-program: "),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_environment_is_only_the_given_one() {
        let env = vec![("LANG".to_owned(), std::ffi::OsString::from("C.UTF-8"))];
        let out = run(Path::new("/usr/bin/env"), &[], &env, None, SECS_5, 1024, 10)
            .await
            .expect("env runs");
        assert_eq!(lines(&out), ["LANG=C.UTF-8"]);
    }

    #[tokio::test]
    async fn arguments_are_not_shell_interpreted() {
        let marker = format!("/tmp/remedy-pwned-{}", uuid::Uuid::now_v7().simple());
        let substitution = format!("$(touch {marker})");
        let args = vec![
            substitution.clone(),
            "; rm -rf /".to_owned(),
            "`id`".to_owned(),
        ];
        let out = run(Path::new("/bin/echo"), &args, &[], None, SECS_5, 1024, 10)
            .await
            .expect("echo runs");
        assert_eq!(lines(&out), [format!("{substitution} ; rm -rf / `id`")]);
        assert!(!Path::new(&marker).exists(), "{marker} was created");
    }
}

//! Reading and editing `KEY=VALUE` environment files (a compose project's
//! `.env`) line by line: the exact line that sets a key, the change an
//! action proposes (shown to approvers, covered by the digest), and the new
//! text with only those lines replaced. Pure; the executor does the I/O.

use serde::{Deserialize, Serialize};

/// One key an action sets: the file's line before (none when the file does
/// not set the key; the line is then appended) and the line after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvChange {
    pub key: String,
    pub before: Option<String>,
    pub after: String,
}

/// Why an edit cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvFileError {
    #[error("`{0}` is not a variable name")]
    BadKey(String),
    #[error("the value of {key} (`{value}`) may hold only letters, digits and . , : / @ + - _")]
    BadValue { key: String, value: String },
    #[error("the file changed since the action was shown: {key} is now {now}, not {shown}")]
    Changed {
        key: String,
        now: String,
        shown: String,
    },
}

/// A variable name an env file may set: letters, digits and `_`, not
/// starting with a digit.
#[must_use]
pub fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit())
}

/// Where and how `key` is set: the last line that assigns it (compose reads
/// the file top to bottom, so the last one wins), and its value with
/// surrounding quotes removed and any ` #` comment dropped.
#[must_use]
pub fn lookup<'a>(text: &'a str, key: &str) -> Option<(usize, &'a str, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| value_of(line, key).map(|v| (i, line, v)))
        .last()
}

fn value_of(line: &str, key: &str) -> Option<String> {
    let trimmed = line.trim_start();
    let trimmed = trimmed
        .strip_prefix("export ")
        .unwrap_or(trimmed)
        .trim_start();
    let rest = trimmed.strip_prefix(key)?.trim_start().strip_prefix('=')?;
    let rest = rest.trim();
    let value = if let Some(quoted) = rest.strip_prefix('"').or_else(|| rest.strip_prefix('\'')) {
        let quote = &rest[..1];
        quoted.split(quote).next().unwrap_or_default()
    } else {
        rest.split(" #").next().unwrap_or_default().trim_end()
    };
    Some(value.to_owned())
}

/// The values of `keys` that the file sets (for the `env_file` step).
#[must_use]
pub fn values(text: &str, keys: &[String]) -> serde_json::Map<String, serde_json::Value> {
    keys.iter()
        .filter_map(|k| lookup(text, k).map(|(_, _, v)| (k.clone(), serde_json::Value::String(v))))
        .collect()
}

/// A value safe in every compose version's `.env` reader: no quoting, no
/// interpolation, no comment, no second line.
fn safe_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".,:/@+-_".contains(c))
}

/// The changes that setting `set` makes to `text`; keys already set to
/// that value are left out.
///
/// # Errors
/// A key that is not a variable name, or a value that is not plain.
pub fn plan<'a>(
    text: &str,
    set: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<EnvChange>, EnvFileError> {
    let mut changes = Vec::new();
    for (key, value) in set {
        if !is_key(key) {
            return Err(EnvFileError::BadKey(key.clone()));
        }
        if !safe_value(value) {
            return Err(EnvFileError::BadValue {
                key: key.clone(),
                value: value.clone(),
            });
        }
        let current = lookup(text, key);
        if current.as_ref().is_some_and(|(_, _, v)| v == value) {
            continue;
        }
        changes.push(EnvChange {
            key: key.clone(),
            before: current.map(|(_, line, _)| line.to_owned()),
            after: format!("{key}={value}"),
        });
    }
    Ok(changes)
}

/// `text` with `changes` made: each key's line replaced, or appended when
/// the file did not set it. Refused when a line is no longer the one shown.
///
/// # Errors
/// [`EnvFileError::Changed`] naming the key whose line differs.
pub fn apply(text: &str, changes: &[EnvChange]) -> Result<String, EnvFileError> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for change in changes {
        let current =
            lookup(&lines.join("\n"), &change.key).map(|(i, line, _)| (i, line.to_owned()));
        match (&change.before, current) {
            (Some(shown), Some((i, line))) if *shown == line => lines[i].clone_from(&change.after),
            (None, None) => lines.push(change.after.clone()),
            (shown, now) => {
                return Err(EnvFileError::Changed {
                    key: change.key.clone(),
                    now: now.map_or_else(|| "unset".into(), |(_, l)| format!("`{l}`")),
                    shown: shown
                        .as_ref()
                        .map_or_else(|| "unset".into(), |l| format!("`{l}`")),
                });
            }
        }
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') || text.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const ENV: &str = "# pool\nPOSTGRES_POOL_SIZE=10  # default: 10\nexport POSTGRES_MAX_OVERFLOW=\"20\"\nOTHER=x\n";

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn lookup_finds_the_last_assignment_and_its_plain_value() {
        let (i, line, value) = lookup(ENV, "POSTGRES_POOL_SIZE").expect("set");
        assert_eq!(
            (i, line, value.as_str()),
            (1, "POSTGRES_POOL_SIZE=10  # default: 10", "10")
        );
        assert_eq!(lookup(ENV, "POSTGRES_MAX_OVERFLOW").expect("set").2, "20");
        assert_eq!(lookup("A=1\nA=2\n", "A").expect("set").2, "2");
        assert!(
            lookup(ENV, "POSTGRES_POOL").is_none(),
            "a prefix is not the key"
        );
    }

    #[test]
    fn plan_shows_the_exact_lines_and_skips_unchanged_keys() {
        let changes = plan(
            ENV,
            &set(&[
                ("POSTGRES_POOL_SIZE", "20"),
                ("POSTGRES_MAX_OVERFLOW", "20"),
                ("NEW_KEY", "1"),
            ]),
        )
        .expect("plain values");
        assert_eq!(
            changes,
            [
                EnvChange {
                    key: "NEW_KEY".into(),
                    before: None,
                    after: "NEW_KEY=1".into()
                },
                EnvChange {
                    key: "POSTGRES_POOL_SIZE".into(),
                    before: Some("POSTGRES_POOL_SIZE=10  # default: 10".into()),
                    after: "POSTGRES_POOL_SIZE=20".into()
                },
            ]
        );
    }

    #[test]
    fn plan_refuses_values_that_a_reader_would_interpret() {
        for value in ["20\nEVIL=1", "$(id)", "a b", "x#y", "\"q\""] {
            let err = plan(ENV, &set(&[("POSTGRES_POOL_SIZE", value)])).expect_err(value);
            assert!(
                matches!(err, EnvFileError::BadValue { .. }),
                "{value}: {err}"
            );
        }
        assert_eq!(
            plan(ENV, &set(&[("1BAD", "1")])),
            Err(EnvFileError::BadKey("1BAD".into()))
        );
    }

    #[test]
    fn apply_replaces_only_the_shown_lines() {
        let changes = plan(ENV, &set(&[("POSTGRES_POOL_SIZE", "20"), ("NEW_KEY", "1")]))
            .expect("plain values");
        let new = apply(ENV, &changes).expect("unchanged file");
        assert_eq!(
            new,
            "# pool\nPOSTGRES_POOL_SIZE=20\nexport POSTGRES_MAX_OVERFLOW=\"20\"\nOTHER=x\nNEW_KEY=1\n"
        );
    }

    #[test]
    fn apply_refuses_when_the_file_changed_since_it_was_shown() {
        let changes = plan(ENV, &set(&[("POSTGRES_POOL_SIZE", "20")])).expect("plain");
        let edited = ENV.replace("POSTGRES_POOL_SIZE=10", "POSTGRES_POOL_SIZE=15");
        let err = apply(&edited, &changes).expect_err("changed");
        assert!(
            err.to_string()
                .contains("POSTGRES_POOL_SIZE is now `POSTGRES_POOL_SIZE=15  # default: 10`"),
            "{err}"
        );
    }
}

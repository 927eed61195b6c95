//! Replays the fuzz seeds (`fuzz/seeds/<target>/`) and every input the
//! fuzzer once failed on (`fuzz/regressions/<target>/`) through the code the
//! fuzz targets run (`fuzz/src/lib.rs`, included here), on stable: none may
//! panic, and the seeds that are real, valid inputs must still be accepted.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

/// Calls `check` on each file of `fuzz/<kind>/<target>/`, in name order
/// (none if the folder does not exist); returns how many there were.
fn each(kind: &str, target: &str, mut check: impl FnMut(&Path, &[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for path in &files {
        let data = std::fs::read(path).expect("input is readable");
        // Shown when the test fails: the input a panic happened on.
        eprintln!("{kind}: {}", path.display());
        check(path, &data);
    }
    files.len()
}

fn seeds(target: &str, check: impl FnMut(&Path, &[u8])) {
    let n = each("seeds", target, check);
    assert!(n > 0, "no seeds in fuzz/seeds/{target}");
}

/// Regression inputs only have to be survived: most are invalid.
fn regressions<T>(target: &str, run: impl Fn(&[u8]) -> T) {
    each("regressions", target, |_, data| {
        let _ = run(data);
    });
}

#[test]
fn webhook() {
    // The seeds are payloads a real Alertmanager sent.
    seeds("webhook", |path, data| {
        let n =
            targets::webhook(data).unwrap_or_else(|e| panic!("{} is refused: {e}", path.display()));
        assert!(!n.alerts.is_empty(), "{}", path.display());
    });
    regressions("webhook", targets::webhook);
}

#[test]
fn slack_interaction() {
    seeds("slack_interaction", |path, data| {
        assert!(
            targets::slack_interaction(data),
            "{} is refused",
            path.display()
        );
    });
    regressions("slack_interaction", targets::slack_interaction);
}

#[test]
fn discord_interaction() {
    seeds("discord_interaction", |path, data| {
        // The `.json` seeds are interaction bodies; the others bare custom_ids.
        let parsed = targets::discord_interaction(data);
        if path.extension().is_some_and(|e| e == "json") {
            assert!(parsed, "{} is refused", path.display());
        }
    });
    regressions("discord_interaction", targets::discord_interaction);
}

#[test]
fn mattermost_interaction() {
    // The seeds are a click and a dialog submission as the server sends them.
    seeds("mattermost_interaction", |path, data| {
        assert!(
            targets::mattermost_interaction(data),
            "{} is refused",
            path.display()
        );
    });
    regressions("mattermost_interaction", targets::mattermost_interaction);
}

#[test]
fn playbook() {
    // The seeds are the shipped playbooks, valid against the default config.
    seeds("playbook", |path, data| match targets::playbook(data) {
        Some(Ok(_)) => {}
        Some(Err(errors)) => panic!("{} does not load: {errors:?}", path.display()),
        None => panic!("{} is not UTF-8", path.display()),
    });
    regressions("playbook", targets::playbook);
}

#[test]
fn matcher() {
    // The seeds are matchers from the shipped playbooks, one per file, and
    // one braced list (a list, not a single matcher).
    seeds("matcher", |path, data| {
        let (list, single) =
            targets::matcher(data).unwrap_or_else(|| panic!("{} is not UTF-8", path.display()));
        assert!(list, "{} is refused as a list", path.display());
        let braced = data.first() == Some(&b'{');
        assert_eq!(single, !braced, "{}", path.display());
    });
    regressions("matcher", targets::matcher);
}

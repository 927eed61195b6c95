//! The JSON Schemas under `schemas/`: up to date with the types (this is
//! CI's check; regenerate with `cargo run -- schema --write schemas/`),
//! met by every shipped and test YAML file, named by those files' first
//! line, and failed by a typo or a value of the wrong kind.

use std::path::{Path, PathBuf};
use std::process::Command;

use remedy::schema::Kind;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {dir}");
    files
}

fn validator(kind: Kind) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&kind.generate()).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// The YAML as the JSON value a schema validator (or yaml-language-server) sees.
fn as_json(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("YAML parses")
}

fn problems(kind: Kind, text: &str) -> Vec<String> {
    validator(kind)
        .iter_errors(&as_json(text))
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn committed_schemas_are_what_remedy_schema_generates() {
    for kind in Kind::ALL {
        let path = root().join("schemas").join(kind.file_name());
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = kind.file_name().trim_end_matches(".json");
        let printed = Command::new(env!("CARGO_BIN_EXE_remedy"))
            .args(["schema", name])
            .output()
            .expect("runs");
        assert!(printed.status.success(), "remedy schema {name}");
        assert_eq!(
            String::from_utf8_lossy(&printed.stdout),
            kind.generate(),
            "`remedy schema {name}` prints the generated schema"
        );
        assert!(
            committed == kind.generate(),
            "{} is out of date with the types: regenerate it with `cargo run -- schema --write schemas/` and commit it",
            path.display()
        );
    }
}

#[test]
fn every_shipped_and_test_yaml_file_meets_its_schema() {
    let mut checked = Vec::new();
    let groups = [
        (Kind::Playbook, yaml_files("playbooks")),
        (Kind::PlaybookTest, yaml_files("playbooks/tests")),
        (
            Kind::Escalation,
            vec![root().join("config/escalation.yaml")],
        ),
        // The fuzzer's playbook seeds are playbooks too.
        (Kind::Playbook, yaml_files("fuzz/seeds/playbook")),
    ];
    for (kind, files) in groups {
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            let found = problems(kind, &text);
            assert!(found.is_empty(), "{}: {found:#?}", file.display());
            checked.push(file);
        }
    }
    assert!(checked.len() >= 13, "{checked:?}");
}

/// The first line names the schema, relative to the file, for
/// yaml-language-server; the named file exists and is the right one.
#[test]
fn shipped_yaml_files_name_their_schema_in_their_first_line() {
    let groups = [
        (Kind::Playbook, yaml_files("playbooks")),
        (Kind::PlaybookTest, yaml_files("playbooks/tests")),
        (
            Kind::Escalation,
            vec![root().join("config/escalation.yaml")],
        ),
    ];
    for (kind, files) in groups {
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            let first = text.lines().next().unwrap_or_default();
            let named = first
                .strip_prefix("# yaml-language-server: $schema=")
                .unwrap_or_else(|| panic!("{}: first line is {first:?}", file.display()));
            let schema = file.parent().expect("folder").join(named);
            assert_eq!(
                schema.file_name().and_then(|n| n.to_str()),
                Some(kind.file_name()),
                "{}",
                file.display()
            );
            assert!(
                std::fs::canonicalize(&schema).is_ok_and(
                    |p| p.starts_with(root().join("schemas").canonicalize().expect("schemas/"))
                ),
                "{}: {} does not exist",
                file.display(),
                schema.display()
            );
        }
    }
}

fn shipped(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).expect("read")
}

fn fails(kind: Kind, text: &str, at: &str) {
    let found = problems(kind, text);
    assert!(
        found.iter().any(|p| p.starts_with(at)),
        "expected a problem at {at}, got {found:#?}"
    );
}

#[test]
fn a_typo_or_a_value_of_the_wrong_kind_fails_the_schema() {
    let playbook = shipped("playbooks/database-idle-in-transaction.yaml");
    assert!(problems(Kind::Playbook, &playbook).is_empty());
    // An unknown top-level field.
    fails(
        Kind::Playbook,
        &playbook.replacen("\nsteps:", "\nstepz:", 1),
        "",
    );
    // A step kind that does not exist.
    fails(
        Kind::Playbook,
        &playbook.replacen("kind: sql", "kind: shell", 1),
        "/steps/0",
    );
    // A misspelt field inside a step.
    fails(
        Kind::Playbook,
        &playbook.replacen("query:", "querry:", 1),
        "/steps/0",
    );
    // A number where a duration is written.
    fails(
        Kind::Playbook,
        &playbook.replacen("    kind: sql\n", "    kind: sql\n    timeout: 5\n", 1),
        "/steps/0",
    );
    // A risk tier that does not exist.
    fails(
        Kind::Playbook,
        &playbook.replacen("risk: destructive", "risk: dangerous", 1),
        "/actions/0/risk",
    );

    let matrix = shipped("config/escalation.yaml");
    assert!(problems(Kind::Escalation, &matrix).is_empty());
    fails(
        Kind::Escalation,
        &matrix.replacen("escalate:", "escalte:", 1),
        "/policies/0",
    );
    fails(
        Kind::Escalation,
        &matrix.replacen("        after: 15m", "        after: soon", 1),
        "/policies/0/escalate/0/after",
    );

    let test = shipped("playbooks/tests/database-idle-in-transaction.yaml");
    assert!(problems(Kind::PlaybookTest, &test).is_empty());
    fails(
        Kind::PlaybookTest,
        &test.replacen("expect:", "expects:", 1),
        "/cases/0",
    );
    fails(
        Kind::PlaybookTest,
        &test.replacen("severity: warning, contains", "severity: loud, contains", 1),
        "/cases/0/expect/findings/0/severity",
    );
}

#[test]
fn remedy_schema_write_creates_every_file() {
    let dir =
        std::env::temp_dir().join(format!("remedy-schemas-{}", uuid::Uuid::now_v7().simple()));
    let out = Command::new(env!("CARGO_BIN_EXE_remedy"))
        .args(["schema", "--write"])
        .arg(&dir)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in Kind::ALL {
        let written =
            std::fs::read_to_string(Path::new(&dir).join(kind.file_name())).expect("written");
        assert_eq!(written, kind.generate());
    }
}

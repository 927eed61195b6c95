//! JSON Schemas for the YAML files operators write — playbooks, playbook
//! tests, the escalation matrix — generated from the Rust types that read
//! them (`schemars`), so an editor with yaml-language-server completes and
//! checks them as they are typed. `remedy check` stays the authority: it
//! checks what a schema cannot (matchers, templates, roles, targets).
//! `remedy schema --write schemas/` regenerates the committed files; a test
//! fails when they differ from what this module generates.

use std::borrow::Cow;
use std::path::Path;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// The files with a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `playbooks/*.yaml`.
    Playbook,
    /// `playbooks/tests/*.yaml`.
    PlaybookTest,
    /// `config/escalation.yaml`.
    Escalation,
}

impl Kind {
    pub const ALL: [Self; 3] = [Self::Playbook, Self::PlaybookTest, Self::Escalation];

    /// Its file under `schemas/`.
    #[must_use]
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Playbook => "playbook.json",
            Self::PlaybookTest => "playbook-test.json",
            Self::Escalation => "escalation.json",
        }
    }

    /// The schema (JSON Schema draft-07, which every yaml-language-server
    /// version reads), pretty-printed with a final newline.
    #[must_use]
    pub fn generate(self) -> String {
        let mut generator = SchemaSettings::draft07().into_generator();
        let (mut schema, title) = match self {
            Self::Playbook => (
                generator.root_schema_for::<crate::playbook::model::PlaybookFile>(),
                "remedy playbook",
            ),
            Self::PlaybookTest => (
                generator.root_schema_for::<crate::playbook::testing::TestFile>(),
                "remedy playbook test",
            ),
            Self::Escalation => (
                crate::escalation::json_schema(&mut generator),
                "remedy escalation matrix",
            ),
        };
        schema.insert("title".into(), title.into());
        let mut text = serde_json::to_string_pretty(&schema).expect("a schema is JSON");
        text.push('\n');
        text
    }
}

/// Writes every schema into `dir` (created if missing); returns the paths.
///
/// # Errors
/// The folder or a file cannot be written.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    Kind::ALL
        .iter()
        .map(|kind| {
            let path = dir.join(kind.file_name());
            std::fs::write(&path, kind.generate())?;
            Ok(path)
        })
        .collect()
}

/// A duration as people write it (`30s`, `5m`, `1h30m`, `24h`), as
/// `humantime` reads it: how duration fields are described.
pub struct HumanDuration;

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": r"^\s*[0-9]+\s*[a-zA-Zµ]+(\s*[0-9]+\s*[a-zA-Zµ]+)*\s*$",
            "description": "A duration: a number and a unit (ns, us, ms, s, m, h, d, w), e.g. `30s`, `5m`, `1h30m`, `24h`."
        })
    }
}

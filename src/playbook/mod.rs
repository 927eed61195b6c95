//! Playbooks: the YAML model, loading and validation, and matchers.

pub mod matcher;

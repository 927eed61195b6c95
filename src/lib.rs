//! remedy: turns Prometheus Alertmanager alerts into supervised remediation.
//!
//! Data flows one way: `http` receives webhooks and hands them to `intake`,
//! which commits them to the `store`; the `engine` drives incidents forward
//! from rows in the store. See README.md for the whole picture.

pub mod actions;
pub mod allocator;
pub mod app;
pub mod approvals;
pub mod chat;
pub mod cli;
pub mod config;
pub mod diagnose;
pub mod doctor;
pub mod domain;
pub mod engine;
pub mod escalation;
pub mod http;
pub mod intake;
pub mod net;
pub mod paging;
pub mod playbook;
pub mod postmortem;
pub mod reload;
pub mod schema;
pub mod store;
pub mod telemetry;

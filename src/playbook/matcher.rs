//! Alertmanager matchers.

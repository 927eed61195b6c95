//! Placeholder: implemented by the step-kind work in progress.

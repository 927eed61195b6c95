//! Intake: Alertmanager's webhook payload at the edge, and the group-commit
//! writer that makes every accepted notification durable before it is
//! answered. The HTTP handler calls [`parse`] then [`Intake::submit`].

mod batcher;
mod wire;

pub use batcher::{Intake, SubmitError};
pub use wire::{InvalidPayload, Limits, WebhookMessage, parse, parse_with};

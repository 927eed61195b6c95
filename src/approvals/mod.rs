//! Who may decide what, and why a decision or a silence is refused: pure
//! functions over typed state, unit-tested here (a silence's matchers and
//! its safety rules are in `silence.rs`). The store calls them inside its
//! transaction with what it read and keeps the rows; `http/` verifies
//! signatures and credentials and turns a click or a request into an
//! [`Actor`] through the [`Directory`] of people.

mod people;
mod rules;
mod silence;

pub use people::{Actor, Channel, Directory, token_digest};
pub use rules::{
    ApprovalState, Decision, DecisionCheck, Refusal, Tally, control_refusal, decision_refusal,
    snooze_refusal, tally,
};
pub use silence::{
    FiringIncident, SilenceCheck, SilenceMatcher, created_by, mutes, silence_matchers,
    silence_refusal,
};

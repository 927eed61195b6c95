//! Pacing of outbound chat calls, so a storm stays under the platforms'
//! rate limits instead of running into 429s: a GCRA limiter from
//! `governor` keyed by route (Slack: one `chat.postMessage` a second per
//! channel), plus the waits a platform announces itself (Discord's
//! `X-RateLimit-*` headers). A call waits for its turn only up to
//! `chat.pace_wait`; a longer wait comes back as [`ChatError::Paced`], and
//! the work goes back to the queue instead of holding a worker slot while
//! it sleeps. A 429 that still comes (another app in the channel, another
//! replica: each process paces alone) is waited out in the queue too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ChatError;

pub struct Pacer {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
    /// Per key: no call before this instant (announced by the platform).
    held: Mutex<HashMap<String, Instant>>,
    max_wait: Duration,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl Pacer {
    /// `quota` per key (`None`: announced waits only); calls wait at most
    /// `max_wait` for their turn.
    #[must_use]
    pub fn new(quota: Option<Quota>, max_wait: Duration) -> Self {
        Self {
            limiter: quota.map(RateLimiter::keyed),
            clock: DefaultClock::default(),
            held: Mutex::new(HashMap::new()),
            max_wait,
        }
    }

    /// Waits for `key`'s turn when it comes within the bound, and takes it;
    /// otherwise [`ChatError::Paced`] with the wait.
    pub async fn ready(&self, key: &str) -> Result<(), ChatError> {
        let deadline = Instant::now() + self.max_wait;
        let key = key.to_owned();
        loop {
            let wait = self.held_for(&key).or_else(|| {
                let limiter = self.limiter.as_ref()?;
                limiter
                    .check_key(&key)
                    .err()
                    .map(|not_until| not_until.wait_time_from(self.clock.now()))
            });
            let Some(wait) = wait else {
                return Ok(());
            };
            if Instant::now() + wait > deadline {
                return Err(ChatError::Paced(wait.max(Duration::from_millis(1))));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Holds `key` back for `wait` (a limit the platform announced).
    pub fn hold(&self, key: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut held = self.held.lock().expect("pacer lock is never poisoned");
        let now = Instant::now();
        held.retain(|_, t| *t > now);
        let entry = held.entry(key.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn held_for(&self, key: &str) -> Option<Duration> {
        let held = self.held.lock().expect("pacer lock is never poisoned");
        let until = *held.get(key)?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn one_per_second(max_wait: Duration) -> Pacer {
        Pacer::new(Some(Quota::per_second(NonZeroU32::MIN)), max_wait)
    }

    #[tokio::test]
    async fn a_second_call_in_a_channel_within_a_second_is_told_to_wait() {
        let pacer = one_per_second(Duration::ZERO);
        assert_eq!(pacer.ready("C1").await, Ok(()));
        match pacer.ready("C1").await {
            Err(ChatError::Paced(wait)) => {
                assert!(wait <= Duration::from_secs(1), "{wait:?}");
                assert!(wait > Duration::from_millis(500), "{wait:?}");
            }
            other => panic!("{other:?}"),
        }
        // Another channel has its own pace.
        assert_eq!(pacer.ready("C2").await, Ok(()));
    }

    #[tokio::test]
    async fn an_announced_wait_holds_its_key_back() {
        let pacer = Pacer::new(None, Duration::ZERO);
        assert_eq!(pacer.ready("POST 1").await, Ok(()));
        pacer.hold("POST 1", Duration::from_secs(30));
        assert!(
            matches!(pacer.ready("POST 1").await, Err(ChatError::Paced(w)) if w > Duration::from_secs(29))
        );
        assert_eq!(pacer.ready("POST 2").await, Ok(()));
    }
}

//! Typed settings, loaded in layers like Alertmanager's operators expect:
//! the defaults in `config/default.toml` (compiled in), an optional file, then
//! `REMEDY__SECTION__KEY` environment variables. Secrets come from the
//! environment or from `*_file` settings and never print: [`Secret`]'s
//! `Debug` is redacted.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The compiled-in defaults; the same file documents every setting.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// A credential. Prints as `[redacted]`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "[empty]"
        } else {
            "[redacted]"
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub store: StoreSettings,
    pub intake: IntakeSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub playbooks: PlaybookSettings,
    /// Named PostgreSQL databases that `sql` steps and actions run against.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetSettings>,
    /// Named Redis servers that `redis` steps read (`[redis.NAME] url`).
    #[serde(default)]
    pub redis: BTreeMap<String, RedisSettings>,
    pub prometheus: PrometheusSettings,
    pub alertmanager: AlertmanagerSettings,
    /// Base URLs for `http` steps, as `{{ probes.NAME }}` in templates.
    #[serde(default)]
    pub probes: BTreeMap<String, String>,
    pub commands: CommandSettings,
    /// Docker Compose projects that `compose` steps and actions name
    /// (`project: app`): how to call compose, from which folder, with which
    /// files and project name, so none of that is left to the process's
    /// working directory.
    #[serde(default)]
    pub compose: BTreeMap<String, ComposeSettings>,
    /// Environment files that `env_file` actions may edit, and the only
    /// keys they may set.
    #[serde(default)]
    pub env_files: BTreeMap<String, EnvFileSettings>,
    pub chat: ChatSettings,
    pub executor: ExecutorSettings,
    /// Approver roles (the names playbook actions list) and who holds them.
    /// The escalation matrix's responder roles are looked up here too.
    #[serde(default)]
    pub approvers: BTreeMap<String, RoleMembers>,
    /// The people who decide, by name: their chat identities and their
    /// personal API token (the only credential that can decide through
    /// the API or the CLI).
    #[serde(default)]
    pub people: BTreeMap<String, PersonSettings>,
    pub escalation: EscalationSettings,
    pub reconcile: ReconcileSettings,
    pub metrics: MetricsSettings,
    pub retention: RetentionSettings,
    pub storm: StormSettings,
    pub silence: SilenceSettings,
    /// Where pages go and how ([`PagingSettings`]); the pagers themselves
    /// are `[pagers.NAME]`, named by escalation levels (`page: [NAME]`).
    pub paging: PagingSettings,
    #[serde(default)]
    pub pagers: BTreeMap<String, PagerSettings>,
}

/// What every pager shares: the services' base URLs (a pager's own `url`
/// overrides them: Opsgenie's EU instance, a test's loopback fake) and the
/// prefix of the key that ties an incident to its page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagingSettings {
    /// PagerDuty Events API v2 (`POST {url}/v2/enqueue`).
    pub pagerduty_url: String,
    /// Opsgenie Alert API (`POST {url}/v2/alerts`).
    pub opsgenie_url: String,
    /// Pages carry `PREFIX-INCIDENT` as PagerDuty's `dedup_key`, Opsgenie's
    /// `alias` and the webhook's `dedup_key`: one per deployment sharing a
    /// PagerDuty service or an Opsgenie team.
    pub dedup_prefix: String,
    /// A 429 without `Retry-After` waits this long in the queue.
    #[serde(with = "humantime_serde")]
    pub rate_limited_wait: Duration,
    /// One delivery's HTTP call gives up after this (and is retried).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// The kinds of pager: a closed set (`paging::{pagerduty, opsgenie, webhook}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PagerKind {
    Pagerduty,
    Opsgenie,
    Webhook,
}

impl PagerKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pagerduty => "pagerduty",
            Self::Opsgenie => "opsgenie",
            Self::Webhook => "webhook",
        }
    }
}

/// One pager, `[pagers.NAME]`. Credentials from the environment
/// (`REMEDY__PAGERS__NAME__ROUTING_KEY`) or, better, from `*_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerSettings {
    pub kind: PagerKind,
    /// The base URL (pagerduty, opsgenie: default `paging.*_url`) or the
    /// full URL to post to (webhook: required).
    #[serde(default)]
    pub url: String,
    /// PagerDuty: the service integration's routing key (Events API v2).
    #[serde(default)]
    pub routing_key: Secret,
    #[serde(default)]
    pub routing_key_file: Option<PathBuf>,
    /// PagerDuty: the v3 webhook subscription's signing secret; with it,
    /// `POST /v1/pagers/NAME/pagerduty` takes acknowledgements.
    #[serde(default)]
    pub webhook_secret: Secret,
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Opsgenie: an API integration's key (`Authorization: GenieKey …`).
    #[serde(default)]
    pub api_key: Secret,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Webhook: the HMAC-SHA256 key of `X-Remedy-Signature`.
    #[serde(default)]
    pub secret: Secret,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

/// What the Silence control may mute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceSettings {
    /// A silence is refused unless its matchers name at least one of these
    /// labels (the alert's own labels become its matchers, so an alert
    /// carrying none of them would silence every alert of its name). Empty:
    /// no label is required. From the environment, comma-separated.
    #[serde(deserialize_with = "strings_or_comma_separated")]
    pub required_labels: Vec<String>,
}

/// In-process metrics upkeep and the store gauges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// The recorder's upkeep (histogram samples folded into buckets) runs
    /// this often whether or not anyone scrapes `/metrics`.
    #[serde(with = "humantime_serde")]
    pub upkeep_interval: Duration,
    /// `remedy_store_rows{table}` is read from the store at most this often.
    #[serde(with = "humantime_serde")]
    pub store_refresh: Duration,
}

/// How long finished rows are kept; `0s` keeps them for ever.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// How often the retention job runs (one replica at a time).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per transaction (1 to 10000).
    pub batch: i64,
    /// Finished work rows (`done`, `failed`, `cancelled`), by last update.
    #[serde(with = "humantime_serde")]
    pub work: Duration,
    /// Delivery records (`notifications`), by last delivery.
    #[serde(with = "humantime_serde")]
    pub deliveries: Duration,
    /// Resolved incidents and everything that belongs to them, by
    /// resolve time; incidents marked `keep` stay.
    #[serde(with = "humantime_serde")]
    pub incidents: Duration,
    /// The audit log, by entry time.
    #[serde(with = "humantime_serde")]
    pub audit: Duration,
}

/// Alert storms: many incidents of one group or alertname at once become
/// one storm incident (see `store/storms.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormSettings {
    /// More than this many incidents of one Alertmanager group (or one
    /// alertname) opened within `window` make the next ones join one storm
    /// incident; 0 turns coalescing off.
    pub threshold: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// An open storm's members are recounted this often; its message is
    /// updated at most this often while members fire and resolve.
    #[serde(with = "humantime_serde")]
    pub update_every: Duration,
    /// The storm's diagnosis (of its representative) is re-run at most this
    /// often while it fires, so its evidence stays current without loading
    /// the database in trouble; 0 never re-runs it.
    #[serde(with = "humantime_serde")]
    pub rediagnose_every: Duration,
}

impl StormSettings {
    #[must_use]
    pub fn rules(&self) -> crate::store::StormRules {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        crate::store::StormRules {
            threshold: i64::from(self.threshold),
            window_ms: ms(self.window),
            update_every_ms: ms(self.update_every),
            rediagnose_every_ms: ms(self.rediagnose_every),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationSettings {
    /// The escalation matrix (YAML).
    pub file: PathBuf,
    /// The timer scheduler looks for due timers at least this often (it
    /// also wakes when the next timer is due).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Timers fired per transaction.
    pub batch: i64,
    /// A timer fired this long after it was due says it is late (remedy
    /// was down, or the store was).
    #[serde(with = "humantime_serde")]
    pub late_after: Duration,
    /// While an incident fires and its row's `threshold` has a level left
    /// to reach, the steps the threshold reads are measured again this
    /// often (a row's `recheck` overrides it).
    #[serde(default = "default_recheck_every", with = "humantime_serde")]
    pub recheck_every: Duration,
}

fn default_recheck_every() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSettings {
    /// Base URL of the Alertmanager API for `silence` actions.
    pub url: String,
    /// Every peer of an HA cluster, for reconciliation (each is asked for
    /// its alerts). Unset: `[url]`. From the environment, comma-separated.
    #[serde(default, deserialize_with = "strings_or_comma_separated")]
    pub urls: Vec<String>,
    /// `Authorization: Bearer` for the API, as Alertmanager's own
    /// `http_config.authorization` (a reverse proxy in front of it).
    #[serde(default)]
    pub bearer_token: Secret,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// `Authorization: Basic`, as `http_config.basic_auth`.
    #[serde(default)]
    pub basic_auth: BasicAuthSettings,
}

/// How remedy authenticates to Alertmanager's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertmanagerAuth {
    None,
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

impl AlertmanagerSettings {
    /// The configured credential, if any (validated: at most one kind).
    #[must_use]
    pub fn auth(&self) -> AlertmanagerAuth {
        if !self.bearer_token.is_empty() {
            AlertmanagerAuth::Bearer(self.bearer_token.clone())
        } else if !self.basic_auth.username.is_empty() {
            AlertmanagerAuth::Basic {
                username: self.basic_auth.username.clone(),
                password: self.basic_auth.password.clone(),
            }
        } else {
            AlertmanagerAuth::None
        }
    }
}

/// Reconciliation: a periodic comparison of the firing incidents with
/// Alertmanager's alerts, closing incidents whose resolve never came.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    /// Unset: on when any Alertmanager URL is configured.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Time between runs (one run at a time across replicas).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long an alert must have been missing from every peer before its
    /// incident is closed.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Settings {
    /// Whether reconciliation runs: `reconcile.enabled`, or by default
    /// whenever an Alertmanager URL is configured.
    #[must_use]
    pub fn reconcile_enabled(&self) -> bool {
        self.reconcile
            .enabled
            .unwrap_or(!self.alertmanager.urls.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSettings {
    /// Record and post what would run; run nothing.
    pub dry_run: bool,
    /// Let playbook actions marked `automatic` (always `risk: safe`) run
    /// without approval.
    pub allow_automatic: bool,
    /// `statement_timeout` of `sql` actions.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// `command` actions are killed after this.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Output kept from a `command` action; bytes of an `http` action's
    /// response body read.
    pub max_output_bytes: usize,
    /// Database roles whose sessions are never cancelled or terminated (on
    /// top of superusers, replication roles and remedy's own connections).
    #[serde(default)]
    pub protected_roles: Vec<String>,
    pub rate_limits: RateLimits,
    /// How long after a successful run its effect is judged by running
    /// the diagnosis again; `0s` turns verification off.
    #[serde(with = "humantime_serde")]
    pub verify_after: Duration,
    /// Suspend an action after this many failed runs per window
    /// (`"3/1h"`), until `remedy actions enable`; absent: never.
    #[serde(default)]
    pub suspend_after: Option<RateLimit>,
    /// Base URL of the Alertmanager API (`silence` actions); copied from
    /// `alertmanager.url` at load.
    #[serde(skip)]
    pub alertmanager_url: String,
    /// `silence.required_labels`, copied at load: the executor checks
    /// every silence again right before it posts it.
    #[serde(skip)]
    pub silence_required_labels: Vec<String>,
}

/// Execution budgets, each `"N/DURATION"` (`"5/10m"`); absent: unlimited.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default)]
    pub global: Option<RateLimit>,
    #[serde(default)]
    pub per_action: Option<RateLimit>,
    #[serde(default)]
    pub per_target: Option<RateLimit>,
}

/// At most `max` runs per `window` (for chat pacing: `max` at once, then
/// evenly spread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub window: Duration,
}

impl RateLimit {
    /// As a `governor` quota: `max` at once, one more every `window / max`.
    /// `None` for a zero window (no pace).
    #[must_use]
    pub fn quota(self) -> Option<governor::Quota> {
        let burst = std::num::NonZeroU32::new(self.max)?;
        governor::Quota::with_period(self.window / self.max).map(|q| q.allow_burst(burst))
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let parsed = text.split_once('/').and_then(|(n, w)| {
            Some(Self {
                max: n.trim().parse().ok().filter(|n| *n > 0)?,
                window: humantime::parse_duration(w.trim()).ok()?,
            })
        });
        parsed.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "rate limit `{text}`: expected \"N/DURATION\", e.g. \"5/10m\""
            ))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatPlatform {
    Console,
    Slack,
    Discord,
    Mattermost,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSettings {
    pub platform: ChatPlatform,
    /// Channel for incidents no route matches (Slack or Discord channel ID).
    #[serde(default)]
    pub default_channel: String,
    /// First match wins.
    #[serde(default)]
    pub routes: Vec<ChatRoute>,
    /// How long an approval request stays open.
    #[serde(with = "humantime_serde")]
    pub approval_ttl: Duration,
    /// Where people reach remedy's API, for the "full report" link.
    #[serde(default)]
    pub public_url: String,
    /// The longest a post waits for its channel's pace; a longer wait gives
    /// the work back to the queue, due when the channel has room.
    #[serde(with = "humantime_serde")]
    pub pace_wait: Duration,
    pub slack: SlackSettings,
    pub discord: DiscordSettings,
    pub mattermost: MattermostSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRoute {
    /// Alertmanager matchers over the alert's labels, all of which must hold.
    #[serde(rename = "match")]
    pub matchers: Vec<String>,
    pub channel: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    pub api_url: String,
    #[serde(default)]
    pub bot_token: Secret,
    #[serde(default)]
    pub bot_token_file: Option<PathBuf>,
    #[serde(default)]
    pub signing_secret: Secret,
    #[serde(default)]
    pub signing_secret_file: Option<PathBuf>,
    /// How long user-group membership read from Slack is trusted.
    #[serde(with = "humantime_serde")]
    pub group_cache_ttl: Duration,
    /// `chat.postMessage` per channel, at most N at once.
    pub post_rate: RateLimit,
    /// `chat.update` for the workspace, at most N at once.
    pub update_rate: RateLimit,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordSettings {
    pub api_url: String,
    #[serde(default)]
    pub bot_token: Secret,
    #[serde(default)]
    pub bot_token_file: Option<PathBuf>,
    /// The application's Ed25519 public key, 64 hex digits.
    #[serde(default)]
    pub public_key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MattermostSettings {
    /// The server's REST API (`https://chat.example.com/api/v4`).
    pub api_url: String,
    /// The bot account's access token.
    #[serde(default)]
    pub bot_token: Secret,
    #[serde(default)]
    pub bot_token_file: Option<PathBuf>,
    /// remedy's own key for the HMAC it puts in every button's context
    /// (Mattermost does not sign interactive requests).
    #[serde(default)]
    pub context_secret: Secret,
    #[serde(default)]
    pub context_secret_file: Option<PathBuf>,
    /// Where the Mattermost server reaches remedy's interactions endpoint
    /// (`https://remedy.internal/v1/interactions/mattermost`); default:
    /// `chat.public_url` followed by that path.
    #[serde(default)]
    pub interactions_url: String,
    /// Every API call, for the whole server (Mattermost's rate limit is
    /// per user or per address: 10 a second, bursts of 100, by default).
    pub request_rate: RateLimit,
    /// How long a user read from Mattermost (username, roles) is trusted.
    #[serde(with = "humantime_serde")]
    pub user_cache_ttl: Duration,
}

/// One person: the identities that are theirs on each platform, and
/// their personal API token (stored as a SHA-256 digest once loaded).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonSettings {
    /// Slack user ID (`U0123ABC`).
    #[serde(default)]
    pub slack: Option<String>,
    /// Discord user ID (a snowflake).
    #[serde(default)]
    pub discord: Option<String>,
    /// Mattermost user ID (26 characters, `x5h7…`).
    #[serde(default)]
    pub mattermost: Option<String>,
    /// Console name (legacy `console_users` lists); default: the person's name.
    #[serde(default)]
    pub console: Option<String>,
    /// Personal API token (`REMEDY__PEOPLE__NAME__API_TOKEN`); prefer the file.
    #[serde(default)]
    pub api_token: Secret,
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
}

/// Who holds one approver role: people by name, and (kept from before
/// `[people]`) platform identities, Slack user groups and Discord roles.
/// An identity that belongs to a person counts as that person.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMembers {
    /// Names from `[people]`.
    #[serde(default)]
    pub people: Vec<String>,
    #[serde(default)]
    pub slack_users: Vec<String>,
    #[serde(default)]
    pub slack_groups: Vec<String>,
    #[serde(default)]
    pub discord_users: Vec<String>,
    #[serde(default)]
    pub discord_roles: Vec<String>,
    /// Mattermost user IDs.
    #[serde(default)]
    pub mattermost_users: Vec<String>,
    /// Mattermost roles (`system_admin`, or a role of the server's own):
    /// read from `GET /api/v4/users/{id}` for the clicker, cached.
    #[serde(default)]
    pub mattermost_roles: Vec<String>,
    /// Console names of people (`[people.NAME] console`, default NAME);
    /// they decide with their personal token.
    #[serde(default)]
    pub console_users: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookSettings {
    /// Folder of `*.yaml` playbooks (tests live in its `tests/` subfolder).
    pub dir: PathBuf,
    /// The whole diagnosis of one incident is cut off after this.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSettings {
    /// `postgres://…`; a secret.
    #[serde(default)]
    pub url: Secret,
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    #[serde(default = "default_target_connections")]
    pub max_connections: u32,
    /// Diagnoses (and verifications) running against this database at
    /// once, across replicas; the others wait in the queue.
    #[serde(default = "default_target_diagnoses")]
    pub max_concurrent_diagnoses: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`; a secret.
    #[serde(default)]
    pub url: Secret,
    #[serde(default)]
    pub url_file: Option<PathBuf>,
}

fn default_target_connections() -> u32 {
    4
}

fn default_target_diagnoses() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSettings {
    /// Base URL of the Prometheus HTTP API; empty: `promql` steps fail with
    /// "no Prometheus configured".
    #[serde(default)]
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSettings {
    /// Absolute paths of the programs `command` steps and actions may run.
    /// From the environment, comma-separated:
    /// `REMEDY__COMMANDS__ALLOW=/usr/bin/docker,/usr/bin/systemctl`.
    #[serde(default, deserialize_with = "list_or_comma_separated")]
    pub allow: Vec<PathBuf>,
    /// Names of the environment variables a child process keeps, with
    /// remedy's own values; every other variable (`REMEDY__*` secrets
    /// first) is cleared. `REMEDY__COMMANDS__ENV=PATH,LANG,HOME,TZ`.
    #[serde(
        default = "default_child_env",
        deserialize_with = "strings_or_comma_separated"
    )]
    pub env: Vec<String>,
}

fn default_child_env() -> Vec<String> {
    ["PATH", "LANG", "HOME"].map(str::to_owned).to_vec()
}

impl CommandSettings {
    /// The allow-listed variables with remedy's values, read once.
    #[must_use]
    pub fn child_env(&self) -> Vec<(String, std::ffi::OsString)> {
        self.env
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|value| (name.clone(), value)))
            .collect()
    }
}

/// One Docker Compose project (`[compose.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeSettings {
    /// The argv prefix that is compose: `["/usr/bin/docker", "compose"]`
    /// (the v2 plugin) or `["/usr/bin/docker-compose"]` (v1). Its first
    /// element must be in `commands.allow` for a playbook to use it.
    #[serde(deserialize_with = "strings_or_comma_separated")]
    pub program: Vec<String>,
    /// The project folder: compose runs there, with `--project-directory`.
    pub project_dir: PathBuf,
    /// The compose files, each passed as `-f`; relative to `project_dir`.
    #[serde(deserialize_with = "strings_or_comma_separated")]
    pub files: Vec<String>,
    /// Passed as `-p`.
    pub project_name: String,
    /// Whether `logs` takes `--since` (compose v2 does; docker-compose 1.x
    /// does not). Either way remedy asks for `--timestamps` and drops the
    /// lines older than the step's `since` itself.
    #[serde(default = "yes")]
    pub logs_since: bool,
}

fn yes() -> bool {
    true
}

/// One environment file that `env_file` actions may edit (`[env_files.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvFileSettings {
    /// Absolute path of the file (the compose project's `.env`, or a
    /// service's `env_file`).
    pub path: PathBuf,
    /// The only keys an action may set.
    #[serde(deserialize_with = "strings_or_comma_separated")]
    pub allowed_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A client that has not sent a request's headers within this is
    /// disconnected (slow-header clients cannot hold connections open).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once; further clients wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// Requests per second one source (IP address) may make to the
    /// interaction routes, `/readyz` and `/metrics`, and failed credential
    /// attempts per second on the webhook and the API; then 429.
    pub source_rate: std::num::NonZeroU32,
    /// How many such requests a source may make at once before the rate applies.
    pub source_burst: std::num::NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite://FILE` or `postgres://...`. May hold a password: treated as a secret.
    pub url: Secret,
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Pool size; unset, [`StoreSettings::DEFAULT_SQLITE_CONNECTIONS`] on
    /// SQLite and [`StoreSettings::DEFAULT_POSTGRES_CONNECTIONS`] on
    /// PostgreSQL.
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    pub sqlite_synchronous: SqliteSynchronous,
}

impl StoreSettings {
    /// SQLite has one writer at a time, and every pooled connection keeps
    /// its own thread, page cache and compiled statements (sqlx hands out
    /// the connection idle longest, so each comes to run every statement):
    /// 4 instead of 8 halved the memory SQLite's soak gains in 10 minutes
    /// (README, Performance, Soak) with the same intake throughput.
    pub const DEFAULT_SQLITE_CONNECTIONS: u32 = 4;
    pub const DEFAULT_POSTGRES_CONNECTIONS: u32 = 8;

    /// The pool size for the store at `url`.
    #[must_use]
    pub fn pool_size(&self, url: &str) -> u32 {
        self.max_connections
            .unwrap_or(if url.starts_with("sqlite:") {
                Self::DEFAULT_SQLITE_CONNECTIONS
            } else {
                Self::DEFAULT_POSTGRES_CONNECTIONS
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Normal,
    Full,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeSettings {
    /// Accept webhooks without credentials. Must be set explicitly.
    pub allow_unauthenticated: bool,
    #[serde(default)]
    pub bearer_token: Secret,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub basic_auth: BasicAuthSettings,
    pub max_body_bytes: usize,
    pub queue_capacity: usize,
    pub max_batch: usize,
    /// More alerts in one notification get 400.
    pub max_alerts_per_notification: usize,
    /// A longer label or annotation value (or name, receiver, group key,
    /// generator URL) gets 400.
    pub max_value_bytes: usize,
}

impl IntakeSettings {
    #[must_use]
    pub fn limits(&self) -> crate::intake::Limits {
        crate::intake::Limits {
            max_alerts: self.max_alerts_per_notification,
            max_value_bytes: self.max_value_bytes,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSettings {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Secret,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Read-only bearer token: the GET routes of `/v1/incidents` and
    /// `/v1/audit`. Deciding and acting need a person's `api_token`.
    #[serde(default)]
    pub token: Secret,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Run the worker in this process. A replica with it off only takes in
    /// webhooks; another replica on the same PostgreSQL store does the work.
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub batch: i64,
    pub max_attempts: i64,
    /// Pieces of `diagnose` and `verify` work handled at once.
    pub slots: u32,
    /// Pieces of `execute`, `escalate` and `notify` work handled at once,
    /// on top of `slots`: slow diagnoses can never take them.
    pub urgent_slots: u32,
}

fn strings_or_comma_separated<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    Ok(list_or_comma_separated(d)?
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect())
}

fn list_or_comma_separated<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<PathBuf>),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(list) => list,
        Either::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing` env-filter directives; `RUST_LOG` overrides them.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Why settings could not be loaded. Messages name the setting, never a value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    #[error("{setting}: cannot read {path}: {source}")]
    SecretFile {
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then `file` when given, then `REMEDY__*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// The settings for commands that never receive webhooks (`test`,
    /// `simulate`, `incidents`, `approve`): everything [`Settings::load`]
    /// checks except that webhook credentials are configured.
    pub fn load_for_tools(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_checked(file, std::env::vars(), false)
    }

    /// [`Settings::load`] with an explicit environment, for tests.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load_checked(file, env, true)
    }

    fn load_checked(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        intake: bool,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("REMEDY__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("REMEDY")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env)),
        );
        let mut settings: Self = builder.build()?.try_deserialize()?;
        settings.read_secret_files()?;
        settings.executor.alertmanager_url = settings.alertmanager.url.clone();
        settings
            .executor
            .silence_required_labels
            .clone_from(&settings.silence.required_labels);
        if settings.alertmanager.urls.is_empty() && !settings.alertmanager.url.is_empty() {
            settings.alertmanager.urls = vec![settings.alertmanager.url.clone()];
        }
        settings.validate()?;
        if intake {
            settings.validate_intake()?;
        }
        Ok(settings)
    }

    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        read_into(
            &mut self.store.url,
            self.store.url_file.as_deref(),
            "store.url_file",
        )?;
        read_into(
            &mut self.intake.bearer_token,
            self.intake.bearer_token_file.as_deref(),
            "intake.bearer_token_file",
        )?;
        read_into(
            &mut self.intake.basic_auth.password,
            self.intake.basic_auth.password_file.as_deref(),
            "intake.basic_auth.password_file",
        )?;
        read_into(
            &mut self.api.token,
            self.api.token_file.as_deref(),
            "api.token_file",
        )?;
        read_into(
            &mut self.chat.slack.bot_token,
            self.chat.slack.bot_token_file.as_deref(),
            "chat.slack.bot_token_file",
        )?;
        read_into(
            &mut self.chat.slack.signing_secret,
            self.chat.slack.signing_secret_file.as_deref(),
            "chat.slack.signing_secret_file",
        )?;
        read_into(
            &mut self.chat.discord.bot_token,
            self.chat.discord.bot_token_file.as_deref(),
            "chat.discord.bot_token_file",
        )?;
        read_into(
            &mut self.chat.mattermost.bot_token,
            self.chat.mattermost.bot_token_file.as_deref(),
            "chat.mattermost.bot_token_file",
        )?;
        read_into(
            &mut self.chat.mattermost.context_secret,
            self.chat.mattermost.context_secret_file.as_deref(),
            "chat.mattermost.context_secret_file",
        )?;
        read_into(
            &mut self.alertmanager.bearer_token,
            self.alertmanager.bearer_token_file.as_deref(),
            "alertmanager.bearer_token_file",
        )?;
        read_into(
            &mut self.alertmanager.basic_auth.password,
            self.alertmanager.basic_auth.password_file.as_deref(),
            "alertmanager.basic_auth.password_file",
        )?;
        for person in self.people.values_mut() {
            read_into(
                &mut person.api_token,
                person.api_token_file.as_deref(),
                "people.*.api_token_file",
            )?;
        }
        for target in self.targets.values_mut() {
            read_into(
                &mut target.url,
                target.url_file.as_deref(),
                "targets.*.url_file",
            )?;
        }
        for redis in self.redis.values_mut() {
            read_into(
                &mut redis.url,
                redis.url_file.as_deref(),
                "redis.*.url_file",
            )?;
        }
        for pager in self.pagers.values_mut() {
            read_into(
                &mut pager.routing_key,
                pager.routing_key_file.as_deref(),
                "pagers.*.routing_key_file",
            )?;
            read_into(
                &mut pager.webhook_secret,
                pager.webhook_secret_file.as_deref(),
                "pagers.*.webhook_secret_file",
            )?;
            read_into(
                &mut pager.api_key,
                pager.api_key_file.as_deref(),
                "pagers.*.api_key_file",
            )?;
            read_into(
                &mut pager.secret,
                pager.secret_file.as_deref(),
                "pagers.*.secret_file",
            )?;
        }
        Ok(())
    }

    /// Webhooks are refused without credentials unless explicitly allowed.
    fn validate_intake(&self) -> Result<(), ConfigError> {
        if !self.intake.allow_unauthenticated && !self.intake_has_credentials() {
            return Err(ConfigError::Invalid(
                "intake: no credentials configured; set intake.bearer_token or intake.basic_auth \
                 (REMEDY__INTAKE__BEARER_TOKEN), or intake.allow_unauthenticated = true"
                    .into(),
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let people = crate::approvals::Directory::new(&self.people, &self.approvers)
            .map_err(ConfigError::Invalid)?;
        if let Some(person) = people.authenticate(self.api.token.expose()) {
            return Err(ConfigError::Invalid(format!(
                "people.{person}.api_token: the same token as api.token, which is read-only"
            )));
        }
        let basic = &self.intake.basic_auth;
        if basic.username.is_empty() != basic.password.is_empty() {
            return Err(ConfigError::Invalid(
                "intake.basic_auth: set both username and password, or neither".into(),
            ));
        }
        if let Some((name, _)) = self.targets.iter().find(|(_, t)| t.url.is_empty()) {
            return Err(ConfigError::Invalid(format!(
                "targets.{name}: url or url_file is required"
            )));
        }
        for (name, redis) in &self.redis {
            if redis.url.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "redis.{name}: url or url_file is required"
                )));
            }
            crate::diagnose::redis::RedisTarget::parse(redis.url.expose())
                .map_err(|e| ConfigError::Invalid(format!("redis.{name}.url: {e}")))?;
        }
        if let Some(program) = self.commands.allow.iter().find(|p| !p.is_absolute()) {
            return Err(ConfigError::Invalid(format!(
                "commands.allow: {} must be an absolute path",
                program.display()
            )));
        }
        self.validate_compose()?;
        self.validate_chat()?;
        self.validate_alertmanager()?;
        self.validate_pagers()?;
        if self.store.url.is_empty() {
            return Err(ConfigError::Invalid("store.url: must not be empty".into()));
        }
        if self.intake.max_body_bytes == 0
            || self.intake.queue_capacity == 0
            || self.intake.max_batch == 0
        {
            return Err(ConfigError::Invalid(
                "intake: max_body_bytes, queue_capacity and max_batch must be positive".into(),
            ));
        }
        if self.escalation.batch <= 0
            || self.escalation.tick.is_zero()
            || self.escalation.recheck_every.is_zero()
        {
            return Err(ConfigError::Invalid(
                "escalation: batch, tick and recheck_every must be positive".into(),
            ));
        }
        if self.storm.update_every.is_zero() {
            return Err(ConfigError::Invalid(
                "storm.update_every: must be positive".into(),
            ));
        }
        // A batch of incidents is bound as one parameter each: stay well
        // under SQLite's and PostgreSQL's limits on parameters.
        if !(1..=10_000).contains(&self.retention.batch) || self.retention.interval.is_zero() {
            return Err(ConfigError::Invalid(
                "retention: batch must be 1 to 10000 and interval positive".into(),
            ));
        }
        if self.metrics.upkeep_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "metrics.upkeep_interval must be positive".into(),
            ));
        }
        if self.worker.batch <= 0
            || self.worker.max_attempts <= 0
            || self.worker.slots == 0
            || self.worker.urgent_slots == 0
        {
            return Err(ConfigError::Invalid(
                "worker: batch, max_attempts, slots and urgent_slots must be positive".into(),
            ));
        }
        if let Some((name, _)) = self
            .targets
            .iter()
            .find(|(_, t)| t.max_concurrent_diagnoses == 0)
        {
            return Err(ConfigError::Invalid(format!(
                "targets.{name}.max_concurrent_diagnoses must be positive"
            )));
        }
        Ok(())
    }

    /// Each pager has what its kind needs, and nothing of another kind's.
    fn validate_pagers(&self) -> Result<(), ConfigError> {
        let http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        let paging = &self.paging;
        for (field, url) in [
            ("paging.pagerduty_url", &paging.pagerduty_url),
            ("paging.opsgenie_url", &paging.opsgenie_url),
        ] {
            if !http(url) {
                return Err(ConfigError::Invalid(format!(
                    "{field}: an http(s) URL expected"
                )));
            }
        }
        let prefix_ok = !paging.dedup_prefix.is_empty()
            && paging.dedup_prefix.len() <= 64
            && paging
                .dedup_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !prefix_ok {
            return Err(ConfigError::Invalid(
                "paging.dedup_prefix: 1 to 64 letters, digits, `-`, `_` or `.`".into(),
            ));
        }
        if paging.timeout.is_zero() || paging.rate_limited_wait.is_zero() {
            return Err(ConfigError::Invalid(
                "paging: timeout and rate_limited_wait must be positive".into(),
            ));
        }
        for (name, pager) in &self.pagers {
            let invalid = |m: &str| Err(ConfigError::Invalid(format!("pagers.{name}.{m}")));
            if !pager.url.is_empty() && !http(&pager.url) {
                return invalid("url: an http(s) URL expected");
            }
            let (needs, needs_what, others) = match pager.kind {
                PagerKind::Pagerduty => (
                    &pager.routing_key,
                    "routing_key (or routing_key_file) is required for kind pagerduty",
                    [("api_key", &pager.api_key), ("secret", &pager.secret)],
                ),
                PagerKind::Opsgenie => (
                    &pager.api_key,
                    "api_key (or api_key_file) is required for kind opsgenie",
                    [
                        ("routing_key", &pager.routing_key),
                        ("secret", &pager.secret),
                    ],
                ),
                PagerKind::Webhook => (
                    &pager.secret,
                    "secret (or secret_file) is required for kind webhook: its body is signed",
                    [
                        ("routing_key", &pager.routing_key),
                        ("api_key", &pager.api_key),
                    ],
                ),
            };
            if needs.is_empty() {
                return invalid(needs_what);
            }
            if let Some((other, _)) = others.iter().find(|(_, v)| !v.is_empty()) {
                return invalid(&format!(
                    "{other}: not a setting of kind {}",
                    pager.kind.as_str()
                ));
            }
            if pager.kind != PagerKind::Pagerduty && !pager.webhook_secret.is_empty() {
                return invalid("webhook_secret: only PagerDuty pagers take acknowledgements");
            }
            if pager.kind == PagerKind::Webhook && pager.url.is_empty() {
                return invalid("url is required for kind webhook");
            }
        }
        Ok(())
    }

    fn validate_compose(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (name, c) in &self.compose {
            // Whether the program is in commands.allow is checked where a
            // playbook names the project (`remedy check`) and again when it
            // runs: a project no playbook uses needs no allowed program.
            if c.program
                .first()
                .is_none_or(|p| !Path::new(p).is_absolute())
            {
                return invalid(format!(
                    "compose.{name}.program: must start with an absolute path"
                ));
            }
            if !c.project_dir.is_absolute() {
                return invalid(format!(
                    "compose.{name}.project_dir: {} must be an absolute path",
                    c.project_dir.display()
                ));
            }
            if c.files.is_empty() || c.files.iter().any(String::is_empty) {
                return invalid(format!(
                    "compose.{name}.files: name at least one compose file"
                ));
            }
            if c.project_name.is_empty() || c.project_name.starts_with('-') {
                return invalid(format!(
                    "compose.{name}.project_name: must be a name, not empty nor starting with -"
                ));
            }
        }
        for (name, f) in &self.env_files {
            if !f.path.is_absolute() {
                return invalid(format!(
                    "env_files.{name}.path: {} must be an absolute path",
                    f.path.display()
                ));
            }
            if let Some(key) = f
                .allowed_keys
                .iter()
                .find(|k| !crate::domain::env_file::is_key(k))
            {
                return invalid(format!(
                    "env_files.{name}.allowed_keys: `{key}` is not a variable name"
                ));
            }
        }
        Ok(())
    }

    fn validate_alertmanager(&self) -> Result<(), ConfigError> {
        let am = &self.alertmanager;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if am.basic_auth.username.is_empty() != am.basic_auth.password.is_empty() {
            return invalid("alertmanager.basic_auth: set both username and password, or neither");
        }
        if !am.bearer_token.is_empty() && !am.basic_auth.username.is_empty() {
            return invalid("alertmanager: set bearer_token or basic_auth, not both");
        }
        if let Some(url) = am
            .urls
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(ConfigError::Invalid(format!(
                "alertmanager.urls: `{}` is not an http(s) URL",
                crate::store::redact_url(url)
            )));
        }
        if self.reconcile.enabled == Some(true) && am.urls.is_empty() {
            return invalid("reconcile.enabled: set alertmanager.url or alertmanager.urls");
        }
        if self.reconcile.interval.is_zero() {
            return invalid("reconcile.interval must be positive");
        }
        Ok(())
    }

    fn validate_chat(&self) -> Result<(), ConfigError> {
        let chat = &self.chat;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        match chat.platform {
            ChatPlatform::Console => {}
            ChatPlatform::Slack => {
                if chat.slack.bot_token.is_empty() || chat.slack.signing_secret.is_empty() {
                    return invalid(
                        "chat.slack: bot_token and signing_secret are required \
                         (REMEDY__CHAT__SLACK__BOT_TOKEN, REMEDY__CHAT__SLACK__SIGNING_SECRET)"
                            .into(),
                    );
                }
            }
            ChatPlatform::Discord => {
                if chat.discord.bot_token.is_empty() {
                    return invalid("chat.discord.bot_token is required".into());
                }
                let key = hex::decode(&chat.discord.public_key).ok();
                if key.is_none_or(|k| k.len() != 32) {
                    return invalid("chat.discord.public_key: 64 hex digits expected".into());
                }
            }
            ChatPlatform::Mattermost => {
                let mm = &chat.mattermost;
                if mm.bot_token.is_empty() {
                    return invalid(
                        "chat.mattermost.bot_token is required (REMEDY__CHAT__MATTERMOST__BOT_TOKEN)"
                            .into(),
                    );
                }
                // An HMAC key shorter than this could be guessed offline
                // from one button's context.
                if mm.context_secret.expose().len() < 32 {
                    return invalid(
                        "chat.mattermost.context_secret: at least 32 characters are required \
                         (REMEDY__CHAT__MATTERMOST__CONTEXT_SECRET)"
                            .into(),
                    );
                }
                if mm.interactions_url.is_empty() && chat.public_url.is_empty() {
                    return invalid(
                        "chat.mattermost.interactions_url: set it or chat.public_url, so the \
                         Mattermost server can deliver button clicks"
                            .into(),
                    );
                }
                for (field, url) in [
                    ("chat.mattermost.api_url", &mm.api_url),
                    ("chat.mattermost.interactions_url", &mm.interactions_url),
                ] {
                    if !(url.is_empty()
                        || url.starts_with("http://")
                        || url.starts_with("https://"))
                    {
                        return invalid(format!("{field}: `{url}` is not an http(s) URL"));
                    }
                }
            }
        }
        if chat.platform != ChatPlatform::Console
            && chat.default_channel.is_empty()
            && chat.routes.is_empty()
        {
            return invalid("chat: set default_channel or at least one route".into());
        }
        for (i, route) in chat.routes.iter().enumerate() {
            for m in &route.matchers {
                if let Err(e) = crate::playbook::matcher::parse_matchers(m) {
                    return invalid(format!("chat.routes[{i}].match: {e}"));
                }
            }
        }
        Ok(())
    }

    #[must_use]
    pub fn intake_has_credentials(&self) -> bool {
        !self.intake.bearer_token.is_empty() || !self.intake.basic_auth.username.is_empty()
    }
}

fn read_into(
    target: &mut Secret,
    file: Option<&Path>,
    setting: &'static str,
) -> Result<(), ConfigError> {
    if let Some(path) = file {
        let value = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
            setting,
            path: path.to_owned(),
            source,
        })?;
        *target = Secret::new(value.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_pager_needs_its_kinds_key_from_the_environment_and_never_prints_it() {
        let base = [
            ("REMEDY__INTAKE__ALLOW_UNAUTHENTICATED", "true"),
            ("REMEDY__PAGERS__PD__KIND", "pagerduty"),
        ];
        let err = Settings::load_from(None, env(&base)).expect_err("no routing key");
        assert!(err.to_string().contains("pagers.pd.routing_key"), "{err}");
        let mut with_key = base.to_vec();
        with_key.push(("REMEDY__PAGERS__PD__ROUTING_KEY", "R0UTING-KEY-VALUE"));
        let s = Settings::load_from(None, env(&with_key)).expect("loads");
        assert_eq!(s.pagers["pd"].routing_key.expose(), "R0UTING-KEY-VALUE");
        assert!(!format!("{s:?}").contains("R0UTING-KEY-VALUE"));
        let mut wrong = with_key.clone();
        wrong.push(("REMEDY__PAGERS__PD__API_KEY", "x"));
        let err = Settings::load_from(None, env(&wrong)).expect_err("an opsgenie key");
        assert!(err.to_string().contains("pagers.pd.api_key"), "{err}");
        let hook = [
            ("REMEDY__INTAKE__ALLOW_UNAUTHENTICATED", "true"),
            ("REMEDY__PAGERS__HOOK__KIND", "webhook"),
            ("REMEDY__PAGERS__HOOK__SECRET", "s"),
        ];
        let err = Settings::load_from(None, env(&hook)).expect_err("no url");
        assert!(err.to_string().contains("pagers.hook.url"), "{err}");
    }

    #[test]
    fn defaults_need_explicit_intake_auth() {
        let err = Settings::load_from(None, env(&[])).expect_err("no credentials");
        assert!(err.to_string().contains("intake.bearer_token"), "{err}");
    }

    #[test]
    fn env_overrides_use_double_underscores() {
        let s = Settings::load_from(
            None,
            env(&[
                ("REMEDY__INTAKE__BEARER_TOKEN", "t0ken"),
                ("REMEDY__STORE__URL", "postgres://u:p@h/db"),
                ("REMEDY__SERVER__LISTEN", "127.0.0.1:1234"),
                ("REMEDY__INTAKE__BASIC_AUTH__USERNAME", "am"),
                ("REMEDY__INTAKE__BASIC_AUTH__PASSWORD", "pw"),
                ("REMEDY__INTAKE__MAX_BATCH", "7"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.intake.bearer_token.expose(), "t0ken");
        assert_eq!(s.store.url.expose(), "postgres://u:p@h/db");
        assert_eq!(s.server.listen.port(), 1234);
        assert_eq!(s.intake.basic_auth.username, "am");
        assert_eq!(s.intake.max_batch, 7);
    }

    #[test]
    fn compose_projects_and_env_files_come_from_env_and_are_checked() {
        let s = Settings::load_from(
            None,
            env(&[
                ("REMEDY__INTAKE__BEARER_TOKEN", "t"),
                ("REMEDY__COMPOSE__APP__PROGRAM", "/usr/bin/docker-compose"),
                ("REMEDY__COMPOSE__APP__FILES", "a.yml,b.yml"),
                ("REMEDY__COMPOSE__APP__LOGS_SINCE", "false"),
            ]),
        )
        .expect("loads");
        let app = &s.compose["app"];
        assert_eq!(app.program, ["/usr/bin/docker-compose"]);
        assert_eq!(app.files, ["a.yml", "b.yml"]);
        assert!(!app.logs_since);
        assert_eq!(app.project_name, "agente");
        assert_eq!(
            s.env_files["app"].allowed_keys,
            ["POSTGRES_POOL_SIZE", "POSTGRES_MAX_OVERFLOW"]
        );
        for (key, value, message) in [
            (
                "REMEDY__COMPOSE__APP__PROJECT_DIR",
                "srv/agente",
                "compose.app.project_dir",
            ),
            (
                "REMEDY__COMPOSE__APP__PROGRAM",
                "docker",
                "compose.app.program",
            ),
            (
                "REMEDY__COMPOSE__APP__PROJECT_NAME",
                "-x",
                "compose.app.project_name",
            ),
            ("REMEDY__ENV_FILES__APP__PATH", ".env", "env_files.app.path"),
            (
                "REMEDY__ENV_FILES__APP__ALLOWED_KEYS",
                "POOL,1BAD",
                "env_files.app.allowed_keys: `1BAD`",
            ),
        ] {
            let err = Settings::load_from(
                None,
                env(&[("REMEDY__INTAKE__BEARER_TOKEN", "t"), (key, value)]),
            )
            .expect_err(key);
            assert!(err.to_string().contains(message), "{key}: {err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Settings::load_from(
            None,
            env(&[("REMEDY__INTAKE__BEARER_TOKEN", "hunter2-token")]),
        )
        .expect("loads");
        assert!(!format!("{s:?}").contains("hunter2-token"));
    }

    #[test]
    fn secret_files_are_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("remedy-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").expect("write");
        let s = Settings::load_from(
            None,
            env(&[(
                "REMEDY__INTAKE__BEARER_TOKEN_FILE",
                file.to_str().expect("utf-8"),
            )]),
        )
        .expect("loads");
        assert_eq!(s.intake.bearer_token.expose(), "from-file");
    }

    #[test]
    fn people_tokens_come_from_files_and_roles_name_known_people() {
        let dir = std::env::temp_dir().join(format!("remedy-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let token = dir.join("olga");
        std::fs::write(&token, "olga-token\n").expect("write");
        let file = dir.join("remedy.toml");
        std::fs::write(
            &file,
            format!(
                "[people.olga]\nslack = \"U1\"\napi_token_file = {:?}\n\
                 [approvers.oncall]\npeople = [\"olga\"]\n",
                token.display().to_string()
            ),
        )
        .expect("write");
        let s = Settings::load_from(Some(&file), env(&[("REMEDY__INTAKE__BEARER_TOKEN", "t")]))
            .expect("loads");
        assert_eq!(s.people["olga"].api_token.expose(), "olga-token");
        assert!(!format!("{s:?}").contains("olga-token"));

        std::fs::write(&file, "[approvers.oncall]\npeople = [\"nobody\"]\n").expect("write");
        let err = Settings::load_from(Some(&file), env(&[("REMEDY__INTAKE__BEARER_TOKEN", "t")]))
            .expect_err("unknown person");
        assert!(err.to_string().contains("nobody"), "{err}");

        // The read-only token cannot double as someone's personal token.
        std::fs::write(&file, "[people.olga]\napi_token = \"shared\"\n").expect("write");
        let err = Settings::load_from(
            Some(&file),
            env(&[
                ("REMEDY__INTAKE__BEARER_TOKEN", "t"),
                ("REMEDY__API__TOKEN", "shared"),
            ]),
        )
        .expect_err("shared token");
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    #[test]
    fn a_target_url_file_overrides_the_default_url() {
        let dir = std::env::temp_dir().join(format!("remedy-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("main-url");
        std::fs::write(&file, "postgres://remedy:pw@db.internal/app\n").expect("write");
        let s = Settings::load_from(
            None,
            env(&[
                ("REMEDY__INTAKE__BEARER_TOKEN", "t"),
                (
                    "REMEDY__TARGETS__MAIN__URL_FILE",
                    file.to_str().expect("utf-8"),
                ),
            ]),
        )
        .expect("loads");
        assert_eq!(
            s.targets["main"].url.expose(),
            "postgres://remedy:pw@db.internal/app"
        );
    }

    #[test]
    fn alertmanager_urls_default_to_the_silence_url_and_enable_reconciliation() {
        let s = Settings::load_from(None, env(&[("REMEDY__INTAKE__BEARER_TOKEN", "t")]))
            .expect("loads");
        assert_eq!(s.alertmanager.urls, vec![s.alertmanager.url.clone()]);
        assert!(s.reconcile_enabled());
        assert_eq!(s.reconcile.grace, Duration::from_secs(600));
        assert_eq!(s.reconcile.interval, Duration::from_secs(60));
        assert_eq!(s.alertmanager.auth(), AlertmanagerAuth::None);

        let s = Settings::load_from(
            None,
            env(&[
                ("REMEDY__INTAKE__BEARER_TOKEN", "t"),
                ("REMEDY__ALERTMANAGER__URL", ""),
            ]),
        )
        .expect("loads");
        assert!(s.alertmanager.urls.is_empty());
        assert!(!s.reconcile_enabled());
    }

    #[test]
    fn alertmanager_peers_and_credentials_come_from_the_environment() {
        let dir = std::env::temp_dir().join(format!("remedy-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let file = dir.join("am-password");
        std::fs::write(&file, "am-s3cret\n").expect("write");
        let s = Settings::load_from(
            None,
            env(&[
                ("REMEDY__INTAKE__BEARER_TOKEN", "t"),
                (
                    "REMEDY__ALERTMANAGER__URLS",
                    "http://am-0:9093, http://am-1:9093",
                ),
                ("REMEDY__ALERTMANAGER__BASIC_AUTH__USERNAME", "remedy"),
                (
                    "REMEDY__ALERTMANAGER__BASIC_AUTH__PASSWORD_FILE",
                    file.to_str().expect("utf-8"),
                ),
                ("REMEDY__RECONCILE__ENABLED", "false"),
            ]),
        )
        .expect("loads");
        assert_eq!(
            s.alertmanager.urls,
            ["http://am-0:9093", "http://am-1:9093"]
        );
        assert_eq!(
            s.alertmanager.auth(),
            AlertmanagerAuth::Basic {
                username: "remedy".into(),
                password: Secret::new("am-s3cret"),
            }
        );
        assert!(!s.reconcile_enabled());
        assert!(!format!("{s:?}").contains("am-s3cret"));
    }

    #[test]
    fn alertmanager_credentials_of_both_kinds_are_refused() {
        let err = Settings::load_from(
            None,
            env(&[
                ("REMEDY__INTAKE__BEARER_TOKEN", "t"),
                ("REMEDY__ALERTMANAGER__BEARER_TOKEN", "b"),
                ("REMEDY__ALERTMANAGER__BASIC_AUTH__USERNAME", "u"),
                ("REMEDY__ALERTMANAGER__BASIC_AUTH__PASSWORD", "p"),
            ]),
        )
        .expect_err("both");
        assert!(err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn unknown_settings_are_refused() {
        let err = Settings::load_from(
            None,
            env(&[
                ("REMEDY__INTAKE__BEARER_TOKEN", "t"),
                ("REMEDY__INTAKE__BEARER_TOKN", "t"),
            ]),
        )
        .expect_err("typo");
        assert!(err.to_string().contains("bearer_tokn"), "{err}");
    }

    #[test]
    fn mattermost_needs_a_token_a_long_context_secret_and_a_way_back() {
        let base = [
            ("REMEDY__INTAKE__BEARER_TOKEN", "t"),
            ("REMEDY__CHAT__PLATFORM", "mattermost"),
            ("REMEDY__CHAT__DEFAULT_CHANNEL", "chan"),
            ("REMEDY__CHAT__MATTERMOST__BOT_TOKEN", "bot"),
        ];
        let secret = "0123456789abcdef0123456789abcdef";
        let load = |extra: &[(&str, &str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            Settings::load_from(None, env(&all))
        };
        let err = load(&[("REMEDY__CHAT__MATTERMOST__CONTEXT_SECRET", "short")])
            .expect_err("short secret");
        assert!(err.to_string().contains("context_secret"), "{err}");
        let err =
            load(&[("REMEDY__CHAT__MATTERMOST__CONTEXT_SECRET", secret)]).expect_err("no way back");
        assert!(err.to_string().contains("interactions_url"), "{err}");
        let err = load(&[
            ("REMEDY__CHAT__MATTERMOST__CONTEXT_SECRET", secret),
            (
                "REMEDY__CHAT__MATTERMOST__INTERACTIONS_URL",
                "remedy:8080/x",
            ),
        ])
        .expect_err("not a URL");
        assert!(err.to_string().contains("interactions_url"), "{err}");
        let s = load(&[
            ("REMEDY__CHAT__MATTERMOST__CONTEXT_SECRET", secret),
            ("REMEDY__CHAT__PUBLIC_URL", "https://remedy.internal"),
        ])
        .expect("loads");
        assert_eq!(s.chat.platform, ChatPlatform::Mattermost);
        assert!(
            !format!("{s:?}").contains(secret),
            "the secret never prints"
        );
    }
}

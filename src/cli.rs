//! The command line: `serve`, `check`, `incidents list|show|keep`, `audit`. Each command
//! loads the layered settings, then calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app;
use crate::config::Settings;
use crate::domain::{IncidentId, IncidentStatus, format_millis};
use crate::playbook;
use crate::store::IncidentFilter;
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "remedy",
    version,
    about = "Turns Prometheus Alertmanager alerts into supervised remediation",
    long_about = "remedy receives Alertmanager webhooks, commits every alert before it answers, \
                  opens one incident per firing episode and drives diagnosis from durable work.\n\n\
                  Settings: compiled-in defaults (config/default.toml), then --config FILE, then \
                  REMEDY__SECTION__KEY environment variables."
)]
pub struct Cli {
    /// Settings file (TOML) layered over the defaults.
    #[arg(long, short, global = true, env = "REMEDY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: webhook intake, API, worker.
    Serve {
        /// Listen address, overriding server.listen.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Validate the settings and every playbook: 0 when valid, 1 with each
    /// problem as file:line:column: field: message.
    Check,
    /// Connect to every target, Prometheus, each Alertmanager and the chat
    /// API, and print what is missing with the exact fix (a grant, a URL, a
    /// token): 0 when nothing is, 1 otherwise.
    Doctor,
    /// Run playbook unit tests (canned step outputs, no database or network).
    Test {
        /// A test file or folder; default: the tests/ folder of playbooks.dir.
        path: Option<PathBuf>,
    },
    /// Match and diagnose the alerts of an Alertmanager payload for real
    /// (read-only steps), print the report; posts and executes nothing.
    Simulate {
        /// A webhook payload (JSON), as Alertmanager sends it.
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve an action of an incident through the running service's API
    /// as the person whose token you hold (REMEDY_TOKEN or --token-file).
    Approve(DecisionArgs),
    /// Reject an action of an incident (as `approve`).
    Reject(DecisionArgs),
    /// Acknowledge an incident: its escalation timers pause (through the
    /// running service's API, as the person whose token you hold).
    Ack(ControlArgs),
    /// Postpone an incident's escalation by one of the matrix's snooze
    /// lengths (`15m`, `1h`).
    Snooze(LengthArgs),
    /// Silence the incident's alert in Alertmanager for one of the matrix's
    /// silence lengths (`1h`, `4h`), through the executor: shows the exact
    /// matchers first and asks (a `y` on stdin) unless `--yes`.
    Silence(SilenceArgs),
    /// The append-only audit log (approvals, executions, outcomes), newest
    /// first, as JSON lines, read from the store.
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// Only this incident's entries.
        #[arg(long)]
        incident: Option<IncidentId>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Suspended actions: list them, or re-enable one.
    Actions {
        #[command(subcommand)]
        command: ActionsCommand,
    },
    /// Read incidents from the store.
    Incidents {
        #[command(subcommand)]
        command: IncidentsCommand,
    },
    /// Print the JSON Schema of a file kind (for editors; `remedy check`
    /// checks more), or write all of them into a folder
    /// (`remedy schema --write schemas/`).
    Schema {
        #[arg(required_unless_present = "write")]
        kind: Option<SchemaKind>,
        /// Write every schema into this folder instead.
        #[arg(long, value_name = "DIR", conflicts_with = "kind")]
        write: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SchemaKind {
    Playbook,
    PlaybookTest,
    Escalation,
}

impl From<SchemaKind> for crate::schema::Kind {
    fn from(kind: SchemaKind) -> Self {
        match kind {
            SchemaKind::Playbook => Self::Playbook,
            SchemaKind::PlaybookTest => Self::PlaybookTest,
            SchemaKind::Escalation => Self::Escalation,
        }
    }
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Every entry written since a time, oldest first, as JSON lines: the
    /// archive to take before `retention.audit` deletes them.
    Export {
        /// An RFC 3339 time (`2026-01-01T00:00:00Z`) or a duration back
        /// from now (`400d`).
        #[arg(long, value_name = "TIME")]
        since: String,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ActionsCommand {
    /// Actions suspended after repeated failures, and why.
    Suspended,
    /// Lift the suspension of a playbook action (its id, e.g. `restart_service`).
    Enable { action: String },
}

#[derive(Debug, clap::Args)]
struct DecisionArgs {
    /// Incident number.
    incident: IncidentId,
    /// The action's key as the report shows it (`restart_service`,
    /// `terminate_leaks#2`).
    action: String,
    #[command(flatten)]
    credential: Credential,
    /// The service's base URL; default: http:// + server.listen.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

/// Your personal API token (`[people.NAME] api_token_file` on the server):
/// it names who decides. The shared `api.token` is read-only.
#[derive(Debug, clap::Args)]
struct Credential {
    /// The token itself (prefer `--token-file`: env vars leak less than argv).
    #[arg(
        long = "token",
        env = "REMEDY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// A file holding your token.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
}

impl Credential {
    fn read(&self) -> anyhow::Result<String> {
        let token = match (&self.token, &self.token_file) {
            (_, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("reading --token-file {}", file.display()))?,
            (Some(token), None) => token.clone(),
            (None, None) => {
                anyhow::bail!("a personal token is required: set REMEDY_TOKEN or pass --token-file")
            }
        };
        let token = token.trim().to_owned();
        anyhow::ensure!(!token.is_empty(), "the personal token is empty");
        Ok(token)
    }
}

#[derive(Debug, clap::Args)]
struct ControlArgs {
    /// Incident number.
    incident: IncidentId,
    #[command(flatten)]
    credential: Credential,
    /// The service's base URL; default: http:// + server.listen.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

#[derive(Debug, clap::Args)]
struct LengthArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// How long (`15m`, `1h`).
    length: String,
}

#[derive(Debug, clap::Args)]
struct SilenceArgs {
    #[command(flatten)]
    length: LengthArgs,
    /// Silence without asking (the matchers are still printed first).
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    Md,
    Json,
}

#[derive(Debug, Subcommand)]
enum IncidentsCommand {
    /// List incidents, newest first.
    List {
        /// firing or resolved
        #[arg(long)]
        status: Option<IncidentStatus>,
        #[arg(long)]
        alertname: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one incident with its timeline, as JSON.
    Show { id: IncidentId },
    /// Keep a resolved incident past `retention.incidents` (a postmortem in
    /// progress); `--release` lets retention take it again.
    Keep {
        id: IncidentId,
        #[arg(long)]
        release: bool,
    },
    /// Write the incident's record — every recorded event in order, what
    /// ran, who approved, escalations — as a postmortem draft.
    Export {
        id: IncidentId,
        #[arg(long, value_enum, default_value = "md")]
        format: ExportFormat,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// Entry point for `main`: every error ends here, printed once, exit 1.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve { .. }) {
        crate::allocator::restart_with_settings();
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("remedy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Needs no settings: the schemas come from the types alone.
    if let Command::Schema { kind, write } = &cli.command {
        return schema(*kind, write.as_deref());
    }
    // Only the commands that serve webhooks (or check a deployment's
    // settings) insist on webhook credentials.
    let settings = match &cli.command {
        Command::Serve { .. } | Command::Check | Command::Doctor => {
            Settings::load(cli.config.as_deref())
        }
        _ => Settings::load_for_tools(cli.config.as_deref()),
    };
    match &cli.command {
        Command::Check => return Ok(check(settings)),
        Command::Test { path } => return test(settings, path.as_deref()),
        _ => {}
    }
    let mut settings = settings.context("loading settings")?;
    telemetry::init_logging(&settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve { listen } => {
                if let Some(listen) = listen {
                    settings.server.listen = listen;
                }
                // A reload reads the same layers again, `--listen` included.
                let file = cli.config.clone();
                let source: crate::reload::SettingsSource = std::sync::Arc::new(move || {
                    let mut settings = Settings::load(file.as_deref())?;
                    if let Some(listen) = listen {
                        settings.server.listen = listen;
                    }
                    Ok(settings)
                });
                app::serve(settings, Some(source)).await?;
            }
            Command::Check | Command::Test { .. } | Command::Schema { .. } => {
                unreachable!("handled before the runtime starts")
            }
            Command::Doctor => return doctor(&settings).await,
            Command::Simulate { file, json } => simulate(settings, &file, json).await?,
            Command::Incidents { command } => incidents(&settings, command).await?,
            Command::Audit {
                command: Some(AuditCommand::Export { since, output }),
                ..
            } => audit_export(&settings, &since, output.as_deref()).await?,
            Command::Audit {
                command: None,
                incident,
                limit,
            } => {
                let store = app::connect_store(&settings).await?;
                for entry in store.audit_log(incident, limit).await? {
                    println!("{}", serde_json::to_string(&entry)?);
                }
            }
            Command::Actions { command } => {
                let store = app::connect_store(&settings).await?;
                match command {
                    ActionsCommand::Suspended => {
                        for (action, at, reason) in store.suspensions().await? {
                            println!("{action}\t{}\t{reason}", format_millis(at));
                        }
                    }
                    ActionsCommand::Enable { action } => {
                        if store
                            .enable_action(&action, crate::domain::now_millis())
                            .await?
                        {
                            println!("{action} enabled");
                        } else {
                            println!("{action} was not suspended");
                        }
                    }
                }
            }
            Command::Approve(args) => return decide(&settings, &args, "approve").await,
            Command::Reject(args) => return decide(&settings, &args, "reject").await,
            Command::Ack(args) => return control(&settings, &args, "ack", None).await,
            Command::Snooze(args) => {
                return control(&settings, &args.control, "snooze", Some(&args.length)).await;
            }
            Command::Silence(args) => return silence(&settings, &args).await,
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Sends a decision to the running service; exit 1 when it is refused.
async fn decide(
    settings: &Settings,
    args: &DecisionArgs,
    decision: &str,
) -> anyhow::Result<ExitCode> {
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", settings.server.listen));
    let url = format!(
        "{}/v1/incidents/{}/actions/{}/{decision}",
        base.trim_end_matches('/'),
        args.incident,
        form_urlencoded::byte_serialize(args.action.as_bytes()).collect::<String>()
    );
    let token = args.credential.read()?;
    let response = crate::net::client()
        .post(&url)
        .bearer_auth(token)
        .header("x-remedy-channel", "console")
        .json(&serde_json::json!({}))
        .send()
        .await
        .with_context(|| format!("reaching remedy at {base}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Sends an Ack, Snooze or Silence to the running service; exit 1 when
/// it is refused.
async fn control(
    settings: &Settings,
    args: &ControlArgs,
    verb: &str,
    length: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let endpoint = Endpoint::new(settings, args, verb)?;
    let mut body = serde_json::json!({});
    if let Some(length) = length {
        body["for"] = length.into();
    }
    print_reply(endpoint.post(body).await?).await
}

/// Where a control request goes, with the person's token.
struct Endpoint {
    base: String,
    url: String,
    token: String,
}

impl Endpoint {
    fn new(settings: &Settings, args: &ControlArgs, verb: &str) -> anyhow::Result<Self> {
        let base = args
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{}", settings.server.listen));
        let url = format!(
            "{}/v1/incidents/{}/{verb}",
            base.trim_end_matches('/'),
            args.incident
        );
        let token = args.credential.read()?;
        Ok(Self { base, url, token })
    }

    async fn post(&self, body: serde_json::Value) -> anyhow::Result<reqwest::Response> {
        crate::net::client()
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("x-remedy-channel", "console")
            .json(&body)
            .send()
            .await
            .with_context(|| format!("reaching remedy at {}", self.base))
    }
}

/// Prints the service's answer; fails unless it was a success.
async fn print_reply(response: reqwest::Response) -> anyhow::Result<ExitCode> {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `remedy silence`: asks the service what the silence would match (a dry
/// run, checked by the same rules as the silence), prints the matchers and
/// the length, asks for a `y` unless `--yes`, then requests the silence
/// with those matchers (the service refuses it if they changed meanwhile).
async fn silence(settings: &Settings, args: &SilenceArgs) -> anyhow::Result<ExitCode> {
    let endpoint = Endpoint::new(settings, &args.length.control, "silence")?;
    let response = endpoint
        .post(serde_json::json!({"for": args.length.length, "dry_run": true}))
        .await?;
    let status = response.status();
    let preview: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        println!("{}", serde_json::to_string_pretty(&preview)?);
        return Ok(ExitCode::FAILURE);
    }
    let matchers: Vec<String> = preview["matchers"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    // Label values reach the terminal: no escape sequences or line breaks.
    eprintln!(
        "Silence for {} every alert matching all of:",
        crate::chat::text::terminal(preview["for"].as_str().unwrap_or_default())
    );
    for m in &matchers {
        eprintln!("    {}", crate::chat::text::terminal(m));
    }
    if !args.yes {
        eprint!("Silence these in Alertmanager? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("not silenced");
            return Ok(ExitCode::FAILURE);
        }
    }
    let response = endpoint
        .post(serde_json::json!({"for": args.length.length, "matchers": matchers}))
        .await?;
    print_reply(response).await
}

/// `remedy doctor`: each check on its own line, fixes under the failures.
async fn doctor(settings: &Settings) -> anyhow::Result<ExitCode> {
    let refs = playbook::References::from_settings(settings);
    let playbooks = match playbook::load_dir(&settings.playbooks.dir, &refs) {
        Ok(playbooks) => playbooks,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{} problem(s) in playbooks: run `remedy check` first",
                errors.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let checks = crate::doctor::run(settings, &playbooks).await;
    for check in &checks {
        println!("{check}");
    }
    let failed = checks
        .iter()
        .filter(|c| c.status == crate::doctor::Status::Fail)
        .count();
    if failed == 0 {
        println!("doctor: {} check(s), nothing missing", checks.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("doctor: {failed} of {} check(s) failed", checks.len());
        Ok(ExitCode::FAILURE)
    }
}

fn check(settings: Result<Settings, crate::config::ConfigError>) -> ExitCode {
    let settings = match settings {
        Ok(s) => s,
        Err(error) => {
            eprintln!("configuration invalid: {error}");
            return ExitCode::FAILURE;
        }
    };
    let refs = playbook::References::from_settings(&settings);
    let playbooks = playbook::load_dir(&settings.playbooks.dir, &refs);
    let matrix = crate::escalation::load_file(&settings.escalation.file, &settings);
    let mut failed = false;
    match &playbooks {
        Ok(playbooks) => {
            for warning in crate::chat::unheld_roles(&settings, playbooks) {
                eprintln!("warning: {warning}");
            }
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            eprintln!("{} problem(s) in playbooks", errors.len());
            failed = true;
        }
    }
    match &matrix {
        Ok(matrix) => {
            for warning in matrix.unheld_roles(&settings) {
                eprintln!("warning: {warning}");
            }
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            eprintln!("{} problem(s) in the escalation matrix", errors.len());
            failed = true;
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    println!(
        "configuration ok; {} playbook(s) ok in {}; escalation matrix ok in {} ({} rows and a default)",
        playbooks.map(|p| p.len()).unwrap_or_default(),
        settings.playbooks.dir.display(),
        settings.escalation.file.display(),
        matrix.map(|m| m.policies.len()).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

fn schema(kind: Option<SchemaKind>, write: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    match (kind, write) {
        (_, Some(dir)) => {
            for path in crate::schema::write_all(dir)
                .with_context(|| format!("writing schemas into {}", dir.display()))?
            {
                println!("{}", path.display());
            }
        }
        (Some(kind), None) => print!("{}", crate::schema::Kind::from(kind).generate()),
        (None, None) => {
            anyhow::bail!("name a schema (playbook, playbook-test, escalation) or --write DIR")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn test(
    settings: Result<Settings, crate::config::ConfigError>,
    path: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let settings = settings.context("loading settings")?;
    let playbooks = app::load_playbooks(&settings)?;
    let default = settings.playbooks.dir.join("tests");
    let outcome =
        playbook::testing::run_path(path.unwrap_or(&default), &playbooks, &settings.probes);
    for failure in &outcome.failures {
        println!("FAIL {failure}");
    }
    println!(
        "{} passed, {} failed",
        outcome.passed,
        outcome.failures.len()
    );
    Ok(if outcome.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn simulate(settings: Settings, file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let notification =
        crate::intake::parse(&body).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let engine = app::build_engine(&settings, None)?;
    let mut reports = Vec::new();
    for alert in &notification.alerts {
        let context = playbook::AlertContext {
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
            status: alert.status.as_str().to_owned(),
            fingerprint: alert.fingerprint.to_string(),
            starts_at: alert.starts_at_key(),
        };
        reports.push(crate::engine::diagnose::diagnose(&engine, &context).await);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for (i, report) in reports.iter().enumerate() {
            if i > 0 {
                println!("\n----\n");
            }
            print!("{}", report.to_text());
        }
    }
    Ok(())
}

/// `remedy audit export --since TIME`: pages through the audit log oldest
/// first, one JSON object a line.
async fn audit_export(
    settings: &Settings,
    since: &str,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let since = parse_since(since, crate::domain::now_millis())?;
    let store = app::connect_store(settings).await?;
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut after = 0;
    let mut written = 0_u64;
    loop {
        let page = store.audit_since(since, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for entry in &page {
            serde_json::to_writer(&mut out, entry)?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    store.close().await;
    eprintln!("{written} audit entries since {}", format_millis(since));
    Ok(())
}

/// An RFC 3339 time, or a duration back from `now` (`30d`).
fn parse_since(text: &str, now: crate::domain::Millis) -> anyhow::Result<crate::domain::Millis> {
    if let Ok(at) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(crate::domain::to_millis(at));
    }
    let ago = humantime::parse_duration(text).with_context(|| {
        format!("--since `{text}`: expected an RFC 3339 time or a duration such as 30d")
    })?;
    Ok(now.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)))
}

async fn incidents(settings: &Settings, command: IncidentsCommand) -> anyhow::Result<()> {
    let store = app::connect_store(settings).await?;
    match command {
        IncidentsCommand::List {
            status,
            alertname,
            limit,
            json,
        } => {
            let filter = IncidentFilter {
                status,
                alertname,
                before: None,
                limit,
            };
            let list = store.list_incidents(&filter).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:>6}  {:<9}  {:<9}  {:<20}  {:<34}  FINGERPRINT",
                    "ID", "STATUS", "SEVERITY", "OPENED", "ALERT"
                );
                for i in list {
                    println!(
                        "{:>6}  {:<9}  {:<9}  {:<20}  {:<34}  {}",
                        i.id,
                        i.status.as_str(),
                        i.severity,
                        format_millis(i.opened_at).get(..19).unwrap_or_default(),
                        i.alertname,
                        i.fingerprint
                    );
                }
            }
        }
        IncidentsCommand::Show { id } => {
            let incident = store
                .get_incident(id)
                .await?
                .with_context(|| format!("no incident {id}"))?;
            let timeline = store.incident_events(id).await?;
            let out = serde_json::json!({ "incident": incident, "timeline": timeline });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        IncidentsCommand::Keep { id, release } => {
            if !store
                .set_incident_keep(id, !release, crate::domain::now_millis())
                .await?
            {
                anyhow::bail!("no incident {id}");
            }
            if release {
                println!("incident {id} released: retention.incidents applies to it again");
            } else {
                println!("incident {id} kept: retention will not delete it");
            }
        }
        IncidentsCommand::Export { id, format, output } => {
            let matrix = app::load_matrix(settings)?;
            let record = crate::postmortem::Record::load(&store, id)
                .await?
                .with_context(|| format!("no incident {id}"))?;
            let text = match format {
                ExportFormat::Md => crate::postmortem::markdown(&record, &matrix),
                ExportFormat::Json => {
                    serde_json::to_string_pretty(&crate::postmortem::to_json(&record))? + "\n"
                }
            };
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
        }
    }
    store.close().await;
    Ok(())
}

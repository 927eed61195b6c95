//! The command line: `serve`, `check`, `incidents list|show`. Each command
//! loads the layered settings, then calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app;
use crate::config::Settings;
use crate::domain::{IncidentId, IncidentStatus, format_millis};
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
    /// Validate the settings and exit: 0 when valid, 1 with the reason when not.
    Check,
    /// Read incidents from the store.
    Incidents {
        #[command(subcommand)]
        command: IncidentsCommand,
    },
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
}

/// Entry point for `main`: every error ends here, printed once, exit 1.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("remedy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref());
    if let Command::Check = cli.command {
        return Ok(match settings {
            Ok(_) => {
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("configuration invalid: {error}");
                ExitCode::FAILURE
            }
        });
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
                app::serve(settings).await?;
            }
            Command::Check => unreachable!("handled before the runtime starts"),
            Command::Incidents { command } => incidents(&settings, command).await?,
        }
        Ok(ExitCode::SUCCESS)
    })
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
                        i.status,
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
    }
    store.close().await;
    Ok(())
}

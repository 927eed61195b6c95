//! The warning playbook's 24-hour PromQL (`avg_over_time`, `max_over_time`,
//! `deriv`, `predict_linear` over `[24h]`) against a real Prometheus that
//! holds a real day of history: a rising `db_pool_utilization_percent`
//! (45 % to 80 %, one sample a minute) backfilled with `promtool tsdb
//! create-blocks-from openmetrics` into the storage of Debian's Prometheus
//! before it starts; `remedy simulate` then diagnoses a firing
//! DatabasePoolExhaustionWarning against it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// A Prometheus process, killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One sample a minute over the last 24 h, rising in a straight line from
/// `from` to `to`, in OpenMetrics text.
fn day_of_samples(from: f64, to: f64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let samples = 24 * 60;
    let mut text = String::from("# TYPE db_pool_utilization_percent gauge\n");
    for i in 0..samples {
        let at = now - 86_400 + i * 60 + 30;
        #[allow(clippy::cast_precision_loss, reason = "at most 1,440 samples")]
        let value = from + (to - from) * (i as f64) / (samples as f64);
        text.push_str(&format!(
            "db_pool_utilization_percent{{service=\"agente-api\"}} {value:.3} {at}\n"
        ));
    }
    text.push_str("# EOF\n");
    text
}

async fn start_prometheus(dir: &Path) -> (Prometheus, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    std::fs::write(
        dir.join("prometheus.yml"),
        "global:\n  scrape_interval: 1m\n",
    )
    .expect("config");
    let child = Command::new(PROMETHEUS)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
        .spawn()
        .expect("prometheus starts (Debian's prometheus package)");
    let prometheus = Prometheus(child);
    let url = format!("http://127.0.0.1:{port}");
    let client = remedy::net::client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client
            .get(format!("{url}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (prometheus, url);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn warning_alert() -> String {
    json!({
        "receiver": "remedy", "status": "firing", "version": "4",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "DatabasePoolExhaustionWarning", "severity": "warning",
                       "service": "agente-api"},
            "annotations": {}, "startsAt": "2026-11-30T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": "a1a1a1a1a1a1a1a1"
        }],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am", "groupKey": "{}:{}", "truncatedAlerts": 0
    })
    .to_string()
}

#[tokio::test]
async fn the_warnings_24_hour_trend_is_read_from_a_real_prometheus_with_a_day_of_history() {
    let dir =
        std::env::temp_dir().join(format!("remedy-history-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("day.om"), day_of_samples(45.0, 80.0)).expect("samples");
    let backfill = Command::new(PROMTOOL)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(dir.join("day.om"))
        .arg(dir.join("tsdb"))
        .output()
        .expect("promtool runs (Debian's prometheus package)");
    assert!(
        backfill.status.success(),
        "{}",
        String::from_utf8_lossy(&backfill.stderr)
    );
    let (_prometheus, url) = start_prometheus(&dir).await;
    let target = common::fresh_store_url(common::Backend::Postgres).await;
    std::fs::write(dir.join("alert.json"), warning_alert()).expect("alert");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_remedy"));
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("REMEDY__")) {
        cmd.env_remove(key);
    }
    let out = cmd
        .args(["simulate", "--json"])
        .arg(dir.join("alert.json"))
        .env("REMEDY__PROMETHEUS__URL", &url)
        .env("REMEDY__TARGETS__MAIN__URL", &target)
        .output()
        .expect("remedy simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Value = serde_json::from_slice(&out.stdout).expect("json");
    let report = &reports[0];
    assert_eq!(
        report["playbook"], "DatabasePoolExhaustionWarning",
        "{report}"
    );
    let value = |step: &str| {
        let s = &report["steps"][step];
        assert_eq!(s["ok"], true, "{step}: {s}");
        s["value"].as_f64().unwrap_or_else(|| panic!("{step}: {s}"))
    };
    // 35 points over 24 h: 1.46 per hour, 115 % a day on.
    let slope = value("trend_24h");
    assert!((1.40..1.52).contains(&slope), "{slope}");
    let forecast = value("forecast_24h");
    assert!((110.0..120.0).contains(&forecast), "{forecast}");
    let average = value("utilization_avg_24h");
    assert!((61.0..64.0).contains(&average), "{average}");
    let now = value("utilization_now");
    assert!((79.0..80.5).contains(&now), "{now}");

    let findings: Vec<(String, String)> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap_or_default().to_owned(),
                f["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let has = |severity: &str, text: &str| {
        findings
            .iter()
            .any(|(s, t)| s == severity && t.contains(text))
    };
    assert!(has("warning", "above the 75 % warning"), "{findings:?}");
    assert!(has("warning", "The trend is rising: 1.4"), "{findings:?}");
    assert!(
        has("critical", "passes the 90 % critical threshold within 24 h"),
        "{findings:?}"
    );
    assert!(has("warning", "The 24 h average is above"), "{findings:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

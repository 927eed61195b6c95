//! The `promql` step: one Prometheus instant query (`POST /api/v1/query`,
//! form-encoded), its response envelope parsed with local serde structs.
//! A `vector` becomes one row per series (labels plus `value`/`value_text`),
//! a `scalar` becomes the step's value, a `matrix` (a range selector such as
//! the runbook's `db_pool_utilization_percent[1h]`) one row per series with
//! its samples' statistics; API errors, proxy pages that are not JSON, and
//! `string` results become [`StepError::Failed`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::http::error_chain;
use super::{StepError, StepOutput};
use crate::store::redact_url;

/// Largest response body read before giving up (a runaway vector).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How much of a non-JSON body is quoted in the error.
const BODY_EXCERPT_CHARS: usize = 200;

/// The documented envelope (`web/api/v1/api.go`, `type Response`).
#[derive(Debug, Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct QueryData {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(default)]
    result: Value,
}

/// One element of a `vector` result: `value` is `[<unix_time>, "<sample>"]`;
/// a native-histogram series carries `histogram` instead, which is ignored.
#[derive(Debug, Deserialize)]
struct Series {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    value: Option<(f64, String)>,
}

/// Runs `promql` as an instant query against the Prometheus at `base_url`.
///
/// The request carries `timeout` to Prometheus too, and the whole call
/// (connect, query, body) is bounded by it locally.
///
/// On success `ok` is true and: for a `vector`, `rows` holds one row per
/// series in the order Prometheus returned them (which it does not
/// guarantee), each row being the series' labels as strings plus `value`
/// (a JSON number, or `null` for `NaN`/`±Inf`/native histograms) and
/// `value_text` (the sample as Prometheus sent it, `null` for histograms);
/// `value` is the first series' value when finite. For a `scalar`, `rows` is
/// empty and `value` is the scalar when finite. For a `matrix`, one row per
/// series with its labels and the statistics of [`range_row`]; `value` is
/// the first series' last finite sample. A label named like one of those
/// keys is shadowed by it.
///
/// # Errors
/// [`StepError::Timeout`] when `timeout` elapses; [`StepError::Failed`] for
/// transport errors, an error envelope (`"<errorType>: <error>"`), a body
/// that is not the envelope (`"HTTP <code> <reason>: <excerpt>"`), or a
/// `string` result.
pub async fn query(
    client: &reqwest::Client,
    base_url: &str,
    promql: &str,
    timeout: Duration,
) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let mut output = tokio::time::timeout(timeout, query_inner(client, base_url, promql, timeout))
        .await
        .map_err(|_| StepError::Timeout(timeout))??;
    output.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(output)
}

async fn query_inner(
    client: &reqwest::Client,
    base_url: &str,
    promql: &str,
    timeout: Duration,
) -> Result<StepOutput, StepError> {
    let url = format!("{}/api/v1/query", base_url.trim_end_matches('/'));
    let form = [
        ("query", promql.to_owned()),
        ("timeout", prom_duration(timeout)),
    ];
    let response = client.post(&url).form(&form).send().await.map_err(|e| {
        StepError::Failed(format!(
            "querying {}: {}",
            redact_url(&url),
            error_chain(&e.without_url())
        ))
    })?;
    let status = response.status();
    let body = read_capped(response, MAX_BODY_BYTES).await.map_err(|e| {
        StepError::Failed(format!(
            "reading response from {}: {}",
            redact_url(&url),
            error_chain(&e)
        ))
    })?;

    let Ok(envelope) = serde_json::from_slice::<Envelope>(&body) else {
        let text = String::from_utf8_lossy(&body);
        let excerpt: String = text.chars().take(BODY_EXCERPT_CHARS).collect();
        return Err(StepError::Failed(format!("HTTP {status}: {excerpt}")));
    };
    interpret(envelope)
}

/// Turns a parsed envelope into the step's output.
fn interpret(envelope: Envelope) -> Result<StepOutput, StepError> {
    if envelope.status != "success" {
        let error_type = envelope.error_type.as_deref().unwrap_or("unknown");
        let error = envelope.error.as_deref().unwrap_or("no error message");
        return Err(StepError::Failed(format!("{error_type}: {error}")));
    }
    for warning in &envelope.warnings {
        tracing::warn!(warning = %warning, "prometheus query warning");
    }
    let data = envelope
        .data
        .ok_or_else(|| StepError::Failed("success response without data".to_owned()))?;

    match data.result_type.as_str() {
        "vector" => {
            let series: Vec<Series> = serde_json::from_value(data.result)
                .map_err(|e| StepError::Failed(format!("malformed vector result: {e}")))?;
            let mut value = None;
            let mut rows = Vec::with_capacity(series.len());
            for (index, one) in series.into_iter().enumerate() {
                let (row, sample) = series_row(one);
                if index == 0 {
                    value = sample.filter(|v| v.is_finite());
                }
                rows.push(row);
            }
            Ok(StepOutput {
                ok: true,
                rows,
                value,
                ..StepOutput::default()
            })
        }
        "scalar" => {
            let (_, text): (f64, String) = serde_json::from_value(data.result)
                .map_err(|e| StepError::Failed(format!("malformed scalar result: {e}")))?;
            Ok(StepOutput {
                ok: true,
                value: parse_sample(&text).filter(|v| v.is_finite()),
                ..StepOutput::default()
            })
        }
        "matrix" => {
            let series: Vec<RangeSeries> = serde_json::from_value(data.result)
                .map_err(|e| StepError::Failed(format!("malformed matrix result: {e}")))?;
            let mut value = None;
            let mut rows = Vec::with_capacity(series.len());
            for (index, one) in series.into_iter().enumerate() {
                let (row, last) = range_row(one);
                if index == 0 {
                    value = last;
                }
                rows.push(row);
            }
            Ok(StepOutput {
                ok: true,
                rows,
                value,
                ..StepOutput::default()
            })
        }
        other => Err(StepError::Failed(format!(
            "unsupported result type {other:?} (use a query that returns a vector, a scalar or a range of samples)"
        ))),
    }
}

/// One element of a `matrix` result (a range selector such as
/// `db_pool_utilization_percent[1h]`): `values` is `[[<unix_time>, "<sample>"], …]`.
#[derive(Debug, Deserialize)]
struct RangeSeries {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// One row for a range: the series' labels plus, over its finite samples,
/// `samples`, `first`, `last`, `min`, `max`, `avg`, `first_at` and
/// `last_at` (Unix seconds), and `change` (`last - first`); `value` is
/// `last`. Statistics are `null` when no sample is finite.
fn range_row(series: RangeSeries) -> (Map<String, Value>, Option<f64>) {
    let mut row: Map<String, Value> = series
        .metric
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let samples: Vec<(f64, f64)> = series
        .values
        .iter()
        .filter_map(|(at, text)| {
            parse_sample(text)
                .filter(|v| v.is_finite())
                .map(|v| (*at, v))
        })
        .collect();
    let number = |v: Option<f64>| {
        v.and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number)
    };
    let first = samples.first().copied();
    let last = samples.last().copied();
    let min = samples.iter().map(|s| s.1).reduce(f64::min);
    let max = samples.iter().map(|s| s.1).reduce(f64::max);
    #[allow(clippy::cast_precision_loss, reason = "sample counts are small")]
    let avg = (!samples.is_empty())
        .then(|| samples.iter().map(|s| s.1).sum::<f64>() / samples.len() as f64);
    row.insert("samples".to_owned(), Value::from(samples.len()));
    row.insert("first".to_owned(), number(first.map(|s| s.1)));
    row.insert("last".to_owned(), number(last.map(|s| s.1)));
    row.insert("min".to_owned(), number(min));
    row.insert("max".to_owned(), number(max));
    row.insert("avg".to_owned(), number(avg));
    row.insert(
        "change".to_owned(),
        number(first.zip(last).map(|(f, l)| l.1 - f.1)),
    );
    row.insert("first_at".to_owned(), number(first.map(|s| s.0)));
    row.insert("last_at".to_owned(), number(last.map(|s| s.0)));
    row.insert("value".to_owned(), number(last.map(|s| s.1)));
    (row, last.map(|s| s.1))
}

/// One row for a series, and its sample value when it has a float one.
fn series_row(series: Series) -> (Map<String, Value>, Option<f64>) {
    let mut row: Map<String, Value> = series
        .metric
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let sample = match &series.value {
        Some((_, text)) => {
            let parsed = parse_sample(text);
            let number = parsed
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number);
            row.insert("value".to_owned(), number);
            row.insert("value_text".to_owned(), Value::String(text.clone()));
            parsed
        }
        None => {
            // A native histogram (`histogram`) or no sample at all.
            row.insert("value".to_owned(), Value::Null);
            row.insert("value_text".to_owned(), Value::Null);
            None
        }
    };
    (row, sample)
}

/// Parses a sample value as Prometheus formats it (`"1"`, `"0.5"`, `"NaN"`,
/// `"+Inf"`, `"-Inf"`, exponent forms).
fn parse_sample(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

/// A duration in Prometheus' syntax: whole seconds as `<n>s`, otherwise
/// milliseconds as `<n>ms` (Prometheus durations take no fractions).
fn prom_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", duration.as_secs())
    } else {
        format!("{millis}ms")
    }
}

/// Reads at most `cap` bytes of the body; more is an error.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, CapError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| CapError::Http(e.without_url()))?
    {
        if body.len() + chunk.len() > cap {
            return Err(CapError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug, thiserror::Error)]
enum CapError {
    #[error(transparent)]
    Http(reqwest::Error),
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use axum::Form;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::json;

    use super::*;

    const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"prometheus","instance":"localhost:9090"},"value":[1435781451.781,"1"]},{"metric":{"__name__":"up","job":"node","instance":"localhost:9100"},"value":[1435781451.781,"NaN"]}]}}"#;
    const NAN_FIRST: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"a"},"value":[1435781451.781,"+Inf"]},{"metric":{"job":"b"},"value":[1435781451.781,"2"]}]}}"#;
    const EMPTY: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    const HISTOGRAM: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"rpc_latency"},"histogram":[1435781451.781,{"count":"10","sum":"3.5","buckets":[[0,"0.5","1","10"]]}]}]}}"#;
    const SCALAR: &str =
        r#"{"status":"success","data":{"resultType":"scalar","result":[1435781451.781,"42.5"]}}"#;
    const MATRIX: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"a"},"values":[[1000,"70"],[1900,"NaN"],[2000,"76"],[2800,"94"]]},{"metric":{"job":"b"},"values":[[1000,"NaN"]]}]}}"#;
    const STRING: &str =
        r#"{"status":"success","data":{"resultType":"string","result":[1435781451.781,"hi"]}}"#;
    const BAD_DATA: &str = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
    const EXECUTION: &str = r#"{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory in query execution"}"#;
    const PROXY_502: &str = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>";

    fn json_response(status: StatusCode, body: &'static str) -> Response {
        (status, [("content-type", "application/json")], body).into_response()
    }

    /// A fake Prometheus: one `/api/v1/query` route that answers according
    /// to the query text, and rejects requests without the expected form
    /// (the tests use a 200 ms timeout for `slow`, 2 s for the rest).
    async fn handler(Form(form): Form<HashMap<String, String>>) -> Response {
        let query = form.get("query").map(String::as_str);
        let expected_timeout = if query == Some("slow") { "200ms" } else { "2s" };
        if form.get("timeout").map(String::as_str) != Some(expected_timeout) {
            return json_response(
                StatusCode::BAD_REQUEST,
                r#"{"status":"error","errorType":"test","error":"unexpected timeout parameter"}"#,
            );
        }
        match query {
            Some("up") => json_response(StatusCode::OK, VECTOR),
            Some("inf_first") => json_response(StatusCode::OK, NAN_FIRST),
            Some("empty") => json_response(StatusCode::OK, EMPTY),
            Some("histogram") => json_response(StatusCode::OK, HISTOGRAM),
            Some("scalar(42.5)") => json_response(StatusCode::OK, SCALAR),
            Some("trend[1h]") => json_response(StatusCode::OK, MATRIX),
            Some("\"hi\"") => json_response(StatusCode::OK, STRING),
            Some("execution") => json_response(StatusCode::UNPROCESSABLE_ENTITY, EXECUTION),
            Some("proxy") => (
                StatusCode::BAD_GATEWAY,
                [("content-type", "text/html")],
                PROXY_502,
            )
                .into_response(),
            Some("slow") => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                json_response(StatusCode::OK, SCALAR)
            }
            _ => json_response(StatusCode::BAD_REQUEST, BAD_DATA),
        }
    }

    async fn fake_prometheus() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let app = Router::new().route("/api/v1/query", post(handler));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    async fn run(promql: &str) -> Result<StepOutput, StepError> {
        let base = fake_prometheus().await;
        query(&crate::net::client(), &base, promql, Duration::from_secs(2)).await
    }

    #[tokio::test]
    async fn vector_gives_one_row_per_series_and_nan_as_null() {
        let out = run("up").await.expect("vector succeeds");
        assert!(out.ok);
        assert_eq!(out.error, None);
        assert_eq!(out.value, Some(1.0));
        assert_eq!(out.truncated, 0);
        assert_eq!(out.rows.len(), 2);
        assert_eq!(
            Value::Object(out.rows[0].clone()),
            json!({"__name__": "up", "job": "prometheus", "instance": "localhost:9090",
                   "value": 1.0, "value_text": "1"})
        );
        assert_eq!(
            Value::Object(out.rows[1].clone()),
            json!({"__name__": "up", "job": "node", "instance": "localhost:9100",
                   "value": null, "value_text": "NaN"})
        );
    }

    #[tokio::test]
    async fn non_finite_first_series_gives_no_value() {
        let out = run("inf_first").await.expect("vector succeeds");
        assert_eq!(out.value, None);
        assert_eq!(out.rows[0]["value"], Value::Null);
        assert_eq!(out.rows[0]["value_text"], json!("+Inf"));
        assert_eq!(out.rows[1]["value"], json!(2.0));
    }

    #[tokio::test]
    async fn empty_vector_gives_no_rows_and_no_value() {
        let out = run("empty").await.expect("vector succeeds");
        assert!(out.ok);
        assert!(out.rows.is_empty());
        assert_eq!(out.value, None);
    }

    #[tokio::test]
    async fn histogram_series_gives_null_value() {
        let out = run("histogram").await.expect("vector succeeds");
        assert_eq!(out.value, None);
        assert_eq!(
            Value::Object(out.rows[0].clone()),
            json!({"__name__": "rpc_latency", "value": null, "value_text": null})
        );
    }

    #[tokio::test]
    async fn scalar_gives_value_and_no_rows() {
        let out = run("scalar(42.5)").await.expect("scalar succeeds");
        assert!(out.ok);
        assert!(out.rows.is_empty());
        assert_eq!(out.value, Some(42.5));
    }

    #[tokio::test]
    async fn error_envelope_is_failed_with_type_and_message() {
        let err = run("up{").await.expect_err("bad_data fails");
        assert_eq!(err, StepError::Failed("bad_data: parse error".to_owned()));
        let err = run("execution").await.expect_err("execution fails");
        assert_eq!(
            err,
            StepError::Failed(
                "execution: query processing would load too many samples into memory in query execution"
                    .to_owned()
            )
        );
    }

    #[tokio::test]
    async fn non_json_body_is_failed_with_status_and_excerpt() {
        let err = run("proxy").await.expect_err("proxy page fails");
        let StepError::Failed(text) = err else {
            panic!("expected Failed, got {err:?}");
        };
        assert_eq!(text, format!("HTTP 502 Bad Gateway: {PROXY_502}"));
    }

    #[tokio::test]
    async fn non_json_excerpt_is_capped_at_200_chars() {
        let body = "é".repeat(500);
        let app = Router::new().route(
            "/api/v1/query",
            post(move || {
                let body = body.clone();
                async move { (StatusCode::BAD_GATEWAY, body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let err = query(
            &crate::net::client(),
            &format!("http://{addr}/"),
            "up",
            Duration::from_secs(2),
        )
        .await
        .expect_err("fails");
        assert_eq!(
            err,
            StepError::Failed(format!("HTTP 502 Bad Gateway: {}", "é".repeat(200)))
        );
    }

    #[tokio::test]
    async fn string_is_unsupported() {
        let err = run("\"hi\"").await.expect_err("unsupported");
        let StepError::Failed(text) = err else {
            panic!("expected Failed, got {err:?}");
        };
        assert!(text.starts_with("unsupported result type"), "{text}");
    }

    #[tokio::test]
    async fn matrix_gives_one_row_per_series_with_its_statistics() {
        let out = run("trend[1h]").await.expect("matrix succeeds");
        assert_eq!(out.rows.len(), 2);
        let a = &out.rows[0];
        assert_eq!(a["job"], "a");
        assert_eq!(a["samples"], 3);
        assert_eq!(a["first"], 70.0);
        assert_eq!(a["last"], 94.0);
        assert_eq!(a["min"], 70.0);
        assert_eq!(a["max"], 94.0);
        assert_eq!(a["avg"], 80.0);
        assert_eq!(a["change"], 24.0);
        assert_eq!(a["first_at"], 1000.0);
        assert_eq!(a["last_at"], 2800.0);
        assert_eq!(out.value, Some(94.0));
        // A series of NaN only: no statistics.
        let b = &out.rows[1];
        assert_eq!(b["samples"], 0);
        assert_eq!(b["avg"], Value::Null);
        assert_eq!(b["value"], Value::Null);
    }

    #[tokio::test]
    async fn slow_server_times_out() {
        let base = fake_prometheus().await;
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = query(&crate::net::client(), &base, "slow", timeout)
            .await
            .expect_err("times out");
        assert_eq!(err, StepError::Timeout(timeout));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn connection_refused_is_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let err = query(
            &crate::net::client(),
            &format!("http://{addr}"),
            "up",
            Duration::from_secs(2),
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, StepError::Failed(_)), "{err:?}");
    }

    #[test]
    fn durations_use_prometheus_syntax() {
        assert_eq!(prom_duration(Duration::from_secs(2)), "2s");
        assert_eq!(prom_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(prom_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn samples_parse_like_prometheus_formats_them() {
        assert_eq!(parse_sample("1"), Some(1.0));
        assert_eq!(parse_sample("1e+06"), Some(1e6));
        assert_eq!(parse_sample("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_sample("-Inf"), Some(f64::NEG_INFINITY));
        assert!(parse_sample("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_sample("nope"), None);
    }
}

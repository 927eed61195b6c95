//! The `redis` step: the runbook's `analyze_redis_cache.py`, as a fixed set
//! of read-only commands on a named Redis (`[redis.NAME] url`), spoken in
//! RESP2 over one TCP connection: `INFO` (the default sections), `DBSIZE`,
//! `CONFIG GET maxmemory*` (optional: managed Redis often renames `CONFIG`;
//! `INFO memory` carries `maxmemory` too), `SLOWLOG LEN` and `SLOWLOG GET N`.
//! Nothing a playbook writes is ever sent: the commands are these, with no
//! argument from an alert. The step gives one row (see [`summary`]) with
//! the hit ratio as its `value`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{StepError, StepOutput};

/// Largest bulk string read (an `INFO` page is a few KiB).
const MAX_BULK_BYTES: usize = 4 * 1024 * 1024;
/// Most elements of one array reply, and how deep arrays may nest.
const MAX_ARRAY: usize = 10_000;
const MAX_DEPTH: usize = 4;
/// Characters of a slow command's key shown (its other arguments never are).
const MAX_KEY_CHARS: usize = 80;

/// Where a named Redis is, from its `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl RedisTarget {
    /// Parses a `redis://` URL. `rediss://` (TLS) is refused by name.
    ///
    /// # Errors
    /// What is wrong with the URL, without repeating its password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        match parsed.scheme() {
            "redis" => {}
            "rediss" => return Err("rediss:// (TLS) is not supported; use redis://".into()),
            other => return Err(format!("scheme `{other}` is not redis://")),
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| "a user or password that is not UTF-8".to_owned())
        };
        let username = Some(parsed.username())
            .filter(|u| !u.is_empty())
            .map(decode)
            .transpose()?;
        let password = parsed.password().map(decode).transpose()?;
        let path = parsed.path().trim_start_matches('/');
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .map_err(|_| format!("`/{path}` is not a database number"))?
        };
        Ok(Self {
            host,
            port: parsed.port().unwrap_or(6379),
            username,
            password,
            db,
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3)?, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn text(&self) -> Option<String> {
        match self {
            Self::Simple(s) => Some(s.clone()),
            Self::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Self::Integer(i) => Some(i.to_string()),
            _ => None,
        }
    }
}

/// One connection speaking RESP2.
struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    async fn command(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream
            .get_mut()
            .write_all(&out)
            .await
            .map_err(|e| format!("writing to Redis: {e}"))?;
        read_reply(&mut self.stream, 0).await
    }

    /// A command whose error reply is an error of the step.
    async fn must(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        match self.command(args).await? {
            Reply::Error(e) => Err(format!(
                "{}: {e}",
                String::from_utf8_lossy(args.first().copied().unwrap_or_default())
            )),
            other => Ok(other),
        }
    }
}

async fn read_line(stream: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    let n = (&mut *stream)
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading from Redis: {e}"))?;
    if n == 0 {
        return Err("Redis closed the connection".into());
    }
    if !line.ends_with(b"\r\n") {
        return Err("a reply line without CRLF (not Redis?)".into());
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_reply(
    stream: &mut BufReader<TcpStream>,
    depth: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, String>> + Send + '_>> {
    Box::pin(async move {
        let line = read_line(stream).await?;
        let (kind, rest) = line.split_at_checked(1).ok_or("an empty reply line")?;
        let number = || -> Result<i64, String> {
            rest.parse()
                .map_err(|_| format!("`{rest}` is not a RESP length or integer"))
        };
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => Ok(Reply::Integer(number()?)),
            "$" => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Bulk(None));
                };
                if len > MAX_BULK_BYTES {
                    return Err(format!(
                        "a bulk reply of {len} bytes (limit {MAX_BULK_BYTES})"
                    ));
                }
                let mut data = vec![0; len + 2];
                stream
                    .read_exact(&mut data)
                    .await
                    .map_err(|e| format!("reading from Redis: {e}"))?;
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Array(None));
                };
                if len > MAX_ARRAY || depth >= MAX_DEPTH {
                    return Err(format!("an array reply of {len} elements at depth {depth}"));
                }
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(read_reply(stream, depth + 1).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(format!("unexpected reply type `{other}` (not Redis?)")),
        }
    })
}

/// `INFO`'s `key:value` lines (section headers and blank lines skipped).
#[must_use]
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Runs the step's commands on `target` and summarises them. `slowlog` is
/// how many `SLOWLOG GET` entries to read.
///
/// # Errors
/// [`StepError::Timeout`] after `timeout`; [`StepError::Failed`] when the
/// connection, `AUTH`, `SELECT`, `INFO` or `DBSIZE` fail (a refused
/// `CONFIG` or `SLOWLOG` only leaves their fields empty).
pub async fn diagnose(
    target: &RedisTarget,
    slowlog: usize,
    timeout: Duration,
) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let row = tokio::time::timeout(timeout, collect(target, slowlog))
        .await
        .map_err(|_| StepError::Timeout(timeout))?
        .map_err(StepError::Failed)?;
    let value = row.get("hit_ratio_percent").and_then(Value::as_f64);
    Ok(StepOutput {
        ok: true,
        error: None,
        rows: vec![row],
        value,
        truncated: 0,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

async fn collect(target: &RedisTarget, slowlog: usize) -> Result<Map<String, Value>, String> {
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connecting to {}:{}: {e}", target.host, target.port))?;
    let mut conn = Connection {
        stream: BufReader::new(stream),
    };
    if let Some(password) = &target.password {
        let reply = match &target.username {
            Some(user) => {
                conn.command(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                    .await?
            }
            None => conn.command(&[b"AUTH", password.as_bytes()]).await?,
        };
        if let Reply::Error(e) = reply {
            return Err(format!("AUTH: {e}"));
        }
    }
    if target.db != 0 {
        conn.must(&[b"SELECT", target.db.to_string().as_bytes()])
            .await?;
    }
    let info = conn
        .must(&[b"INFO"])
        .await?
        .text()
        .ok_or("INFO: not a text reply")?;
    let info = parse_info(&info);
    let dbsize = match conn.must(&[b"DBSIZE"]).await? {
        Reply::Integer(n) => n,
        other => return Err(format!("DBSIZE: unexpected reply {other:?}")),
    };
    let mut config = BTreeMap::new();
    if let Reply::Array(Some(items)) = conn.command(&[b"CONFIG", b"GET", b"maxmemory*"]).await? {
        for pair in items.chunks(2) {
            if let [k, v] = pair
                && let (Some(k), Some(v)) = (k.text(), v.text())
            {
                config.insert(k, v);
            }
        }
    }
    let slowlog_len = match conn.command(&[b"SLOWLOG", b"LEN"]).await? {
        Reply::Integer(n) => Some(n),
        _ => None,
    };
    let count = slowlog.to_string();
    let slow = match conn
        .command(&[b"SLOWLOG", b"GET", count.as_bytes()])
        .await?
    {
        Reply::Array(Some(entries)) => entries.iter().filter_map(slow_entry).collect(),
        _ => Vec::new(),
    };
    let _ = conn.command(&[b"QUIT"]).await;
    Ok(summary(
        &info,
        dbsize,
        &config,
        slowlog_len,
        slow,
        target.db,
    ))
}

/// One `SLOWLOG GET` entry: its id, Unix time, microseconds, the command
/// name and its key (never the other arguments: values may be private).
fn slow_entry(entry: &Reply) -> Option<Value> {
    let Reply::Array(Some(fields)) = entry else {
        return None;
    };
    let int = |i: usize| match fields.get(i) {
        Some(Reply::Integer(n)) => Some(*n),
        _ => None,
    };
    let args: Vec<String> = match fields.get(3) {
        Some(Reply::Array(Some(args))) => args.iter().filter_map(Reply::text).collect(),
        _ => Vec::new(),
    };
    let command = args.first().map(|c| c.to_uppercase()).unwrap_or_default();
    let key: Option<String> = args.get(1).map(|k| k.chars().take(MAX_KEY_CHARS).collect());
    let client = fields.get(4).and_then(Reply::text);
    Some(json!({
        "id": int(0)?,
        "at": int(1)?,
        "duration_us": int(2)?,
        "command": command,
        "key": key,
        "arguments": args.len().saturating_sub(1),
        "client": client,
    }))
}

/// The step's row: `redis_version`, `uptime_seconds`, `connected_clients`,
/// `blocked_clients`, `used_memory` / `_human`, `used_memory_peak_human`,
/// `maxmemory` / `_human`, `maxmemory_policy`, `memory_percent` (of
/// `maxmemory`, `null` when unlimited), `keyspace_hits`, `keyspace_misses`,
/// `hit_ratio_percent` (since the server started or its stats were reset;
/// `null` without lookups), `evicted_keys`, `expired_keys`,
/// `rejected_connections`, `db`, `dbsize`, `slowlog_len` and `slowlog` (the
/// entries of [`slow_entry`], slowest first).
fn summary(
    info: &BTreeMap<String, String>,
    dbsize: i64,
    config: &BTreeMap<String, String>,
    slowlog_len: Option<i64>,
    mut slow: Vec<Value>,
    db: u32,
) -> Map<String, Value> {
    let int = |key: &str| info.get(key).and_then(|v| v.parse::<i64>().ok());
    let text = |key: &str| info.get(key).cloned();
    let maxmemory = config
        .get("maxmemory")
        .and_then(|v| v.parse::<i64>().ok())
        .or_else(|| int("maxmemory"));
    let policy = config
        .get("maxmemory-policy")
        .cloned()
        .or_else(|| text("maxmemory_policy"));
    let used = int("used_memory");
    #[allow(clippy::cast_precision_loss, reason = "percentages of byte counts")]
    let memory_percent = match (used, maxmemory) {
        (Some(used), Some(max)) if max > 0 => Some(round2(100.0 * used as f64 / max as f64)),
        _ => None,
    };
    let hits = int("keyspace_hits");
    let misses = int("keyspace_misses");
    #[allow(clippy::cast_precision_loss, reason = "percentages of counters")]
    let hit_ratio = match (hits, misses) {
        (Some(h), Some(m)) if h + m > 0 => Some(round2(100.0 * h as f64 / (h + m) as f64)),
        _ => None,
    };
    slow.sort_by_key(|e| std::cmp::Reverse(e["duration_us"].as_i64().unwrap_or(0)));
    let mut row = Map::new();
    let mut put = |k: &str, v: Value| {
        row.insert(k.to_owned(), v);
    };
    put("redis_version", json!(text("redis_version")));
    put("uptime_seconds", json!(int("uptime_in_seconds")));
    put("connected_clients", json!(int("connected_clients")));
    put("blocked_clients", json!(int("blocked_clients")));
    put("used_memory", json!(used));
    put("used_memory_human", json!(text("used_memory_human")));
    put(
        "used_memory_peak_human",
        json!(text("used_memory_peak_human")),
    );
    put("maxmemory", json!(maxmemory));
    put("maxmemory_human", json!(text("maxmemory_human")));
    put("maxmemory_policy", json!(policy));
    put("memory_percent", json!(memory_percent));
    put("keyspace_hits", json!(hits));
    put("keyspace_misses", json!(misses));
    put("hit_ratio_percent", json!(hit_ratio));
    put("evicted_keys", json!(int("evicted_keys")));
    put("expired_keys", json!(int("expired_keys")));
    put("rejected_connections", json!(int("rejected_connections")));
    put("db", json!(db));
    put("dbsize", json!(dbsize));
    put("slowlog_len", json!(slowlog_len));
    put("slowlog", Value::Array(slow));
    row
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_user_password_and_db_and_tls_is_refused() {
        let t = RedisTarget::parse("redis://app:s%40cret@cache.internal:6380/3").expect("parses");
        assert_eq!(t.host, "cache.internal");
        assert_eq!(t.port, 6380);
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.db, 3);
        assert!(!format!("{t:?}").contains("cret"));
        let t = RedisTarget::parse("redis://:pw@127.0.0.1").expect("parses");
        assert_eq!(
            (t.username, t.password.as_deref(), t.port, t.db),
            (None, Some("pw"), 6379, 0)
        );
        assert!(
            RedisTarget::parse("rediss://h")
                .expect_err("refused")
                .contains("TLS")
        );
        assert!(
            RedisTarget::parse("http://h")
                .expect_err("refused")
                .contains("scheme")
        );
        assert!(
            RedisTarget::parse("redis://h/x")
                .expect_err("refused")
                .contains("database number")
        );
    }

    #[test]
    fn the_summary_computes_hit_ratio_and_memory_share() {
        let info = parse_info(
            "# Stats\r\nkeyspace_hits:900\r\nkeyspace_misses:100\r\nevicted_keys:7\r\n\r\n# Memory\r\nused_memory:750\r\nmaxmemory:0\r\n",
        );
        let config = BTreeMap::from([
            ("maxmemory".to_owned(), "1000".to_owned()),
            ("maxmemory-policy".to_owned(), "allkeys-lru".to_owned()),
        ]);
        let row = summary(
            &info,
            12,
            &config,
            Some(2),
            vec![json!({"duration_us": 5}), json!({"duration_us": 50})],
            0,
        );
        assert_eq!(row["hit_ratio_percent"], 90.0);
        assert_eq!(row["memory_percent"], 75.0);
        assert_eq!(row["maxmemory_policy"], "allkeys-lru");
        assert_eq!(row["evicted_keys"], 7);
        assert_eq!(row["slowlog"][0]["duration_us"], 50);
        // No maxmemory (0: unlimited) and no lookups: nulls, not NaN.
        let row = summary(
            &parse_info("used_memory:5\r\nmaxmemory:0\r\n"),
            0,
            &BTreeMap::new(),
            None,
            vec![],
            0,
        );
        assert_eq!(row["memory_percent"], Value::Null);
        assert_eq!(row["hit_ratio_percent"], Value::Null);
    }
}

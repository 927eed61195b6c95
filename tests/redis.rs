//! The `redis` step (`src/diagnose/redis.rs`), the runbook's
//! `analyze_redis_cache.py`: against the real Redis at 127.0.0.1:6379 (its
//! database 9, keys of this test only, deleted at the end; no FLUSH), through
//! the shipped DatabasePoolExhaustionCritical playbook; and against a fake
//! Redis on loopback that records every command, to show that only the
//! read-only ones are ever sent.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use remedy::diagnose::redis::{RedisTarget, diagnose};
use remedy::playbook::AlertContext;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const REDIS_DB: u32 = 9;

/// Sends one command to the real Redis and returns its raw reply line(s).
async fn raw(stream: &mut BufReader<TcpStream>, args: &[&str]) -> String {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream
        .get_mut()
        .write_all(out.as_bytes())
        .await
        .expect("write");
    let mut line = String::new();
    stream.read_line(&mut line).await.expect("read");
    if let Some(len) = line
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        let mut body = vec![0; len + 2];
        stream.read_exact(&mut body).await.expect("bulk");
        line.push_str(&String::from_utf8_lossy(&body));
    }
    line
}

async fn redis() -> BufReader<TcpStream> {
    let stream = TcpStream::connect("127.0.0.1:6379")
        .await
        .expect("the local Redis at 127.0.0.1:6379");
    let mut stream = BufReader::new(stream);
    assert_eq!(
        raw(&mut stream, &["SELECT", &REDIS_DB.to_string()]).await,
        "+OK\r\n"
    );
    stream
}

#[tokio::test]
async fn the_pool_exhaustion_playbook_reads_hits_memory_and_a_real_slow_command_from_redis() {
    let prefix = format!("remedy-test-{}", uuid::Uuid::now_v7().simple());
    let mut conn = redis().await;
    for i in 0..5 {
        raw(&mut conn, &["SET", &format!("{prefix}:{i}"), "v"]).await;
    }
    let target = RedisTarget::parse(&format!("redis://127.0.0.1:6379/{REDIS_DB}")).expect("url");
    let before = diagnose(&target, 10, Duration::from_secs(5))
        .await
        .expect("redis step");
    let hits_before = before.rows[0]["keyspace_hits"].as_i64().expect("hits");
    let misses_before = before.rows[0]["keyspace_misses"].as_i64().expect("misses");
    for i in 0..3 {
        raw(&mut conn, &["GET", &format!("{prefix}:{i}")]).await;
    }
    raw(&mut conn, &["GET", &format!("{prefix}:missing")]).await;
    // A command Redis itself logs as slow (over slowlog-log-slower-than,
    // 10 ms by default): a Lua loop of a few million steps.
    let script = "local i = 0 while i < 5000000 do i = i + 1 end return i";
    let reply = raw(&mut conn, &["EVAL", script, "0"]).await;
    assert_eq!(reply, ":5000000\r\n");

    let settings_url = format!("redis://127.0.0.1:6379/{REDIS_DB}");
    let store_url = common::fresh_store_url(common::Backend::Postgres).await;
    let dir = common::playbooks_dir();
    let settings = common::test_settings(
        "sqlite::memory:",
        &[
            ("REMEDY__TARGETS__MAIN__URL", store_url.as_str()),
            ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8 path")),
            ("REMEDY__PROMETHEUS__URL", "http://127.0.0.1:9"),
            ("REMEDY__REDIS__CACHE__URL", settings_url.as_str()),
        ],
    );
    let engine = remedy::app::build_engine(&settings, None).expect("engine");
    let alert = AlertContext {
        labels: [("alertname", "DatabasePoolExhaustionCritical")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        status: "firing".into(),
        ..AlertContext::default()
    };
    let report = remedy::engine::diagnose::diagnose(&engine, &alert).await;
    let cache = &report.steps["cache"];
    assert!(cache.ok, "{cache:?}");
    let row = &cache.rows[0];
    // Other clients may use the server too: at least ours were counted.
    assert!(
        row["keyspace_hits"].as_i64().expect("hits") >= hits_before + 3,
        "{row:?}"
    );
    assert!(
        row["keyspace_misses"].as_i64().expect("misses") > misses_before,
        "{row:?}"
    );
    let ratio = cache.value.expect("hit ratio");
    assert!((0.0..=100.0).contains(&ratio), "{ratio}");
    assert!(row["dbsize"].as_i64().expect("dbsize") >= 5, "{row:?}");
    assert_eq!(row["db"], REDIS_DB);
    assert!(row["redis_version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(row["used_memory"].as_i64().expect("used") > 0);
    match row["maxmemory"].as_i64().expect("maxmemory") {
        0 => assert!(row["memory_percent"].is_null(), "{row:?}"),
        max => {
            let used = row["used_memory"].as_f64().expect("used");
            #[allow(clippy::cast_precision_loss)]
            let want = 100.0 * used / max as f64;
            let got = row["memory_percent"].as_f64().expect("percent");
            assert!((got - want).abs() < 0.05, "{got} vs {want}");
        }
    }
    let slow = row["slowlog"].as_array().expect("slowlog");
    let ours = slow
        .iter()
        .find(|e| e["command"] == "EVAL" && e["key"].as_str() == Some(script))
        .unwrap_or_else(|| panic!("our EVAL in the slow log: {slow:?}"));
    assert!(ours["duration_us"].as_i64().expect("us") > 10_000, "{ours}");
    // Only the command and its first argument; never the rest.
    assert_eq!(ours["arguments"], 2);
    let text: Vec<&str> = report.findings.iter().map(|f| f.text.as_str()).collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("Redis slow log:") && t.contains("EVAL")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.starts_with("Redis cache: hit ratio")),
        "{text:?}"
    );

    let keys: Vec<String> = (0..5).map(|i| format!("{prefix}:{i}")).collect();
    let mut del = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    assert_eq!(raw(&mut conn, &del).await, ":5\r\n");
}

/// A fake Redis: records each command (as its words) and answers from
/// `answer`; the connection ends on QUIT.
async fn fake_redis(answer: fn(&[String]) -> String) -> (String, Arc<Mutex<Vec<Vec<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let mut stream = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let n: usize = line.trim().trim_start_matches('*').parse().unwrap_or(0);
            let mut words = Vec::new();
            for _ in 0..n {
                let mut len = String::new();
                stream.read_line(&mut len).await.expect("len");
                let len: usize = len.trim().trim_start_matches('$').parse().expect("len");
                let mut word = vec![0; len + 2];
                stream.read_exact(&mut word).await.expect("word");
                word.truncate(len);
                words.push(String::from_utf8_lossy(&word).into_owned());
            }
            record.lock().expect("lock").push(words.clone());
            let reply = answer(&words);
            stream
                .get_mut()
                .write_all(reply.as_bytes())
                .await
                .expect("reply");
            if words.first().is_some_and(|w| w == "QUIT") {
                return;
            }
        }
    });
    (format!("127.0.0.1:{}", addr.port()), seen)
}

fn managed_redis(words: &[String]) -> String {
    let info = "# Server\r\nredis_version:7.2.4\r\n# Memory\r\nused_memory:950\r\nused_memory_human:950B\r\nmaxmemory:1000\r\nmaxmemory_human:1000B\r\nmaxmemory_policy:allkeys-lru\r\n# Stats\r\nkeyspace_hits:30\r\nkeyspace_misses:70\r\nevicted_keys:12\r\n";
    match words.first().map(String::as_str) {
        Some("AUTH" | "SELECT" | "QUIT") => "+OK\r\n".into(),
        Some("INFO") => format!("${}\r\n{info}\r\n", info.len()),
        Some("DBSIZE") => ":42\r\n".into(),
        // A managed Redis that renamed CONFIG away.
        Some("CONFIG") => "-ERR unknown command 'CONFIG'\r\n".into(),
        Some("SLOWLOG") if words.get(1).is_some_and(|w| w == "LEN") => ":1\r\n".into(),
        Some("SLOWLOG") => "*1\r\n*6\r\n:7\r\n:1700000000\r\n:25000\r\n*3\r\n$4\r\nHSET\r\n$8\r\nsession1\r\n$6\r\nsecret\r\n$15\r\n127.0.0.1:50000\r\n$0\r\n\r\n".into(),
        _ => "-ERR unexpected\r\n".into(),
    }
}

#[tokio::test]
async fn only_read_only_commands_are_sent_and_a_refused_config_falls_back_to_info() {
    let (addr, seen) = fake_redis(managed_redis).await;
    let target = RedisTarget::parse(&format!("redis://app:pw@{addr}/2")).expect("url");
    let out = diagnose(&target, 5, Duration::from_secs(5))
        .await
        .expect("step");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        [
            vec!["AUTH", "app", "pw"],
            vec!["SELECT", "2"],
            vec!["INFO"],
            vec!["DBSIZE"],
            vec!["CONFIG", "GET", "maxmemory*"],
            vec!["SLOWLOG", "LEN"],
            vec!["SLOWLOG", "GET", "5"],
            vec!["QUIT"],
        ]
    );
    let row = &out.rows[0];
    assert_eq!(out.value, Some(30.0));
    assert_eq!(row["maxmemory"], 1000);
    assert_eq!(row["maxmemory_policy"], "allkeys-lru");
    assert_eq!(row["memory_percent"], 95.0);
    assert_eq!(row["evicted_keys"], 12);
    assert_eq!(row["dbsize"], 42);
    assert_eq!(row["slowlog"][0]["command"], "HSET");
    assert_eq!(row["slowlog"][0]["key"], "session1");
    assert!(!row.values().any(|v| v.to_string().contains("secret")));
}

#[tokio::test]
async fn a_refused_auth_fails_the_step_with_redis_words_and_no_password() {
    fn refuse(words: &[String]) -> String {
        match words.first().map(String::as_str) {
            Some("AUTH") => "-WRONGPASS invalid username-password pair\r\n".into(),
            _ => "+OK\r\n".into(),
        }
    }
    let (addr, _) = fake_redis(refuse).await;
    let target = RedisTarget::parse(&format!("redis://:hunter2@{addr}")).expect("url");
    let err = diagnose(&target, 5, Duration::from_secs(5))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("AUTH: WRONGPASS"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn a_bad_redis_url_in_the_settings_names_the_field() {
    let err = remedy::config::Settings::load_from(
        None,
        [
            ("REMEDY__STORE__URL", "sqlite::memory:"),
            ("REMEDY__INTAKE__ALLOW_UNAUTHENTICATED", "true"),
            ("REMEDY__REDIS__CACHE__URL", "rediss://cache.internal"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("redis.cache.url") && text.contains("TLS"),
        "{text}"
    );
}

//! Templates and expressions (minijinja) for message text and for values
//! that are then bound as SQL parameters or passed as argv elements — never
//! spliced into SQL or a shell. The `promql` filter quotes a value as a
//! PromQL string literal, so label values cannot change a query's shape.

use minijinja::{Environment, UndefinedBehavior, Value};

/// The environment every playbook template is rendered in.
#[must_use]
pub fn environment<'s>() -> Environment<'s> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.add_filter("promql", promql_quote);
    env.add_filter("duration", human_duration);
    env
}

/// `"a\"b"` style quoting for PromQL string literals.
fn promql_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Seconds as people say them: `90` → `1m30s`.
fn human_duration(seconds: Value) -> String {
    let secs = f64::try_from(seconds).unwrap_or(0.0).max(0.0);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to >= 0, rounded"
    )]
    let secs = secs.round() as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs))
        .to_string()
        .replace(' ', "")
}

/// Where an `http` step's or action's URL gets its scheme, host and port:
/// the probe it starts with, or the playbook's own literal text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlBase {
    /// `{{ probes.NAME }}…`: pinned to that probe's base URL.
    Probe(String),
    /// `https://host:port/…{{ … }}`: pinned to the literal text before the
    /// first template.
    Literal(String),
    /// No template at all: nothing from an alert can change it.
    Fixed,
}

/// Which base pins `source`'s origin.
///
/// # Errors
/// When a template could supply the scheme, host or port: the URL must
/// start with `{{ probes.NAME }}` or spell out `scheme://host[:port]/`
/// before its first template.
pub fn url_base(source: &str) -> Result<UrlBase, String> {
    static PROBE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^\{\{-?\s*probes\.([A-Za-z_][A-Za-z0-9_]*)\s*-?\}\}")
            .expect("valid regex")
    });
    let source = source.trim_start();
    if let Some(c) = PROBE.captures(source) {
        return Ok(UrlBase::Probe(c[1].to_owned()));
    }
    let Some(first) = source.find("{{").into_iter().chain(source.find("{%")).min() else {
        return Ok(UrlBase::Fixed);
    };
    let literal = &source[..first];
    let authority_closed = literal
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains(['/', '?', '#']));
    if authority_closed && reqwest::Url::parse(literal).is_ok_and(|u| u.has_host()) {
        Ok(UrlBase::Literal(literal.to_owned()))
    } else {
        Err("the scheme, host and port must come from `{{ probes.NAME }}` at the start or be written out (`https://host:port/…`) before the first template".into())
    }
}

/// Renders an `http` URL template: every interpolated value is
/// percent-encoded as one path segment or query value (so `/`, `@`, `?`,
/// `#`, `:` in a label cannot change the URL's structure, and a bare `.`
/// or `..` is refused), `probes.NAME` is inserted as it is configured, and
/// the result must keep its base's scheme, host and port.
///
/// # Errors
/// A template error, an unconfigured probe, an unpinnable URL ([`url_base`])
/// or a rendered URL that leaves its base's origin, each with the URL's
/// template named.
pub fn render_url(
    source: &str,
    data: &serde_json::Value,
    probes: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    let named = |e: String| format!("url `{}`: {e}", first_line(source));
    let base = match url_base(source).map_err(named)? {
        UrlBase::Probe(name) => Some(
            probes
                .get(&name)
                .ok_or_else(|| named(format!("probe `{name}` is not configured ([probes])")))?
                .clone(),
        ),
        UrlBase::Literal(literal) => Some(literal),
        UrlBase::Fixed => None,
    };
    let mut env = environment();
    env.set_formatter(percent_encoding_formatter);
    // The bases are the operator's settings, inserted as they are (safe
    // strings); everything else in `data` is encoded. (`merge_maps` with a
    // second `probes` would not do: its serialisation keeps the first.)
    let mut data = data.clone();
    if let Some(map) = data.as_object_mut() {
        map.remove("probes");
    }
    let safe_probes = Value::from_pairs(
        probes
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from_safe_string(v.clone()))),
    );
    let ctx = minijinja::value::merge_maps([
        context(&data),
        Value::from_pairs([("probes", safe_probes)]),
    ]);
    let rendered = env
        .render_str(source, ctx)
        .map_err(|e| named(e.to_string()))?;
    let url = reqwest::Url::parse(&rendered)
        .map_err(|e| named(format!("renders to `{rendered}`, not a URL: {e}")))?;
    if let Some(base) = base {
        let base = reqwest::Url::parse(&base)
            .map_err(|e| named(format!("base `{base}` is not a URL: {e}")))?;
        if url.origin() != base.origin() {
            return Err(named(format!(
                "renders to `{rendered}`, whose scheme, host or port differs from its base `{}`; refused",
                base.origin().ascii_serialization()
            )));
        }
    }
    Ok(rendered)
}

/// Writes probe bases (safe strings) as they are and every other value
/// percent-encoded; refuses a value that is a dot segment.
fn percent_encoding_formatter(
    out: &mut minijinja::Output,
    _state: &mut minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    use std::fmt::Write as _;
    if value.is_undefined() {
        return Ok(());
    }
    let text = value.to_string();
    if value.is_safe() {
        return out.write_str(&text).map_err(minijinja::Error::from);
    }
    if text == "." || text == ".." {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("the value `{text}` would change the URL's path"),
        ));
    }
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.write_char(char::from(byte))
                .map_err(minijinja::Error::from)?;
        } else {
            write!(out, "%{byte:02X}").map_err(minijinja::Error::from)?;
        }
    }
    Ok(())
}

/// Renders a template, turning errors into text that names the template.
pub fn render(env: &Environment<'_>, source: &str, ctx: &Value) -> Result<String, String> {
    env.render_str(source, ctx)
        .map_err(|e| format!("template `{}`: {e}", first_line(source)))
}

/// Evaluates an expression to a truth value.
pub fn truthy(env: &Environment<'_>, expression: &str, ctx: &Value) -> Result<bool, String> {
    env.compile_expression_owned(expression.to_owned())
        .and_then(|e| e.eval(ctx.clone()))
        .map(|v| v.is_true())
        .map_err(|e| format!("expression `{expression}`: {e}"))
}

/// Checks a template's syntax.
/// Which of the steps `ids` an expression reads (`steps.ID…`); all of
/// them when it reads `steps` as a whole, none when it does not compile.
#[must_use]
pub fn steps_read(expression: &str, ids: &[String]) -> Vec<String> {
    let env = environment();
    let Ok(compiled) = env.compile_expression(expression) else {
        return Vec::new();
    };
    let read = compiled.undeclared_variables(true);
    if read.contains("steps") {
        return ids.to_vec();
    }
    ids.iter()
        .filter(|id| {
            read.iter().any(|path| {
                path.strip_prefix("steps.")
                    .is_some_and(|rest| rest.split('.').next() == Some(id.as_str()))
            })
        })
        .cloned()
        .collect()
}

pub fn check_template(source: &str) -> Result<(), String> {
    environment()
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Checks an expression's syntax.
pub fn check_expression(source: &str) -> Result<(), String> {
    environment()
        .compile_expression(source)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A serialisable value as a template context.
pub fn context<T: serde::Serialize>(value: &T) -> Value {
    Value::from(minijinja::value::Serde(value))
}

fn first_line(source: &str) -> &str {
    let line = source.lines().next().unwrap_or_default();
    line.get(..60).unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_filter_quotes_hostile_label_values() {
        let env = environment();
        let ctx = minijinja::context! { labels => minijinja::context! { instance => "a\"} or vector(1) # \\" } };
        let out = render(
            &env,
            "up{instance={{ labels.instance | promql }}}",
            &Value::from(minijinja::value::Serde(&ctx)),
        )
        .expect("renders");
        assert_eq!(out, r#"up{instance="a\"} or vector(1) # \\"}"#);
    }

    fn probes() -> std::collections::BTreeMap<String, String> {
        [
            ("pms".to_owned(), "http://pms.internal:8080".to_owned()),
            ("bare".to_owned(), "http://pms.internal".to_owned()),
        ]
        .into()
    }

    fn url(source: &str, label: &str) -> Result<String, String> {
        // As plan() builds it: the probes are in the context as plain data.
        let data = serde_json::json!({"labels": {"x": label}, "probes": probes()});
        render_url(source, &data, &probes())
    }

    #[test]
    fn url_values_are_percent_encoded_into_path_and_query() {
        assert_eq!(
            url("{{ probes.pms }}/api/{{ labels.x }}?q={{ labels.x }}", "@169.254.169.254/../a b?c#d"),
            Ok("http://pms.internal:8080/api/%40169.254.169.254%2F..%2Fa%20b%3Fc%23d?q=%40169.254.169.254%2F..%2Fa%20b%3Fc%23d".to_owned())
        );
        assert_eq!(
            url("{{ probes.pms }}/health", "").as_deref(),
            Ok("http://pms.internal:8080/health")
        );
    }

    #[test]
    fn a_url_that_leaves_its_probe_is_refused() {
        let err =
            url("{{ probes.bare }}{{ labels.x }}/health", ".evil.example").expect_err("refused");
        assert!(
            err.contains("differs from its base `http://pms.internal`"),
            "{err}"
        );
        let err =
            url("{{ probes.pms }}{{ labels.x }}/health", ".evil.example").expect_err("refused");
        assert!(err.contains("not a URL"), "{err}");
        let err = url("{{ probes.pms }}/{{ labels.x }}/health", "..").expect_err("refused");
        assert!(err.contains("would change the URL's path"), "{err}");
        let err = url("http://{{ labels.x }}/health", "evil").expect_err("refused");
        assert!(err.contains("must come from `{{ probes.NAME }}`"), "{err}");
        assert_eq!(
            url("http://fixed.example:81/a/{{ labels.x }}", "b").as_deref(),
            Ok("http://fixed.example:81/a/b")
        );
        let err = url("{{ probes.nope }}/x", "b").expect_err("unknown probe");
        assert!(err.contains("probe `nope` is not configured"), "{err}");
    }

    #[test]
    fn duration_filter_reads_like_a_person() {
        let env = environment();
        assert_eq!(
            render(&env, "{{ 630 | duration }}", &Value::UNDEFINED).expect("renders"),
            "10m30s"
        );
    }

    #[test]
    fn expressions_over_missing_steps_are_false_not_errors() {
        let env = environment();
        assert!(
            !truthy(
                &env,
                "steps.nothing.rows | length > 0",
                &minijinja::context! {}
            )
            .unwrap_or(true)
        );
    }
}

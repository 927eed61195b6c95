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

//! Alertmanager label matchers (`name="value"`, `!=`, `=~`, `!~`), as written in
//! routes, silences and amtool: parsing with character-indexed errors, matching
//! against a label set (an absent label matches as the empty string, regexes are
//! fully anchored), and a canonical `Display` form that parses back to the same
//! matcher.

use std::fmt;

use regex::Regex;

/// A label set, as carried by an alert.
pub type Labels = std::collections::BTreeMap<String, String>;

/// The four matcher operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            Self::Equal => "=",
            Self::NotEqual => "!=",
            Self::Regex => "=~",
            Self::NotRegex => "!~",
        }
    }
}

/// One parsed matcher. For `Regex`/`NotRegex`, `value` holds the regex as
/// written; it is applied fully anchored (`^(?:value)$`).
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

/// A parse error; `position` is the 0-based character (not byte) index in the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {position})")]
pub struct MatcherError {
    pub message: String,
    pub position: usize,
}

const NAME_RULE: &str = "label names match [a-zA-Z_][a-zA-Z0-9_]*";

impl Matcher {
    /// Parses exactly one matcher, `name op value`, with optional surrounding whitespace.
    ///
    /// # Errors
    /// On a bad name, missing operator, malformed value, invalid regex or trailing input.
    pub fn parse(input: &str) -> Result<Self, MatcherError> {
        let mut p = Parser::new(input);
        p.skip_ws();
        let m = p.matcher()?;
        p.skip_ws();
        match p.peek() {
            None => Ok(m),
            Some(c) => p.fail(
                p.pos,
                format!("unexpected {c:?} after matcher: expected end of input"),
            ),
        }
    }

    /// Whether the label set satisfies this matcher; an absent label is the empty string.
    #[must_use]
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.name).map_or("", String::as_str);
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(value),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(value),
            // Unreachable: regex operators are only constructed with a compiled regex.
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }

    /// Builds a matcher, compiling the anchored regex for regex operators.
    /// `at` is where the value starts, for error reporting.
    fn build(name: String, op: MatchOp, value: String, at: usize) -> Result<Self, MatcherError> {
        let regex = match op {
            MatchOp::Equal | MatchOp::NotEqual => None,
            MatchOp::Regex | MatchOp::NotRegex => {
                // Compile the regex on its own first: it must be well-formed by
                // itself, so that e.g. `a)|(?:b` cannot break out of the anchoring group.
                let anchored =
                    Regex::new(&value).and_then(|_| Regex::new(&format!("^(?:{value})$")));
                match anchored {
                    Ok(re) => Some(re),
                    Err(e) => {
                        return Err(MatcherError {
                            message: format!(
                                "invalid regular expression {value:?}: {}",
                                regex_error_text(&e)
                            ),
                            position: at,
                        });
                    }
                }
            }
        };
        Ok(Self {
            name,
            op,
            value,
            regex,
        })
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"", self.name, self.op.as_str())?;
        for c in self.value.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                other => fmt::Write::write_char(f, other)?,
            }
        }
        f.write_str("\"")
    }
}

/// Parses a comma-separated list of matchers, optionally wrapped in `{ }`.
/// A trailing comma is allowed; `{}` and the empty string give an empty list.
///
/// # Errors
/// On any malformed matcher, a missing separator, an unclosed `{` or trailing input.
pub fn parse_matchers(input: &str) -> Result<Vec<Matcher>, MatcherError> {
    let mut p = Parser::new(input);
    p.skip_ws();
    let braced = p.peek() == Some('{');
    if braced {
        p.bump();
    }
    let mut out = Vec::new();
    loop {
        p.skip_ws();
        match p.peek() {
            None => break,
            Some('}') if braced => break,
            _ => {}
        }
        out.push(p.matcher()?);
        p.skip_ws();
        match p.peek() {
            Some(',') => p.bump(),
            Some('}') if braced => break,
            None => break,
            Some(c) => {
                let expected = if braced {
                    "',' or '}'"
                } else {
                    "',' or end of input"
                };
                return p.fail(
                    p.pos,
                    format!("unexpected {c:?} after matcher: expected {expected}"),
                );
            }
        }
    }
    if braced {
        if p.peek() != Some('}') {
            return p.fail(p.pos, "unclosed '{': expected '}', found end of input");
        }
        p.bump();
        p.skip_ws();
        if let Some(c) = p.peek() {
            return p.fail(
                p.pos,
                format!("unexpected {c:?} after closing '}}': expected end of input"),
            );
        }
    }
    Ok(out)
}

/// Whether every matcher matches the label set (true for an empty list).
#[must_use]
pub fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// The one-line cause from a `regex` error (syntax errors render over several lines).
fn regex_error_text(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

fn describe(c: Option<char>) -> String {
    c.map_or_else(|| "end of input".to_owned(), |c| format!("{c:?}"))
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_unquoted_value_char(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, ',' | '{' | '}' | '"'))
}

/// A cursor over the input's characters; positions are character indices.
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn new(input: &str) -> Self {
        Self {
            chars: input.chars().collect(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) {
        self.pos += 1;
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    #[allow(clippy::unused_self)] // keeps call sites uniform: `p.fail(p.pos, ..)`
    fn fail<T>(&self, position: usize, message: impl Into<String>) -> Result<T, MatcherError> {
        Err(MatcherError {
            message: message.into(),
            position,
        })
    }

    /// `name op value`, starting at a non-whitespace character.
    fn matcher(&mut self) -> Result<Matcher, MatcherError> {
        let name = self.name()?;
        self.skip_ws();
        let op = self.op(&name)?;
        self.skip_ws();
        let at = self.pos;
        let value = self.value()?;
        Matcher::build(name, op, value, at)
    }

    fn name(&mut self) -> Result<String, MatcherError> {
        let start = self.pos;
        match self.peek() {
            Some(c) if is_name_start(c) => {}
            Some('=' | '!') => {
                return self.fail(
                    start,
                    "empty label name: expected a label name before the operator",
                );
            }
            None | Some(',' | '}') => {
                return self.fail(
                    start,
                    format!(
                        "empty label name: expected a label name, found {}",
                        describe(self.peek())
                    ),
                );
            }
            Some(c) => {
                return self.fail(
                    start,
                    format!(
                        "invalid label name: expected a letter or '_', found {c:?} ({NAME_RULE})"
                    ),
                );
            }
        }
        while self.peek().is_some_and(is_name_char) {
            self.bump();
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        if let Some(c) = self.peek()
            && !c.is_whitespace()
            && !matches!(c, '=' | '!' | '~' | ',' | '{' | '}' | '"')
        {
            return self.fail(
                self.pos,
                format!("invalid character {c:?} in label name {name:?} ({NAME_RULE})"),
            );
        }
        Ok(name)
    }

    fn op(&mut self, name: &str) -> Result<MatchOp, MatcherError> {
        let at = self.pos;
        match self.peek() {
            Some('=') => {
                self.bump();
                if self.peek() == Some('~') {
                    self.bump();
                    Ok(MatchOp::Regex)
                } else {
                    Ok(MatchOp::Equal)
                }
            }
            Some('!') => {
                self.bump();
                match self.peek() {
                    Some('=') => {
                        self.bump();
                        Ok(MatchOp::NotEqual)
                    }
                    Some('~') => {
                        self.bump();
                        Ok(MatchOp::NotRegex)
                    }
                    other => self.fail(self.pos, format!("incomplete operator: expected '=' or '~' after '!', found {}", describe(other))),
                }
            }
            other => self.fail(
                at,
                format!("missing operator: expected =, !=, =~ or !~ after label name {name:?}, found {}", describe(other)),
            ),
        }
    }

    /// A double-quoted value with `\"`, `\\`, `\n` escapes, or an unquoted run of
    /// characters other than whitespace, `,`, `{`, `}` and `"` (possibly empty).
    fn value(&mut self) -> Result<String, MatcherError> {
        let start = self.pos;
        if self.peek() != Some('"') {
            while self.peek().is_some_and(is_unquoted_value_char) {
                self.bump();
            }
            return Ok(self.chars[start..self.pos].iter().collect());
        }
        self.bump();
        let mut value = String::new();
        loop {
            let at = self.pos;
            match self.peek() {
                None => {
                    return self.fail(start, "unterminated quoted value: expected a closing '\"'");
                }
                Some('"') => {
                    self.bump();
                    return Ok(value);
                }
                Some('\\') => {
                    self.bump();
                    match self.peek() {
                        Some('"') => value.push('"'),
                        Some('\\') => value.push('\\'),
                        Some('n') => value.push('\n'),
                        None => {
                            return self
                                .fail(start, "unterminated quoted value: expected a closing '\"'");
                        }
                        Some(c) => {
                            return self.fail(
                                at,
                                format!(
                                    "invalid escape sequence \"\\{c}\": expected \\\", \\\\ or \\n"
                                ),
                            );
                        }
                    }
                    self.bump();
                }
                Some(c) => {
                    value.push(c);
                    self.bump();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn m(input: &str) -> Matcher {
        Matcher::parse(input).expect("parses")
    }

    fn err(input: &str) -> MatcherError {
        parse_matchers(input).expect_err("is rejected")
    }

    #[test]
    fn equal_matches_only_the_exact_value() {
        let x = m(r#"severity="critical""#);
        assert_eq!(
            (x.name.as_str(), x.op, x.value.as_str()),
            ("severity", MatchOp::Equal, "critical")
        );
        assert!(x.matches(&labels(&[("severity", "critical")])));
        assert!(!x.matches(&labels(&[("severity", "critical2")])));
        assert!(!x.matches(&labels(&[("severity", "Critical")])));
    }

    #[test]
    fn not_equal_rejects_the_exact_value() {
        let x = m(r#"env!="prod""#);
        assert_eq!(x.op, MatchOp::NotEqual);
        assert!(!x.matches(&labels(&[("env", "prod")])));
        assert!(x.matches(&labels(&[("env", "staging")])));
        assert!(x.matches(&labels(&[])));
    }

    #[test]
    fn regex_matches_any_alternative() {
        let x = m(r#"severity=~"critical|warning""#);
        assert_eq!(x.op, MatchOp::Regex);
        assert!(x.matches(&labels(&[("severity", "critical")])));
        assert!(x.matches(&labels(&[("severity", "warning")])));
        assert!(!x.matches(&labels(&[("severity", "info")])));
    }

    #[test]
    fn not_regex_rejects_matching_values() {
        let x = m(r#"instance!~"db-.*""#);
        assert_eq!(x.op, MatchOp::NotRegex);
        assert!(!x.matches(&labels(&[("instance", "db-1")])));
        assert!(x.matches(&labels(&[("instance", "web-1")])));
        assert!(x.matches(&labels(&[("instance", "my-db-1")])));
    }

    #[test]
    fn regex_is_anchored_at_both_ends() {
        let alert = labels(&[("alertname", "DatabaseIdleInTransaction")]);
        assert!(m(r#"alertname=~"Database.*""#).matches(&alert));
        assert!(!m(r#"alertname=~"Idle""#).matches(&alert));
        assert!(!m(r#"alertname=~"Database""#).matches(&alert));
        assert!(m(r#"alertname!~"Idle""#).matches(&alert));
    }

    #[test]
    fn alternation_is_anchored_as_a_whole() {
        let x = m(r#"job=~"a|b""#);
        assert!(!x.matches(&labels(&[("job", "ab")])));
        assert!(!x.matches(&labels(&[("job", "xa")])));
        assert!(!x.matches(&labels(&[("job", "bx")])));
    }

    #[test]
    fn regex_cannot_break_out_of_its_anchoring_group() {
        let e = Matcher::parse(r#"job=~"a)|(?:b""#).expect_err("is rejected");
        assert_eq!(e.position, 5);
        assert!(e.message.starts_with("invalid regular expression"), "{e}");
    }

    #[test]
    fn missing_label_matches_as_the_empty_string() {
        let none = labels(&[]);
        assert!(m(r#"foo="""#).matches(&none));
        assert!(m(r#"foo=~".*""#).matches(&none));
        assert!(!m(r#"foo=~".+""#).matches(&none));
        assert!(!m(r#"foo="bar""#).matches(&none));
        assert!(m(r#"foo!~".+""#).matches(&none));
    }

    #[test]
    fn not_equal_empty_requires_the_label_to_be_present() {
        let x = m(r#"foo!="""#);
        assert!(!x.matches(&labels(&[])));
        assert!(!x.matches(&labels(&[("foo", "")])));
        assert!(x.matches(&labels(&[("foo", "bar")])));
    }

    #[test]
    fn quoted_value_unescapes_quotes_backslashes_and_newlines() {
        let x = m(r#"msg="say \"hi\" \\ now\nplease""#);
        assert_eq!(x.value, "say \"hi\" \\ now\nplease");
    }

    #[test]
    fn commas_and_braces_inside_quotes_do_not_split_the_list() {
        let list = parse_matchers(r#"{summary="a, b}", team="x\",y"}"#).expect("parses");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].value, "a, b}");
        assert_eq!(list[1].name, "team");
        assert_eq!(list[1].value, "x\",y");
    }

    #[test]
    fn braces_and_trailing_comma_are_accepted() {
        let list =
            parse_matchers(r#"{alertname="X", severity=~"critical|warning",}"#).expect("parses");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "alertname");
        assert_eq!(list[1].op, MatchOp::Regex);
        let bare =
            parse_matchers(r#"alertname="X", severity=~"critical|warning","#).expect("parses");
        assert_eq!(bare.len(), 2);
    }

    #[test]
    fn empty_braces_and_empty_input_give_an_empty_list() {
        assert!(parse_matchers("{}").expect("parses").is_empty());
        assert!(parse_matchers("  {  }  ").expect("parses").is_empty());
        assert!(parse_matchers("").expect("parses").is_empty());
    }

    #[test]
    fn whitespace_around_tokens_is_ignored() {
        let list = parse_matchers(" {  alertname = \"X\" ,\n severity =~ \"crit.*\" , } ")
            .expect("parses");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].to_string(), r#"alertname="X""#);
        assert_eq!(list[1].to_string(), r#"severity=~"crit.*""#);
        assert_eq!(m("  env != prod  ").value, "prod");
    }

    #[test]
    fn unquoted_values_are_accepted() {
        let list = parse_matchers("{alertname=DiskFull, instance=~db-[0-9]+:9100, env!=}")
            .expect("parses");
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].value, "DiskFull");
        assert_eq!(list[1].value, "db-[0-9]+:9100");
        assert_eq!(
            (list[2].op, list[2].value.as_str()),
            (MatchOp::NotEqual, "")
        );
        assert!(list[1].matches(&labels(&[("instance", "db-12:9100")])));
        assert_eq!(m(r"path=C:\tmp").value, r"C:\tmp");
    }

    #[test]
    fn matches_all_requires_every_matcher() {
        let list =
            parse_matchers(r#"{alertname="X", severity=~"critical|warning"}"#).expect("parses");
        assert!(matches_all(
            &list,
            &labels(&[("alertname", "X"), ("severity", "warning")])
        ));
        assert!(!matches_all(
            &list,
            &labels(&[("alertname", "X"), ("severity", "info")])
        ));
        assert!(!matches_all(&list, &labels(&[("severity", "critical")])));
        assert!(matches_all(&[], &labels(&[])));
    }

    #[test]
    fn missing_operator_is_reported_after_the_name() {
        let e = err(r#"alertname "X""#);
        assert_eq!(e.position, 10);
        assert!(
            e.message
                .contains("missing operator: expected =, !=, =~ or !~"),
            "{e}"
        );
        assert_eq!(err("{alertname}").position, 10);
        assert_eq!(Matcher::parse("foo").expect_err("is rejected").position, 3);
        assert_eq!(
            Matcher::parse(r#"foo~"x""#)
                .expect_err("is rejected")
                .position,
            3
        );
    }

    #[test]
    fn bang_without_equals_or_tilde_is_an_incomplete_operator() {
        let e = err(r#"foo!"x""#);
        assert_eq!(e.position, 4);
        assert!(e.message.contains("expected '=' or '~' after '!'"), "{e}");
    }

    #[test]
    fn unterminated_quote_points_at_the_opening_quote() {
        let e = err(r#"{a="1", summary="oops}"#);
        assert_eq!(e.position, 16);
        assert!(e.message.contains("unterminated quoted value"), "{e}");
        assert_eq!(err(r#"a="x\"#).position, 2);
    }

    #[test]
    fn bad_escape_points_at_the_backslash() {
        let e = err(r#"a="x\ty""#);
        assert_eq!(e.position, 4);
        assert!(e.message.contains(r#"invalid escape sequence "\t""#), "{e}");
    }

    #[test]
    fn invalid_regex_reports_the_regex_error_at_the_value() {
        let e = err(r#"{a="1", job=~"(abc"}"#);
        assert_eq!(e.position, 13);
        assert!(
            e.message
                .starts_with(r#"invalid regular expression "(abc": "#),
            "{e}"
        );
        assert!(e.message.contains("unclosed group"), "{e}");
        assert!(!e.message.contains('\n'), "{e}");
    }

    #[test]
    fn empty_name_is_rejected() {
        let e = err(r#"="x""#);
        assert_eq!(e.position, 0);
        assert!(e.message.contains("empty label name"), "{e}");
        assert_eq!(err(r#"{a="1",  !="x"}"#).position, 9);
        let e = err(r#"a="1",,b="2""#);
        assert_eq!(e.position, 6);
        assert!(e.message.contains("empty label name"), "{e}");
    }

    #[test]
    fn name_starting_with_a_digit_is_rejected() {
        let e = err(r#"1abc="x""#);
        assert_eq!(e.position, 0);
        assert!(e.message.contains("[a-zA-Z_][a-zA-Z0-9_]*"), "{e}");
    }

    #[test]
    fn invalid_character_in_name_is_rejected_where_it_occurs() {
        let e = err(r#"team-name="x""#);
        assert_eq!(e.position, 4);
        assert!(
            e.message
                .contains(r#"invalid character '-' in label name "team""#),
            "{e}"
        );
        assert_eq!(err(r#"häst="x""#).position, 1);
    }

    #[test]
    fn trailing_garbage_after_a_single_matcher_is_rejected() {
        let e = Matcher::parse(r#"a="1" b"#).expect_err("is rejected");
        assert_eq!(e.position, 6);
        assert!(e.message.contains("expected end of input"), "{e}");
        assert_eq!(
            Matcher::parse(r#"a="1","#)
                .expect_err("is rejected")
                .position,
            5
        );
    }

    #[test]
    fn garbage_between_matchers_is_rejected() {
        let e = err(r#"a="1" b="2""#);
        assert_eq!(e.position, 6);
        assert!(e.message.contains("expected ',' or end of input"), "{e}");
        let e = err(r#"{a="1" b="2"}"#);
        assert_eq!(e.position, 7);
        assert!(e.message.contains("expected ',' or '}'"), "{e}");
        assert_eq!(err(r#"a=x"y""#).position, 3);
    }

    #[test]
    fn garbage_after_the_closing_brace_is_rejected() {
        let e = err(r#"{a="1"} x"#);
        assert_eq!(e.position, 8);
        assert!(e.message.contains("after closing '}'"), "{e}");
    }

    #[test]
    fn unclosed_brace_is_rejected_at_the_end() {
        let e = err(r#"{a="1","#);
        assert_eq!(e.position, 7);
        assert!(e.message.contains("expected '}'"), "{e}");
        assert_eq!(err(r#"{a="1""#).position, 6);
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let e = err(r#"{a="héllo", b="ü\q"}"#);
        assert_eq!(e.position, 16);
    }

    #[test]
    fn error_display_includes_the_position() {
        let e = err("{a}");
        assert_eq!(
            e.to_string(),
            "missing operator: expected =, !=, =~ or !~ after label name \"a\", found '}' (at character 2)"
        );
    }

    #[test]
    fn display_uses_the_canonical_quoted_form() {
        assert_eq!(
            m("severity =~ critical|warning").to_string(),
            r#"severity=~"critical|warning""#
        );
        assert_eq!(m("a!=b").to_string(), r#"a!="b""#);
        assert_eq!(m("a!~b").to_string(), r#"a!~"b""#);
        assert_eq!(m(r#"a="q\"b\\s\nn""#).to_string(), r#"a="q\"b\\s\nn""#);
    }

    #[test]
    fn display_round_trips_through_parse() {
        for input in [
            r#"alertname="DatabaseIdleInTransaction""#,
            r#"severity=~"critical|warning""#,
            r#"env!="""#,
            r#"path!~"C:\\tmp\\.*""#,
            r#"msg="say \"hi\",\nthen {leave}""#,
            "unquoted=a\\b",
            r#"x="tab	and ünïcode""#,
        ] {
            let original = m(input);
            let again = m(&original.to_string());
            assert_eq!(again.name, original.name, "{input}");
            assert_eq!(again.op, original.op, "{input}");
            assert_eq!(again.value, original.value, "{input}");
            let listed = parse_matchers(&format!("{{{original}}}")).expect("parses");
            assert_eq!(listed[0].value, original.value, "{input}");
        }
    }
}

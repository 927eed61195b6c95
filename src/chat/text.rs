//! Text safety for chat: escaping alert values for Slack mrkdwn and Discord
//! markdown, defusing broadcast mentions, and cutting to platform limits.

/// Zero-width space: placed after `@` so `@everyone` is shown, not sent.
const ZWSP: char = '\u{200B}';

/// Breaks `@here`, `@channel` and `@everyone` (any case) so no client
/// treats them as a mention.
#[must_use]
pub fn defuse_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let lower = rest.get(..8).unwrap_or(rest).to_ascii_lowercase();
        if ["here", "channel", "everyone"]
            .iter()
            .any(|m| lower.starts_with(m))
        {
            out.push(ZWSP);
        }
    }
    out.push_str(rest);
    out
}

/// Removes what no chat client or terminal should receive from alert text:
/// ANSI/terminal escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL`
/// or `ESC \\`, two-byte `ESC x`), the other C0/C1 control characters
/// except the newline (a tab becomes a space), and the bidirectional
/// overrides and isolates (U+202A–U+202E, U+2066–U+2069) that reorder
/// what a reader sees.
#[must_use]
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte.
                Some('[') => {
                    for n in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&n) {
                            break;
                        }
                    }
                }
                // OSC, DCS, SOS, PM, APC: up to BEL or ST (ESC \\).
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(n) = chars.next() {
                        if n == '\u{7}' || n == '\u{9c}' {
                            break;
                        }
                        if n == '\u{1b}' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' => out.push('\n'),
            '\t' => out.push(' '),
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// [`clean`], on one line: a newline shows as `⏎`, so alert text cannot
/// start a line of its own (a fake heading, quote or status line).
#[must_use]
pub fn one_line(text: &str) -> String {
    clean(text).replace('\n', " ⏎ ")
}

fn slack_entities(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Slack mrkdwn has no backslash escape, so alert text is made inert by
/// substitution: `&`, `<`, `>` become entities (no `<!here>`, `<@U…>` or
/// `<http…|link>` can be formed); the formatting characters become
/// look-alikes that Slack does not parse (`` ` `` → `ˋ`, `*` → `∗`,
/// `~` → `∼`, and `_` → `ˍ`, each only where it could open or close
/// formatting, so `pg_stat_activity` and `select * from` stay); broadcast words are defused
/// and control characters, escape sequences and bidi overrides removed.
#[must_use]
pub fn slack_escape(text: &str) -> String {
    let text = clean(text);
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    // A delimiter only formats next to a non-space character: `select *
    // from` and `pg_stat_activity` cannot open or close anything and keep
    // their characters.
    let at = |i: Option<usize>| i.and_then(|i| chars.get(i));
    let space = |c: Option<&char>| c.is_none_or(|c| c.is_whitespace());
    let word = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric());
    // A `>` that starts a line (even as `&gt;`) would open a quote.
    let mut line_start = true;
    for (i, &c) in chars.iter().enumerate() {
        let (before, after) = (at(i.checked_sub(1)), at(Some(i + 1)));
        let inert = space(before) && space(after);
        let starts = line_start;
        line_start = c == '\n' || (line_start && c.is_whitespace());
        match c {
            '>' if starts => out.push('›'),
            '`' => out.push('ˋ'),
            '*' if !inert => out.push('∗'),
            '~' if !inert => out.push('∼'),
            '_' if !(inert || word(before) && word(after)) => out.push('ˍ'),
            c => out.push(c),
        }
    }
    defuse_mentions(&slack_entities(&out))
}

/// Alert text inside a Slack ``` fence (already passed through [`code`]):
/// formatting does not apply, so only entities and mentions.
#[must_use]
pub fn slack_fence(text: &str) -> String {
    defuse_mentions(&slack_entities(text))
}

/// Alert text inside a Slack inline code span (`` `…` ``): formatting does
/// not apply there, only a backtick would end the span and a newline
/// would break it, so those become `ˋ` and `⏎`; entities, mentions and
/// control characters as in [`slack_escape`].
#[must_use]
pub fn slack_code_span(text: &str) -> String {
    defuse_mentions(&slack_entities(&one_line(text).replace('`', "ˋ")))
}

/// Alert text in a Slack `plain_text` object (a confirm dialog): no
/// formatting applies there, but `&`, `<`, `>` are still Slack's control
/// characters in every text object, so they become entities (shown as the
/// characters themselves); what [`one_line`] removes goes, and broadcast
/// words are defused.
#[must_use]
pub fn slack_plain(text: &str) -> String {
    defuse_mentions(&slack_entities(&one_line(text)))
}

/// Discord markdown: formatting characters are backslash-escaped, `<`
/// (mentions, `<@&role>`) too, and broadcast words defused.
#[must_use]
pub fn discord_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in clean(text).chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '<' | '#' | '[' | ']'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    defuse_mentions(&out)
}

/// Text inside a code block: every backtick is followed by a zero-width
/// space, so no run of them (three, four or more) can close the fence.
#[must_use]
pub fn code(text: &str) -> String {
    defuse_mentions(&clean(text).replace('`', "`\u{200B}"))
}

/// Alert text for a terminal: [`one_line`] (no escape sequences, control
/// characters, bidi overrides or line breaks) with broadcast words left
/// alone, since a terminal has no mentions.
#[must_use]
pub fn terminal(text: &str) -> String {
    one_line(text)
}

/// Cuts `text` to at most `max` characters, ending with `…` when cut.
#[must_use]
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_mentions_are_defused_in_any_case() {
        let out = defuse_mentions("ping @everyone and @Here, not @alice");
        assert!(!out.contains("@everyone"));
        assert!(!out.contains("@Here"));
        assert!(out.contains("@alice"));
    }

    #[test]
    fn slack_escape_blocks_special_mentions() {
        assert_eq!(
            slack_escape("<!channel> & <@U1>"),
            "&lt;!channel&gt; &amp; &lt;@U1&gt;"
        );
    }

    #[test]
    fn discord_escape_blocks_formatting_and_role_mentions() {
        assert_eq!(discord_escape("**x** <@&1>"), "\\*\\*x\\*\\* \\<@&1\\>");
    }

    #[test]
    fn no_backtick_run_survives_in_a_code_block() {
        for input in ["```", "````", "a`````b", "``"] {
            assert!(!code(input).contains("``"), "{input}");
        }
    }

    #[test]
    fn escape_sequences_and_overrides_are_removed() {
        let out = clean(
            "a\u{1b}[31mred\u{1b}[0m \u{1b}]8;;http://x\u{7}link\u{1b}]8;;\u{7} \u{202e}cba\r\u{7}b\u{9b}c",
        );
        assert_eq!(out, "ared link cbabc");
        assert_eq!(clean("x\u{1b}]0;title\u{1b}\\y"), "xy");
    }

    #[test]
    fn slack_escape_neutralises_formatting_but_keeps_identifiers() {
        assert_eq!(
            slack_escape("a` *approved* `_x_ ~s~ pg_stat"),
            "aˋ ∗approved∗ ˋˍxˍ ∼s∼ pg_stat"
        );
        assert_eq!(slack_escape("a > b\n> quote"), "a &gt; b\n› quote");
        assert_eq!(slack_code_span("a`b\nc<@U1>"), "aˋb ⏎ c&lt;@U1&gt;");
        assert_eq!(
            slack_plain("x=\"a`*b*\n<!here>\u{202e}\""),
            "x=\"a`*b* ⏎ &lt;!here&gt;\""
        );
    }

    #[test]
    fn cut_counts_characters_and_marks_the_cut() {
        assert_eq!(cut("ñññññ", 3), "ññ…");
        assert_eq!(cut("abc", 3), "abc");
    }
}

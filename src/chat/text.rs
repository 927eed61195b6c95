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

/// Slack mrkdwn: `&`, `<`, `>` become entities (so `<!everyone>` and
/// `<@U…>` cannot be formed), and broadcast words are defused.
#[must_use]
pub fn slack_escape(text: &str) -> String {
    defuse_mentions(
        &text
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
    )
}

/// Discord markdown: formatting characters are backslash-escaped, `<`
/// (mentions, `<@&role>`) too, and broadcast words defused.
#[must_use]
pub fn discord_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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
    defuse_mentions(&text.replace('`', "`\u{200B}"))
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
    fn cut_counts_characters_and_marks_the_cut() {
        assert_eq!(cut("ñññññ", 3), "ññ…");
        assert_eq!(cut("abc", 3), "abc");
    }
}

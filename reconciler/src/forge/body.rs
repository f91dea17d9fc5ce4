//! The comment's text and how spilo finds its own comment again: a hidden HTML comment as
//! its first line, which both forges keep in the stored body and do not render.

use std::fmt::Write;

/// The first line of every comment spilo writes.
pub const MARKER: &str = "<!-- spilo:plan-comment (updated in place by spilo; do not edit) -->";

/// The comment: the marker, the plan `markdown` (already cut to fit), which commit it
/// describes (and the pull request's head, when the commit is GitHub's merge of it), and where
/// the full plan is when a CI run keeps it.
pub fn comment_body(
    markdown: &str,
    commit: &str,
    head: Option<&str>,
    artifact: Option<&str>,
) -> String {
    let mut body = format!("{MARKER}\n{markdown}");
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let _ = write!(body, "\n<sub>Describes commit `{commit}`");
    if let Some(h) = head.filter(|h| !commit.starts_with(*h) && !h.starts_with(commit)) {
        let _ = write!(
            body,
            " (the pull request's head `{h}` merged into its base)"
        );
    }
    if let Some(url) = artifact {
        let _ = write!(body, "; the full plan is an artefact of [this run]({url})");
    }
    body.push_str(". This comment is updated on every push.</sub>\n");
    body
}

/// Characters the text around the plan takes, so the plan can be cut to leave room for it.
pub fn overhead(commit: &str, head: Option<&str>, artifact: Option<&str>) -> usize {
    comment_body("", commit, head, artifact).chars().count()
}

/// A comment as listed: who wrote it, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// Its id.
    pub id: u64,
    /// Its text.
    pub body: String,
    /// The author's login (GitHub) or username (GitLab).
    pub login: String,
    /// The author's numeric id.
    pub author_id: u64,
    /// The author is a bot account (GitHub `user.type == "Bot"`).
    pub bot: bool,
    /// A note GitLab wrote itself (`system`).
    pub system: bool,
}

/// Whose comments are spilo's: anyone may write the marker, so a comment counts only when its
/// author is the identity spilo posts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `SPILO_COMMENT_AUTHOR`: this login or username.
    Named(String),
    /// GitHub's job token posts as `github-actions[bot]`: any bot account (a person cannot
    /// make a comment of theirs look like a bot's).
    Bot,
    /// The account of the token (GitLab `GET /user`).
    Id(u64),
}

impl Identity {
    fn wrote(&self, c: &Posted) -> bool {
        match self {
            Identity::Named(login) => c.login == *login,
            Identity::Bot => c.bot,
            Identity::Id(id) => c.author_id == *id,
        }
    }
}

/// spilo's comment: the newest one that starts with the marker and was written by `me` (an
/// older one, from a run that raced, is left alone; a marked comment of someone else is
/// never edited).
pub fn find_marked(comments: &[Posted], me: &Identity) -> Option<u64> {
    comments
        .iter()
        .filter(|c| !c.system && me.wrote(c) && c.body.trim_start().starts_with(MARKER))
        .map(|c| c.id)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_starts_with_the_marker_and_names_the_commit_and_the_run() {
        let b = comment_body(
            "### spilo plan\n",
            "abc123",
            Some("f00d"),
            Some("https://ci/run/7"),
        );
        assert!(b.starts_with(&format!("{MARKER}\n### spilo plan\n")), "{b}");
        assert!(
            b.contains("Describes commit `abc123` (the pull request's head `f00d` merged"),
            "{b}"
        );
        assert!(b.contains("[this run](https://ci/run/7)"), "{b}");
        let without = comment_body("x", "abc123", Some("abc123"), None);
        assert!(!without.contains("this run"), "{without}");
        assert!(!without.contains("head"), "{without}");
    }

    fn posted(id: u64, body: &str, login: &str, author_id: u64, bot: bool) -> Posted {
        Posted {
            id,
            body: body.into(),
            login: login.into(),
            author_id,
            bot,
            system: false,
        }
    }

    #[test]
    fn only_spilos_own_marked_comment_counts_and_the_newest_wins() {
        let marked = |text: &str| format!("{MARKER}\n{text}");
        let comments = vec![
            posted(10, "LGTM", "ann", 1, false),
            posted(
                11,
                &format!("quoting: {MARKER}"),
                "github-actions[bot]",
                2,
                true,
            ),
            posted(12, &marked("old plan"), "github-actions[bot]", 2, true),
            posted(
                15,
                &format!("\n{}", marked("newer plan")),
                "github-actions[bot]",
                2,
                true,
            ),
            posted(16, &marked("a plan someone planted"), "mallory", 3, false),
            posted(14, "another review", "bob", 4, false),
        ];
        assert_eq!(find_marked(&comments, &Identity::Bot), Some(15));
        assert_eq!(find_marked(&comments, &Identity::Id(2)), Some(15));
        assert_eq!(
            find_marked(&comments, &Identity::Named("mallory".into())),
            Some(16)
        );
        assert_eq!(find_marked(&comments, &Identity::Id(4)), None);
        assert_eq!(find_marked(&comments[..2], &Identity::Bot), None);
        let system = Posted {
            system: true,
            ..posted(20, &marked("x"), "github-actions[bot]", 2, true)
        };
        assert_eq!(find_marked(&[system], &Identity::Bot), None);
    }
}

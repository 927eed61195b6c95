//! People and their identities: `[people.NAME]` maps Slack, Discord,
//! Mattermost and console identities to one person, and holds the SHA-256
//! digest of the person's API token. Roles (`[approvers.ROLE]`) list people
//! and, for compatibility, platform identities, Slack user groups and
//! Discord roles; an identity that maps to a person counts as that person.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{PersonSettings, RoleMembers};

/// How a decision reached remedy; recorded with it in the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Slack,
    Discord,
    Mattermost,
    /// `remedy approve …` (the CLI says so in `x-remedy-channel`).
    Console,
    /// Any other client of the HTTP API.
    Api,
    /// A pager's signed webhook (PagerDuty's acknowledgements).
    Pager,
}

impl Channel {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Discord => "discord",
            Self::Mattermost => "mattermost",
            Self::Console => "console",
            Self::Api => "api",
            Self::Pager => "pager",
        }
    }
}

/// Who acts: the person when the identity maps to one, else the platform
/// identity alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// What decisions and quorums count by: `person:alice`, or the platform
    /// identity (`slack:U123`, `discord:4567`) for someone not in `[people]`.
    pub key: String,
    pub person: Option<String>,
    /// How messages name them (a mention or the person's name).
    pub display: String,
    pub channel: Channel,
    /// The Slack user behind the click, or the person's Slack identity:
    /// user-group membership is looked up for it.
    pub slack_user: Option<String>,
    /// The Discord user behind the click, or the person's Discord identity.
    pub discord_user: Option<String>,
    /// The Discord roles the interaction carried (known only on Discord).
    pub discord_roles: Vec<String>,
    /// The Mattermost user behind the click, or the person's identity.
    pub mattermost_user: Option<String>,
    /// The clicker's Mattermost roles, once read from Mattermost (empty
    /// until then).
    pub mattermost_roles: Vec<String>,
    /// The person's console name (`[people.NAME] console`, default NAME).
    pub console_name: Option<String>,
}

#[derive(Debug, Clone)]
struct Person {
    slack: Option<String>,
    discord: Option<String>,
    mattermost: Option<String>,
    console: String,
}

/// A Mattermost user id as remedy writes it into mentions (`<@ID>`) and
/// API paths: ASCII letters and digits only (the server's are 26).
fn mattermost_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric())
}

/// SHA-256 of a token; tokens are kept only as digests.
#[must_use]
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// The people, their identities and token digests, and the roles.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    people: BTreeMap<String, Person>,
    by_slack: HashMap<String, String>,
    by_discord: HashMap<String, String>,
    by_mattermost: HashMap<String, String>,
    tokens: Vec<([u8; 32], String)>,
    roles: BTreeMap<String, RoleMembers>,
}

impl Directory {
    /// Builds the directory; refuses a role naming an unknown person, an
    /// identity or a token shared by two people.
    pub fn new(
        people: &BTreeMap<String, PersonSettings>,
        roles: &BTreeMap<String, RoleMembers>,
    ) -> Result<Self, String> {
        let mut dir = Self {
            roles: roles.clone(),
            ..Self::default()
        };
        let mut consoles: HashMap<String, String> = HashMap::new();
        for (name, p) in people {
            let unique = |map: &mut HashMap<String, String>, id: &Option<String>, what: &str| {
                if let Some(id) = id.as_ref().filter(|id| !id.is_empty())
                    && let Some(other) = map.insert(id.clone(), name.clone())
                {
                    return Err(format!(
                        "people.{name}.{what}: {id:?} is also people.{other}.{what}"
                    ));
                }
                Ok(())
            };
            unique(&mut dir.by_slack, &p.slack, "slack")?;
            unique(&mut dir.by_discord, &p.discord, "discord")?;
            unique(&mut dir.by_mattermost, &p.mattermost, "mattermost")?;
            if let Some(id) = p.mattermost.as_ref().filter(|id| !mattermost_id(id)) {
                return Err(format!(
                    "people.{name}.mattermost: {id:?} is not a Mattermost user id (letters and digits)"
                ));
            }
            let console = p.console.clone().unwrap_or_else(|| name.clone());
            unique(&mut consoles, &Some(console.clone()), "console")?;
            if !p.api_token.is_empty() {
                let digest = token_digest(p.api_token.expose());
                if let Some((_, other)) = dir.tokens.iter().find(|(d, _)| *d == digest) {
                    return Err(format!(
                        "people.{name}.api_token: the same token as people.{other}"
                    ));
                }
                dir.tokens.push((digest, name.clone()));
            }
            dir.people.insert(
                name.clone(),
                Person {
                    slack: p.slack.clone().filter(|s| !s.is_empty()),
                    discord: p.discord.clone().filter(|s| !s.is_empty()),
                    mattermost: p.mattermost.clone().filter(|s| !s.is_empty()),
                    console,
                },
            );
        }
        for (role, members) in roles {
            if let Some(id) = members
                .mattermost_users
                .iter()
                .find(|id| !mattermost_id(id))
            {
                return Err(format!(
                    "approvers.{role}.mattermost_users: {id:?} is not a Mattermost user id (letters and digits)"
                ));
            }
            if let Some(unknown) = members.people.iter().find(|p| !people.contains_key(*p)) {
                return Err(format!(
                    "approvers.{role}.people: {unknown:?} is not in [people]"
                ));
            }
        }
        Ok(dir)
    }

    /// The person whose API token this is. Every digest is compared in
    /// constant time, so timing tells neither which nor how much matched.
    #[must_use]
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        if token.is_empty() {
            return None;
        }
        let digest = token_digest(token);
        let mut found = None;
        for (expected, name) in &self.tokens {
            if bool::from(digest.ct_eq(expected)) {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// The actor behind a person's credential.
    #[must_use]
    pub fn person(&self, name: &str, channel: Channel) -> Actor {
        let p = self.people.get(name);
        Actor {
            key: format!("person:{name}"),
            person: Some(name.to_owned()),
            display: name.to_owned(),
            channel,
            slack_user: p.and_then(|p| p.slack.clone()),
            discord_user: p.and_then(|p| p.discord.clone()),
            discord_roles: Vec::new(),
            mattermost_user: p.and_then(|p| p.mattermost.clone()),
            mattermost_roles: Vec::new(),
            console_name: p.map(|p| p.console.clone()),
        }
    }

    /// The actor behind a (verified) Slack click.
    #[must_use]
    pub fn slack(&self, user: &str) -> Actor {
        match self.by_slack.get(user) {
            Some(name) => Actor {
                slack_user: Some(user.to_owned()),
                ..self.person(name, Channel::Slack)
            },
            None => Actor {
                key: format!("slack:{user}"),
                person: None,
                display: format!("<@{user}>"),
                channel: Channel::Slack,
                slack_user: Some(user.to_owned()),
                discord_user: None,
                discord_roles: Vec::new(),
                mattermost_user: None,
                mattermost_roles: Vec::new(),
                console_name: None,
            },
        }
    }

    /// The actor behind a (verified) Discord interaction.
    #[must_use]
    pub fn discord(&self, user: &str, roles: Vec<String>) -> Actor {
        match self.by_discord.get(user) {
            Some(name) => Actor {
                discord_user: Some(user.to_owned()),
                discord_roles: roles,
                ..self.person(name, Channel::Discord)
            },
            None => Actor {
                key: format!("discord:{user}"),
                person: None,
                display: format!("<@{user}>"),
                channel: Channel::Discord,
                slack_user: None,
                discord_user: Some(user.to_owned()),
                discord_roles: roles,
                mattermost_user: None,
                mattermost_roles: Vec::new(),
                console_name: None,
            },
        }
    }

    /// The actor behind a Mattermost click (its context verified). Shown
    /// as `<@ID>`: the Mattermost adapter writes it as `@username`.
    #[must_use]
    pub fn mattermost(&self, user: &str) -> Actor {
        match self.by_mattermost.get(user) {
            Some(name) => Actor {
                mattermost_user: Some(user.to_owned()),
                ..self.person(name, Channel::Mattermost)
            },
            None => Actor {
                key: format!("mattermost:{user}"),
                person: None,
                display: format!("<@{user}>"),
                channel: Channel::Mattermost,
                slack_user: None,
                discord_user: None,
                discord_roles: Vec::new(),
                mattermost_user: Some(user.to_owned()),
                mattermost_roles: Vec::new(),
                console_name: None,
            },
        }
    }

    /// Whether any of `roles` lists Mattermost roles, which only a lookup
    /// of the clicker can tell.
    #[must_use]
    pub fn needs_mattermost_roles(&self, roles: &[String]) -> bool {
        roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .any(|m| !m.mattermost_roles.is_empty())
    }

    /// The Slack user groups of `roles`, whose membership the caller looks
    /// up for [`Self::holds`] (the only fact that needs Slack).
    #[must_use]
    pub fn slack_groups(&self, roles: &[String]) -> Vec<String> {
        roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|m| m.slack_groups.iter().cloned())
            .collect()
    }

    /// Whether `actor` holds one of `roles`: as a listed person, through
    /// any of the person's identities in the role's platform lists, or
    /// through a Slack user group (`in_groups`: the groups found to contain
    /// the actor's Slack user), a Discord role the click carried, or a
    /// Mattermost role read for the clicker.
    #[must_use]
    pub fn holds(&self, actor: &Actor, roles: &[String], in_groups: &[String]) -> bool {
        roles.iter().filter_map(|r| self.roles.get(r)).any(|m| {
            let listed = |list: &[String], id: &Option<String>| {
                id.as_ref().is_some_and(|id| list.contains(id))
            };
            actor.person.as_ref().is_some_and(|p| m.people.contains(p))
                || listed(&m.slack_users, &actor.slack_user)
                || listed(&m.discord_users, &actor.discord_user)
                || listed(&m.mattermost_users, &actor.mattermost_user)
                || listed(&m.console_users, &actor.console_name)
                || m.slack_groups.iter().any(|g| in_groups.contains(g))
                || actor
                    .discord_roles
                    .iter()
                    .any(|r| m.discord_roles.contains(r))
                || actor
                    .mattermost_roles
                    .iter()
                    .any(|r| m.mattermost_roles.contains(r))
        })
    }

    /// The people of a role: listed ones and those whose identities the
    /// role's platform lists name (for console pings).
    #[must_use]
    pub fn people_of(&self, role: &str) -> Vec<String> {
        let Some(m) = self.roles.get(role) else {
            return Vec::new();
        };
        self.people
            .iter()
            .filter(|(name, p)| {
                m.people.contains(*name)
                    || p.slack.as_ref().is_some_and(|s| m.slack_users.contains(s))
                    || p.discord
                        .as_ref()
                        .is_some_and(|d| m.discord_users.contains(d))
                    || p.mattermost
                        .as_ref()
                        .is_some_and(|d| m.mattermost_users.contains(d))
                    || m.console_users.contains(&p.console)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The roles with their people's identities added to the platform
    /// lists (Slack and Discord users, console names), for mentions, pings
    /// and `remedy check`'s "nobody holds this role".
    #[must_use]
    pub fn expanded_roles(&self) -> BTreeMap<String, RoleMembers> {
        let mut out = self.roles.clone();
        for m in out.values_mut() {
            for name in &m.people {
                let Some(p) = self.people.get(name) else {
                    continue;
                };
                let add = |list: &mut Vec<String>, id: Option<&String>| {
                    if let Some(id) = id
                        && !list.contains(id)
                    {
                        list.push(id.clone());
                    }
                };
                add(&mut m.slack_users, p.slack.as_ref());
                add(&mut m.discord_users, p.discord.as_ref());
                add(&mut m.mattermost_users, p.mattermost.as_ref());
                add(&mut m.console_users, Some(&p.console));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn person(slack: &str, discord: &str, token: &str) -> PersonSettings {
        PersonSettings {
            slack: Some(slack.into()),
            discord: Some(discord.into()),
            api_token: Secret::new(token),
            ..PersonSettings::default()
        }
    }

    fn directory() -> Directory {
        let people = BTreeMap::from([
            ("alice".to_owned(), person("U0ALICE", "1001", "alice-token")),
            ("bob".to_owned(), person("U0BOB", "1002", "bob-token")),
        ]);
        let roles = BTreeMap::from([
            (
                "dba".to_owned(),
                RoleMembers {
                    people: vec!["alice".into()],
                    ..RoleMembers::default()
                },
            ),
            (
                "legacy".to_owned(),
                RoleMembers {
                    slack_users: vec!["U0BOB".into(), "U0NOBODY".into()],
                    slack_groups: vec!["S0OPS".into()],
                    discord_roles: vec!["777".into()],
                    ..RoleMembers::default()
                },
            ),
        ]);
        Directory::new(&people, &roles).expect("valid directory")
    }

    #[test]
    fn one_persons_identities_share_one_key() {
        let d = directory();
        let slack = d.slack("U0ALICE");
        let discord = d.discord("1001", Vec::new());
        let console = d.person("alice", Channel::Console);
        assert_eq!(slack.key, "person:alice");
        assert_eq!(discord.key, slack.key);
        assert_eq!(console.key, slack.key);
        assert_eq!(slack.channel, Channel::Slack);
        assert_eq!(console.channel, Channel::Console);
    }

    #[test]
    fn an_unmapped_identity_counts_as_itself() {
        let d = directory();
        assert_eq!(d.slack("U0NOBODY").key, "slack:U0NOBODY");
        assert_eq!(d.discord("9", Vec::new()).key, "discord:9");
        assert_eq!(d.slack("U0NOBODY").person, None);
    }

    #[test]
    fn tokens_name_their_person_and_nothing_else() {
        let d = directory();
        assert_eq!(d.authenticate("alice-token"), Some("alice"));
        assert_eq!(d.authenticate("bob-token"), Some("bob"));
        assert_eq!(d.authenticate("alice-token2"), None);
        assert_eq!(d.authenticate(""), None);
    }

    #[test]
    fn roles_hold_listed_people_on_every_channel() {
        let d = directory();
        let roles = ["dba".to_owned()];
        assert!(d.holds(&d.slack("U0ALICE"), &roles, &[]));
        assert!(d.holds(&d.person("alice", Channel::Console), &roles, &[]));
        assert!(!d.holds(&d.slack("U0BOB"), &roles, &[]));
        assert!(!d.holds(&d.person("bob", Channel::Api), &roles, &[]));
    }

    #[test]
    fn legacy_platform_lists_resolve_to_people() {
        let d = directory();
        let roles = ["legacy".to_owned()];
        // bob is listed by his Slack id: his console credential holds it too.
        assert!(d.holds(&d.person("bob", Channel::Console), &roles, &[]));
        // An unmapped Slack user listed by id holds it as itself.
        assert!(d.holds(&d.slack("U0NOBODY"), &roles, &[]));
        // Groups and Discord roles: from the facts the caller gathered.
        assert!(d.holds(&d.slack("U0X"), &roles, &["S0OPS".into()]));
        assert!(d.holds(&d.discord("5", vec!["777".into()]), &roles, &[]));
        assert!(!d.holds(&d.discord("5", vec!["778".into()]), &roles, &[]));
        assert!(!d.holds(&d.slack("U0X"), &["nope".into()], &["S0OPS".into()]));
    }

    #[test]
    fn a_mattermost_identity_is_its_person_and_roles_read_from_mattermost_count() {
        let people = BTreeMap::from([(
            "alice".to_owned(),
            PersonSettings {
                mattermost: Some("mmalice".into()),
                ..PersonSettings::default()
            },
        )]);
        let roles = BTreeMap::from([
            (
                "dba".to_owned(),
                RoleMembers {
                    people: vec!["alice".into()],
                    ..RoleMembers::default()
                },
            ),
            (
                "ops".to_owned(),
                RoleMembers {
                    mattermost_users: vec!["mmbob".into()],
                    mattermost_roles: vec!["custom_ops".into()],
                    ..RoleMembers::default()
                },
            ),
        ]);
        let d = Directory::new(&people, &roles).expect("valid");
        let alice = d.mattermost("mmalice");
        assert_eq!(alice.key, "person:alice");
        assert_eq!(alice.channel, Channel::Mattermost);
        assert!(d.holds(&alice, &["dba".into()], &[]));
        let bob = d.mattermost("mmbob");
        assert_eq!(
            (bob.key.as_str(), bob.display.as_str()),
            ("mattermost:mmbob", "<@mmbob>")
        );
        assert!(d.holds(&bob, &["ops".into()], &[]));
        let carol = d.mattermost("mmcarol");
        assert!(!d.holds(&carol, &["ops".into()], &[]));
        assert!(d.needs_mattermost_roles(&["ops".into()]));
        assert!(!d.needs_mattermost_roles(&["dba".into()]));
        let carol = Actor {
            mattermost_roles: vec!["custom_ops".into()],
            ..carol
        };
        assert!(d.holds(&carol, &["ops".into()], &[]));
        assert!(!d.holds(&carol, &["dba".into()], &[]));
        assert_eq!(
            d.expanded_roles()["dba"].mattermost_users,
            ["mmalice".to_owned()]
        );
        let bad = BTreeMap::from([(
            "ops".to_owned(),
            RoleMembers {
                mattermost_users: vec!["<@x> @all".into()],
                ..RoleMembers::default()
            },
        )]);
        let err = Directory::new(&BTreeMap::new(), &bad).expect_err("not an id");
        assert!(err.contains("approvers.ops.mattermost_users"), "{err}");
    }

    #[test]
    fn a_role_naming_an_unknown_person_is_refused() {
        let roles = BTreeMap::from([(
            "dba".to_owned(),
            RoleMembers {
                people: vec!["carol".into()],
                ..RoleMembers::default()
            },
        )]);
        let err = Directory::new(&BTreeMap::new(), &roles).expect_err("unknown person");
        assert!(err.contains("carol"), "{err}");
    }

    #[test]
    fn an_identity_or_token_shared_by_two_people_is_refused() {
        let people = BTreeMap::from([
            ("a".to_owned(), person("U1", "1", "t1")),
            ("b".to_owned(), person("U1", "2", "t2")),
        ]);
        assert!(Directory::new(&people, &BTreeMap::new()).is_err());
        let people = BTreeMap::from([
            ("a".to_owned(), person("U1", "1", "same")),
            ("b".to_owned(), person("U2", "2", "same")),
        ]);
        assert!(Directory::new(&people, &BTreeMap::new()).is_err());
    }

    #[test]
    fn expanded_roles_list_their_peoples_identities() {
        let roles = directory().expanded_roles();
        assert_eq!(roles["dba"].slack_users, vec!["U0ALICE".to_owned()]);
        assert_eq!(roles["dba"].discord_users, vec!["1001".to_owned()]);
        assert_eq!(roles["dba"].console_users, vec!["alice".to_owned()]);
    }

    #[test]
    fn people_of_a_role_include_those_listed_by_identity() {
        let d = directory();
        assert_eq!(d.people_of("dba"), vec!["alice".to_owned()]);
        assert_eq!(d.people_of("legacy"), vec!["bob".to_owned()]);
    }
}

//! Access control lists: allow rules of principal × resource × operation, as Kafka has them.
//! A resource is a topic, a consumer group, an aggregation or the cluster, named exactly, by a
//! prefix (`orders-*`) or by `*`; a principal is a user name or `*` (every authenticated
//! user). Nothing is allowed that no rule allows, except to superusers; any of read, write,
//! create, delete or alter on a resource implies describe on it, and `all` implies every
//! operation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What kind of thing a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A topic (its records, partitions, settings).
    Topic,
    /// A consumer group (membership, committed offsets).
    Group,
    /// A windowed aggregation.
    Aggregation,
    /// The cluster (its nodes and status, users and ACLs).
    Cluster,
}

/// What a principal does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Consume, query, search.
    Read,
    /// Produce.
    Write,
    /// Create.
    Create,
    /// Delete or drop.
    Delete,
    /// See that it exists and how it is (metadata, status, descriptions).
    Describe,
    /// Change settings (users and ACLs, on the cluster).
    Alter,
    /// Every operation.
    All,
}

const KINDS: [(&str, ResourceKind); 4] = [
    ("topic", ResourceKind::Topic),
    ("group", ResourceKind::Group),
    ("aggregation", ResourceKind::Aggregation),
    ("cluster", ResourceKind::Cluster),
];

const OPERATIONS: [(&str, Operation); 7] = [
    ("read", Operation::Read),
    ("write", Operation::Write),
    ("create", Operation::Create),
    ("delete", Operation::Delete),
    ("describe", Operation::Describe),
    ("alter", Operation::Alter),
    ("all", Operation::All),
];

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = KINDS
            .iter()
            .find(|(_, k)| k == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl FromStr for ResourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KINDS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                format!("`{s}` is not a resource kind (topic, group, aggregation, cluster)")
            })
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = OPERATIONS
            .iter()
            .find(|(_, o)| o == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        OPERATIONS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, o)| *o)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not an operation (read, write, create, delete, describe, alter, all)"
                )
            })
    }
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclRule {
    /// A user name, or `*` for every authenticated user.
    pub principal: String,
    /// The kind of resource.
    pub resource: ResourceKind,
    /// The resource's name, a prefix ending in `*`, or `*` (for the cluster: `*`).
    pub pattern: String,
    /// The operation allowed.
    pub operation: Operation,
}

/// One permission a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission<'a> {
    /// The kind of resource.
    pub resource: ResourceKind,
    /// Its name (empty for the cluster).
    pub name: &'a str,
    /// The operation.
    pub operation: Operation,
}

impl fmt::Display for Permission<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.resource {
            ResourceKind::Cluster => write!(f, "{} on the cluster", self.operation),
            kind => write!(f, "{} on {kind} `{}`", self.operation, self.name),
        }
    }
}

/// Longest pattern or principal in a rule.
const MAX_NAME: usize = 249;

impl AclRule {
    /// Whether the rule is well formed: a principal and a pattern of allowed characters.
    pub fn validate(&self) -> Result<(), String> {
        let allowed = |s: &str| {
            !s.is_empty()
                && s.len() <= MAX_NAME
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*'))
                && !s.trim_end_matches('*').contains('*')
        };
        if !(self.principal == "*" || allowed(&self.principal) && !self.principal.contains('*')) {
            return Err(format!("`{}` is not a principal", self.principal));
        }
        if !allowed(&self.pattern) {
            return Err(format!(
                "`{}` is not a resource name, prefix ending in `*`, or `*`",
                self.pattern
            ));
        }
        if self.resource == ResourceKind::Cluster && self.pattern != "*" {
            return Err("a rule on the cluster names it `*`".into());
        }
        Ok(())
    }

    fn covers(&self, name: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.pattern == name,
        }
    }

    /// Whether this rule gives `user` `permission`.
    pub fn allows(&self, user: &str, permission: &Permission<'_>) -> bool {
        (self.principal == "*" || self.principal == user)
            && self.resource == permission.resource
            && (self.resource == ResourceKind::Cluster || self.covers(permission.name))
            && (self.operation == permission.operation
                || self.operation == Operation::All
                || permission.operation == Operation::Describe
                    && self.operation != Operation::Describe)
    }
}

/// Whether any of `rules` gives `user` `permission`.
pub fn allowed<'r>(
    rules: impl IntoIterator<Item = &'r AclRule>,
    user: &str,
    permission: &Permission<'_>,
) -> bool {
    rules.into_iter().any(|r| r.allows(user, permission))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(principal: &str, resource: ResourceKind, pattern: &str, op: Operation) -> AclRule {
        AclRule {
            principal: principal.into(),
            resource,
            pattern: pattern.into(),
            operation: op,
        }
    }

    fn need(resource: ResourceKind, name: &str, operation: Operation) -> Permission<'_> {
        Permission {
            resource,
            name,
            operation,
        }
    }

    #[test]
    fn rules_match_names_prefixes_principals_and_implied_operations() {
        use Operation::*;
        use ResourceKind::*;
        let rules = [
            rule("ada", Topic, "orders", Read),
            rule("ada", Topic, "logs-*", Write),
            rule("*", Group, "*", Read),
            rule("ops", Cluster, "*", All),
        ];
        let ok = |user, p: Permission<'_>| allowed(&rules, user, &p);
        assert!(ok("ada", need(Topic, "orders", Read)));
        assert!(
            ok("ada", need(Topic, "orders", Describe)),
            "read implies describe"
        );
        assert!(!ok("ada", need(Topic, "orders", Write)));
        assert!(
            !ok("ada", need(Topic, "orders2", Read)),
            "exact names are exact"
        );
        assert!(ok("ada", need(Topic, "logs-app", Write)));
        assert!(
            !ok("ada", need(Topic, "logs", Write)),
            "a prefix needs its dash"
        );
        assert!(!ok("bob", need(Topic, "orders", Read)));
        assert!(ok("bob", need(Group, "any", Read)), "`*` is every user");
        assert!(!ok("bob", need(Group, "any", Delete)));
        assert!(ok("ops", need(Cluster, "", Alter)));
        assert!(!ok("ada", need(Cluster, "", Describe)));
        assert!(
            !ok("ada", need(Aggregation, "orders", Read)),
            "kinds are apart"
        );
    }

    #[test]
    fn malformed_rules_and_names_are_refused() {
        use ResourceKind::*;
        assert!(rule("ada", Topic, "o*", Operation::Read).validate().is_ok());
        for bad in [
            rule("", Topic, "o", Operation::Read),
            rule("a*", Topic, "o", Operation::Read),
            rule("ada", Topic, "", Operation::Read),
            rule("ada", Topic, "a*b", Operation::Read),
            rule("ada", Topic, "../x", Operation::Read),
            rule("ada", Cluster, "c", Operation::Read),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!("WRITE".parse::<Operation>(), Ok(Operation::Write));
        assert!("fly".parse::<Operation>().is_err());
        assert_eq!("topic".parse::<ResourceKind>(), Ok(Topic));
        assert_eq!(
            need(Topic, "t", Operation::Read).to_string(),
            "read on topic `t`"
        );
    }
}

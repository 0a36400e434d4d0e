//! Access control lists: principal x resource pattern x operation, allow or deny
//! (docs/security.md, "Authorization").
//!
//! Rules: a request is allowed only if some `allow` entry matches it and no `deny` entry does
//! (deny wins; nothing matching = denied). An entry matches a principal if it names it or is
//! `*` (any authenticated principal). `allow admin` on `cluster` makes a super user: every
//! operation on every resource (a `deny` still wins). Evaluation is a linear scan of the list,
//! done once per (resource, name, operation) per connection and then cached
//! (`server/auth.rs`), so its cost is off the hot path.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use shardline_protocol::acl::{Operation, ResourceType};

use super::store::check_principal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum PatternType {
    /// The resource name equals the pattern (`*` = every name).
    Literal,
    /// The resource name starts with the pattern.
    Prefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    /// A principal name, or `*` for every authenticated principal.
    pub principal: String,
    pub resource: ResourceType,
    /// For `cluster`, ignored (write `*`).
    pub pattern: String,
    pub pattern_type: PatternType,
    pub operation: Operation,
    #[serde(default)]
    pub permission: Permission,
}

impl fmt::Display for AclEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.pattern_type {
            PatternType::Literal => "",
            PatternType::Prefix => "-prefix",
        };
        let resource = match self.resource {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Cluster => "cluster",
        };
        write!(
            f,
            "{:?} {} {:?} {resource}{kind}:{}",
            self.permission, self.principal, self.operation, self.pattern
        )
    }
}

impl AclEntry {
    pub fn validate(&self) -> Result<(), String> {
        if self.principal != "*" {
            check_principal(&self.principal).map_err(|e| e.to_string())?;
        }
        if self.pattern.is_empty() && self.pattern_type == PatternType::Literal {
            return Err("empty literal pattern (use '*' for every name)".into());
        }
        if self.pattern.len() > 255 {
            return Err("patterns are at most 255 bytes".into());
        }
        Ok(())
    }

    fn matches_principal(&self, principal: &str) -> bool {
        self.principal == "*" || self.principal == principal
    }

    fn matches_name(&self, name: &str) -> bool {
        if self.resource == ResourceType::Cluster {
            return true;
        }
        match self.pattern_type {
            PatternType::Literal => self.pattern == "*" || self.pattern == name,
            PatternType::Prefix => name.starts_with(&self.pattern),
        }
    }

    /// Whether this entry speaks about `operation` on `resource`/`name` for `principal`.
    fn applies(
        &self,
        principal: &str,
        resource: ResourceType,
        name: &str,
        operation: Operation,
    ) -> bool {
        if !self.matches_principal(principal) {
            return false;
        }
        let super_user =
            self.resource == ResourceType::Cluster && self.operation == Operation::Admin;
        if super_user {
            return true;
        }
        self.resource == resource && self.operation == operation && self.matches_name(name)
    }
}

/// Allowed iff an `allow` entry applies and no `deny` entry does.
pub fn authorize(
    acls: &[AclEntry],
    principal: &str,
    resource: ResourceType,
    name: &str,
    operation: Operation,
) -> bool {
    let mut allowed = false;
    for a in acls {
        if a.applies(principal, resource, name, operation) {
            match a.permission {
                Permission::Deny => return false,
                Permission::Allow => allowed = true,
            }
        }
    }
    allowed
}

/// Parses `topic:NAME`, `topic-prefix:PFX`, `group:NAME`, `group-prefix:PFX`, `cluster`.
pub fn parse_resource(s: &str) -> Result<(ResourceType, PatternType, String), String> {
    if s == "cluster" {
        return Ok((ResourceType::Cluster, PatternType::Literal, "*".into()));
    }
    let (kind, pattern) = s.split_once(':').ok_or_else(|| {
        format!("'{s}': expected topic:NAME, topic-prefix:PFX, group:..., cluster")
    })?;
    let (resource, pattern_type) = match kind {
        "topic" => (ResourceType::Topic, PatternType::Literal),
        "topic-prefix" => (ResourceType::Topic, PatternType::Prefix),
        "group" => (ResourceType::Group, PatternType::Literal),
        "group-prefix" => (ResourceType::Group, PatternType::Prefix),
        other => return Err(format!("unknown resource kind '{other}'")),
    };
    Ok((resource, pattern_type, pattern.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        principal: &str,
        resource: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclEntry {
        let (resource, pattern_type, pattern) = parse_resource(resource).expect("resource");
        AclEntry {
            principal: principal.into(),
            resource,
            pattern,
            pattern_type,
            operation,
            permission,
        }
    }

    #[test]
    fn deny_by_default_allow_by_entry_deny_wins() {
        use Operation::*;
        use Permission::*;
        use ResourceType::*;
        let acls = vec![
            entry("alice", "topic:orders", Produce, Allow),
            entry("alice", "topic-prefix:metrics.", Consume, Allow),
            entry("*", "topic:public", Describe, Allow),
            entry("alice", "topic:metrics.secret", Consume, Deny),
            entry("root", "cluster", Admin, Allow),
            entry("root", "topic:vault", Delete, Deny),
        ];
        assert!(authorize(&acls, "alice", Topic, "orders", Produce));
        assert!(!authorize(&acls, "alice", Topic, "orders", Consume));
        assert!(!authorize(&acls, "alice", Topic, "orders2", Produce));
        assert!(!authorize(&acls, "bob", Topic, "orders", Produce));
        assert!(authorize(&acls, "alice", Topic, "metrics.cpu", Consume));
        assert!(!authorize(&acls, "alice", Topic, "metrics.secret", Consume));
        assert!(!authorize(&acls, "alice", Topic, "metric", Consume));
        assert!(authorize(&acls, "bob", Topic, "public", Describe));
        assert!(!authorize(&acls, "alice", Group, "orders", Produce));
        assert!(authorize(&acls, "root", Topic, "anything", Delete));
        assert!(authorize(&acls, "root", Cluster, "*", Describe));
        assert!(!authorize(&acls, "root", Topic, "vault", Delete));
        assert!(!authorize(&[], "root", Topic, "x", Describe));
    }

    #[test]
    fn resources_parse_and_validate() {
        assert!(parse_resource("queue:x").is_err());
        assert!(parse_resource("topic").is_err());
        let e = entry("*", "topic-prefix:", Operation::Describe, Permission::Allow);
        assert!(e.validate().is_ok(), "empty prefix = every topic");
        let mut bad = entry("a", "topic:x", Operation::Produce, Permission::Allow);
        bad.pattern = String::new();
        assert!(bad.validate().is_err());
    }
}

//! The resource types and operations of access control (docs/security.md, "Authorization"):
//! what the api table (`api.rs`) says each request needs. Evaluating ACLs is the server's
//! business (`shardline_server::auth::acl`); these names are shared so that the table can say
//! it, and their serde names are the security file's.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Produce,
    Consume,
    Create,
    Delete,
    Describe,
    Admin,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::Produce,
        Operation::Consume,
        Operation::Create,
        Operation::Delete,
        Operation::Describe,
        Operation::Admin,
    ];
}

//! Pieces of the `shardline` binary that deserve tests of their own: the configuration file,
//! the `stats` tables and the `top` view (docs/operations.md).

pub mod cluster;
pub mod config;
pub mod limits;
pub mod membership;
pub mod nodes;
pub mod stats;
pub mod top;

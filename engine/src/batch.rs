//! The record-batch format lives in its own crate, `shardline-format` (engine/format), so that the
//! protocol and the client use it without compiling the engine. Re-exported here under its old path.

pub use shardline_format::*;

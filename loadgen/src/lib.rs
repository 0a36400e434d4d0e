//! Shardline's load generator: producers and consumers on their own pinned threads, driving a
//! broker through a [`driver::Driver`], measuring publish and end-to-end latency in HDR
//! histograms, and writing a human table, a JSON result (with OpenMessaging-Benchmark-compatible
//! fields) and an HTML/SVG report.
//!
//! ```text
//!            +-------------+  send(batch) -> ack future   +--------------------+
//!  schedule->| producer i  |----------------------------->|                    |
//!  (open or  | (thread,    |   publish latency = ack -    |  Driver            |
//!   closed   |  pinned)    |   intended send time         |  (embedded engine, |
//!   loop)    +-------------+                              |   shardline --addr,|
//!                                                         |   nats, redis)     |
//!            +-------------+  deliveries (zero-copy)      |                    |
//!            | consumer j  |<-----------------------------|                    |
//!            | (thread)    |   e2e latency = receive -    +--------------------+
//!            +-------------+   header send time
//! ```
//! Every message value starts with a 16-byte [`payload`] header (send time on the process-wide
//! monotonic [`clock`], per-partition sequence number), so the consumer side needs no shared
//! state with the producers to measure latency and check ordering.
//!
//! Modules, bottom up: [`clock`], [`payload`], [`scheduler`] (open-loop pacing, coordinated
//! omission), [`stats`] (histograms, summaries, per-second series), [`workload`] (parameters
//! and TOML files), [`exec`] (a thread-parking waker), [`driver`], [`producer`], [`consumer`],
//! [`runner`] (one run), [`result`] (JSON and table), [`report`] (HTML and SVG), [`compare`].

pub mod clock;
pub mod compare;
pub mod consumer;
pub mod driver;
pub mod exec;
pub mod payload;
pub mod producer;
pub mod progress;
pub mod report;
pub mod result;
pub mod runner;
pub mod scheduler;
pub mod stats;
pub mod workload;

/// The topic every run creates (afresh) and uses.
pub const TOPIC: &str = "loadgen";

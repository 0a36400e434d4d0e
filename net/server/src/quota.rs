//! Quotas and limits (docs/security.md, "Quotas and limits"): per-principal produce and fetch
//! byte rates (token buckets shared by every shard), connections per client address, and the
//! number of topics and partitions.
//!
//! A principal over its rate gets QUOTA_EXCEEDED (275, retriable) with the time to back off
//! in the message (`retry after N ms`), before the request does any work; pushes of its
//! subscriptions are delayed instead (a push has no reply to refuse). Buckets allow a burst of
//! `burst_ms` worth of the rate and go into debt by at most one request, so a principal's
//! accepted bytes over any interval T stay below rate * (T + burst) + one request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::protocol::{ErrorResponse, code};

/// `[server.quotas]`. `None` / 0 = unlimited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Record batch bytes a principal may produce per second (all its connections together).
    pub produce_bytes_per_s: Option<u64>,
    /// Bytes a principal may receive per second through fetch responses and pushes.
    pub fetch_bytes_per_s: Option<u64>,
    /// Bucket size: this many milliseconds of the rate may be used at once.
    pub burst_ms: u64,
    /// Open connections per client IP address (0 = unlimited).
    pub connections_per_address_max: usize,
    /// Topics in the cluster; CreateTopic beyond it fails with LIMIT_EXCEEDED.
    pub topics_max: Option<usize>,
    /// Partitions over all topics.
    pub partitions_max: Option<u64>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            produce_bytes_per_s: None,
            fetch_bytes_per_s: None,
            burst_ms: 1000,
            connections_per_address_max: 0,
            topics_max: None,
            partitions_max: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    Produce = 0,
    Fetch = 1,
}

struct Bucket {
    /// Bytes available; negative = debt.
    tokens: f64,
    at: Instant,
}

/// Principals remembered at most; idle full buckets are dropped first.
const BUCKETS_MAX: usize = 100_000;

pub(crate) struct Quotas {
    cfg: QuotaConfig,
    /// By direction (produce, fetch), then principal; looked up by `&str`, no allocation.
    buckets: Mutex<[HashMap<Arc<str>, Bucket>; 2]>,
    connections: Mutex<HashMap<IpAddr, usize>>,
}

impl Quotas {
    pub(crate) fn new(cfg: QuotaConfig) -> Quotas {
        Quotas {
            cfg,
            buckets: Mutex::new([HashMap::new(), HashMap::new()]),
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any byte-rate quota is configured (else callers skip the bookkeeping).
    pub(crate) fn rates_enabled(&self) -> bool {
        self.rate(Direction::Produce).is_some() || self.rate(Direction::Fetch).is_some()
    }

    fn rate(&self, d: Direction) -> Option<f64> {
        let r = match d {
            Direction::Produce => self.cfg.produce_bytes_per_s,
            Direction::Fetch => self.cfg.fetch_bytes_per_s,
        }?;
        (r > 0).then_some(r as f64)
    }

    /// `Err(back_off)` while `principal` is in debt for `d`.
    pub(crate) fn check(
        &self,
        principal: &str,
        d: Direction,
        now: Instant,
    ) -> Result<(), Duration> {
        let Some(rate) = self.rate(d) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(b) = buckets[d as usize].get_mut(principal) else {
            return Ok(());
        };
        self.refill(b, rate, now);
        if b.tokens >= 0.0 {
            return Ok(());
        }
        Err(Duration::from_secs_f64(-b.tokens / rate).max(Duration::from_millis(1)))
    }

    fn refill(&self, b: &mut Bucket, rate: f64, now: Instant) {
        let cap = rate * self.cfg.burst_ms.max(1) as f64 / 1000.0;
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(cap);
        b.at = now;
    }

    /// Records `bytes` used by `principal`.
    pub(crate) fn charge(&self, principal: &str, d: Direction, bytes: u64, now: Instant) {
        let Some(rate) = self.rate(d) else {
            return;
        };
        let cap = rate * self.cfg.burst_ms.max(1) as f64 / 1000.0;
        let mut all = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let buckets = &mut all[d as usize];
        if buckets.len() >= BUCKETS_MAX {
            buckets.retain(|_, b| b.tokens < cap);
        }
        if !buckets.contains_key(principal) {
            buckets.insert(
                Arc::from(principal),
                Bucket {
                    tokens: cap,
                    at: now,
                },
            );
        }
        let Some(b) = buckets.get_mut(principal) else {
            return;
        };
        self.refill(b, rate, now);
        b.tokens -= bytes as f64;
    }

    /// Admits a request of `bytes` or says how long to back off.
    pub(crate) fn admit(
        &self,
        principal: &str,
        d: Direction,
        bytes: u64,
        now: Instant,
    ) -> Result<(), ErrorResponse> {
        if let Err(back_off) = self.check(principal, d, now) {
            let what = match d {
                Direction::Produce => "produce",
                Direction::Fetch => "fetch",
            };
            return Err(ErrorResponse::new(
                code::QUOTA_EXCEEDED,
                format!(
                    "{what} quota of principal '{principal}' exceeded; retry after {} ms",
                    back_off.as_millis()
                ),
            ));
        }
        self.charge(principal, d, bytes, now);
        Ok(())
    }

    /// Registers a connection from `ip`; `false` (and nothing registered) above the limit.
    pub(crate) fn connect(&self, ip: IpAddr) -> bool {
        let mut c = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = c.entry(ip).or_insert(0);
        if self.cfg.connections_per_address_max > 0 && *n >= self.cfg.connections_per_address_max {
            return false;
        }
        *n += 1;
        true
    }

    pub(crate) fn disconnect(&self, ip: IpAddr) {
        let mut c = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = c.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&ip);
            }
        }
    }

    /// CreateTopic within `topics_max` and `partitions_max`.
    pub(crate) fn check_create(
        &self,
        engine: &shardline_engine::Engine,
        partitions: u32,
    ) -> Result<(), ErrorResponse> {
        if self.cfg.topics_max.is_none() && self.cfg.partitions_max.is_none() {
            return Ok(());
        }
        let routes = engine.topic_routes();
        if let Some(max) = self.cfg.topics_max
            && routes.len() >= max
        {
            return Err(ErrorResponse::new(
                code::LIMIT_EXCEEDED,
                format!(
                    "the cluster has {} topics, the limit is {max}",
                    routes.len()
                ),
            ));
        }
        let existing: u64 = routes.iter().map(|r| r.shards.len() as u64).sum();
        if let Some(max) = self.cfg.partitions_max
            && existing + u64::from(partitions) > max
        {
            return Err(ErrorResponse::new(
                code::LIMIT_EXCEEDED,
                format!(
                    "{partitions} more partitions would make {}, the limit is {max}",
                    existing + u64::from(partitions)
                ),
            ));
        }
        Ok(())
    }
}

/// Bytes of record batches a produce request carries.
pub(crate) fn produce_bytes(p: &crate::protocol::ProduceRequest) -> u64 {
    p.topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| p.batch.len() as u64)
        .sum()
}

/// Bytes of record batches a fetch response carries.
pub(crate) fn fetch_bytes(f: &crate::protocol::FetchResponse) -> u64 {
    f.topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .flat_map(|p| p.chunks.iter())
        .map(|c| c.len() as u64)
        .sum()
}

impl Quotas {
    /// The partition limit for growing `topic` to `partitions` (AddPartitions); the topic
    /// limit does not apply (no topic is created).
    pub(crate) fn check_add_partitions(
        &self,
        engine: &shardline_engine::Engine,
        topic: &str,
        partitions: u32,
    ) -> Result<(), ErrorResponse> {
        let Some(max) = self.cfg.partitions_max else {
            return Ok(());
        };
        let routes = engine.topic_routes();
        let current = routes
            .iter()
            .find(|r| &*r.name == topic)
            .map_or(0, |r| r.shards.len() as u64);
        let added = u64::from(partitions).saturating_sub(current);
        let existing: u64 = routes.iter().map(|r| r.shards.len() as u64).sum();
        if added > 0 && existing + added > max {
            return Err(ErrorResponse::new(
                code::LIMIT_EXCEEDED,
                format!(
                    "{added} more partitions would make {}, the limit is {max} \
                     (server.quotas.partitions_max)",
                    existing + added
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let q = Quotas::new(QuotaConfig {
            produce_bytes_per_s: Some(1000),
            burst_ms: 1000,
            ..QuotaConfig::default()
        });
        let t0 = Instant::now();
        // 1000 bytes of burst, then debt: the next request waits for the debt to be repaid.
        assert!(q.admit("a", Direction::Produce, 800, t0).is_ok());
        assert!(
            q.admit("a", Direction::Produce, 800, t0).is_ok(),
            "burst left"
        );
        let e = q
            .admit("a", Direction::Produce, 1, t0)
            .expect_err("in debt");
        assert_eq!(e.code, code::QUOTA_EXCEEDED);
        assert!(e.message.contains("retry after 600 ms"), "{}", e.message);
        assert!(
            q.admit("b", Direction::Produce, 800, t0).is_ok(),
            "per principal"
        );
        assert!(
            q.admit("a", Direction::Fetch, 1 << 30, t0).is_ok(),
            "no fetch quota"
        );
        let later = t0 + Duration::from_millis(601);
        assert!(
            q.admit("a", Direction::Produce, 1, later).is_ok(),
            "debt repaid"
        );
    }

    #[test]
    fn connections_per_address() {
        let q = Quotas::new(QuotaConfig {
            connections_per_address_max: 2,
            ..QuotaConfig::default()
        });
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(q.connect(a) && q.connect(a));
        assert!(!q.connect(a));
        assert!(q.connect(b));
        q.disconnect(a);
        assert!(q.connect(a));
    }
}

//! The data path of a connection: produce, fetch, list offsets, subscriptions and their
//! credit-bounded pushes.

use super::*;

impl Conn {
    /// Enqueues every partition's batch now, in request order (per-partition order across
    /// pipelined requests), then waits for the acks on a separate task.
    pub(super) async fn produce(self: &Rc<Self>, cid: u32, ver: u16, p: ProduceRequest) {
        let acks: shardline_engine::Acks = p.acks.to_engine();
        let mut pending = Vec::new();
        for t in &p.topics {
            for part in &t.partitions {
                let r = match ingress::check(&self.engine, &part.batch) {
                    Ok(()) => {
                        self.engine
                            .submit_produce(&t.name, part.partition, part.batch.clone(), acks)
                            .await
                    }
                    Err(e) => Err(e),
                };
                pending.push((t.name.clone(), part.partition, r));
            }
        }
        if acks == shardline_engine::Acks::None {
            return;
        }
        self.begin();
        let c = self.clone();
        let timeout = Duration::from_millis(u64::from(p.timeout_ms.max(1)));
        rt::spawn_local(async move {
            let waits = pending.into_iter().map(|(topic, partition, r)| async move {
                let res = match r {
                    Ok(ack) => match rt::timeout(timeout, ack.wait()).await {
                        Some(Ok(Some(a))) => Ok(a),
                        Some(Ok(None)) => Err(shardline_engine::Error::Runtime("no ack".into())),
                        Some(Err(e)) => Err(e),
                        None => Err(shardline_engine::Error::Timeout(timeout.as_millis() as u64)),
                    },
                    Err(e) => Err(e),
                };
                (topic, crate::convert::produce_result(partition, &res))
            });
            let results = join_all(waits.collect()).await;
            let mut topics: Vec<ProduceTopicResult> = Vec::new();
            for (topic, r) in results {
                match topics.last_mut() {
                    Some(t) if t.name == topic => t.partitions.push(r),
                    _ => topics.push(ProduceTopicResult {
                        name: topic,
                        partitions: vec![r],
                    }),
                }
            }
            c.send_response(cid, ver, &Response::Produce(ProduceResponse { topics }));
            c.end();
        });
    }

    pub(super) async fn fetch(&self, f: FetchRequest) -> FetchResponse {
        let max_wait = Duration::from_millis(u64::from(f.max_wait_ms));
        let isolation = engine_isolation(f.isolation);
        let mut futs = Vec::new();
        for t in &f.topics {
            for p in &t.partitions {
                let req = EngineFetch {
                    topic: t.name.clone(),
                    partition: p.partition,
                    offset: p.offset,
                    max_bytes: p.max_bytes.min(f.max_bytes).max(1) as usize,
                    max_records: if p.max_records == 0 {
                        usize::MAX
                    } else {
                        p.max_records as usize
                    },
                    max_wait,
                };
                let (name, partition, offset) = (t.name.clone(), p.partition, p.offset);
                let engine = &self.engine;
                futs.push(async move {
                    // On the owning shard the read runs in place (no inbox hop).
                    let fetched = engine.fetch_here_isolated(req, isolation).await;
                    let r =
                        crate::encryption::fetch_result(engine, &name, partition, offset, fetched);
                    (name, r)
                });
            }
        }
        let mut topics: Vec<FetchTopicResult> = Vec::new();
        for (name, r) in join_all(futs).await {
            match topics.last_mut() {
                Some(t) if t.name == name => t.partitions.push(r),
                _ => topics.push(FetchTopicResult {
                    name,
                    partitions: vec![r],
                }),
            }
        }
        FetchResponse { topics }
    }

    pub(super) async fn list_offsets(&self, l: ListOffsetsRequest) -> ListOffsetsResponse {
        let mut topics = Vec::new();
        for t in &l.topics {
            let mut partitions = Vec::new();
            for p in &t.partitions {
                let r = self
                    .engine
                    .list_offset_async(&t.name, p.partition, p.spec.to_engine())
                    .await;
                partitions.push(crate::convert::list_offsets_result(p.partition, &r));
            }
            topics.push(ListOffsetsTopicResult {
                name: t.name.clone(),
                partitions,
            });
        }
        ListOffsetsResponse { topics }
    }

    pub(super) async fn subscribe(self: &Rc<Self>, cid: u32, ver: u16, s: SubscribeRequest) {
        let api = ApiKey::Subscribe.as_u16();
        if self.subs.borrow().len() >= self.shared.cfg.subscriptions_per_connection_max {
            let e = ErrorResponse::new(
                code::LIMIT_EXCEEDED,
                "too many subscriptions on this connection",
            );
            self.send_error(cid, api, ver, &e);
            return;
        }
        // The engine reads ahead at most two responses of up to this size per subscription,
        // reserved in the read-ahead share of the memory budget (smaller when the share is
        // short; refused when not even the smallest fits).
        let want = s
            .credit_bytes
            .clamp(SUBSCRIPTION_READ_BYTES_MIN, SUBSCRIPTION_READ_BYTES_MAX)
            as usize;
        let Some(readahead) = budget::ReadAheadCharge::reserve(
            &self.shared,
            want,
            SUBSCRIPTION_READ_BYTES_MIN as usize,
        ) else {
            let e = ErrorResponse::new(
                code::LIMIT_EXCEEDED,
                "server memory budget for subscriptions' read-ahead exhausted: retry later",
            );
            self.send_error(cid, api, ver, &e);
            return;
        };
        let max_bytes = readahead.read_bytes();
        let r = self
            .engine
            .subscribe_isolated_async(
                &s.topic,
                s.partition,
                s.start.to_engine(),
                max_bytes,
                2,
                engine_isolation(s.isolation),
            )
            .await;
        let (start, sub) = match r {
            Ok(x) => x,
            Err(e) => {
                self.send_error(cid, api, ver, &(&e).to_wire());
                return;
            }
        };
        let id = self.next_sub.get();
        self.next_sub.set(id.wrapping_add(1).max(1));
        let state = Rc::new(Sub {
            window: RefCell::new(CreditWindow::new(s.credit_records, s.credit_bytes)),
            position: Cell::new(start),
            changed: LocalNotify::default(),
            cancelled: Cell::new(false),
            _readahead: readahead,
        });
        self.subs.borrow_mut().insert(id, state.clone());
        let (hw, log_start) = match self
            .engine
            .describe_partition_async(&s.topic, s.partition)
            .await
        {
            Ok(d) => (d.high_watermark, d.log_start),
            Err(_) => (start, start),
        };
        let resp = SubscribeResponse {
            subscription_id: id,
            start_offset: start,
            high_watermark: hw,
            log_start,
        };
        self.send_response(cid, ver, &Response::Subscribe(resp));
        let opener = crate::encryption::Opener::for_partition(&self.engine, &s.topic, s.partition);
        rt::spawn_local(self.clone().pump(id, state, sub, opener));
    }

    /// Moves pushed batches from the engine to the socket, within the subscription's credit.
    pub(super) async fn pump(
        self: Rc<Self>,
        id: u32,
        sub: Rc<Sub>,
        source: Subscription,
        opener: Option<crate::encryption::Opener>,
    ) {
        let ver = self.version(ApiKey::Push);
        loop {
            let resp = match next_delivery(&sub, &source).await {
                None => return,
                Some(Err(e)) => {
                    if !sub.cancelled.get() && !self.closed.get() {
                        self.end_subscription(id, ver, &(&e).to_wire());
                    }
                    return;
                }
                Some(Ok(r)) => r,
            };
            // Encrypted topics: open the sealed batches (the subscriber passed the ACL check).
            let opened = match &opener {
                None => Ok(resp.chunks.clone()),
                Some(o) => o.open(&resp.chunks),
            };
            let chunks = match opened {
                Ok(c) => c,
                Err(er) => {
                    self.end_subscription(id, ver, &er);
                    return;
                }
            };
            let batches = single_batches(&chunks);
            if !self.push_within_credit(id, ver, &sub, batches, &resp).await {
                return;
            }
        }
    }

    /// Sends a PUSH|ERROR frame for the subscription and forgets it.
    pub(super) fn end_subscription(&self, id: u32, ver: u16, er: &ErrorResponse) {
        let mut buf = FrameBuf::new();
        if self
            .encoder
            .borrow_mut()
            .push_error(&mut buf, id, ver, er)
            .is_ok()
        {
            self.enqueue(Out::Flat(buf));
        }
        self.subs.borrow_mut().remove(&id);
    }

    /// Pushes `batches` as the subscription's credit allows, waiting for grants. False when the
    /// subscription or the connection ended meanwhile.
    pub(super) async fn push_within_credit(
        &self,
        id: u32,
        ver: u16,
        sub: &Sub,
        mut batches: VecDeque<(Bytes, PushCost, u64)>,
        resp: &shardline_engine::FetchResponse,
    ) -> bool {
        while !batches.is_empty() {
            if sub.cancelled.get() || self.closed.get() {
                return false;
            }
            // Records delivered = those at or after the subscriber's position.
            let pos = sub.position.get();
            let costs: Vec<PushCost> = batches
                .iter()
                .map(|(b, c, next)| {
                    let base = BatchHeader::parse(b).map_or(*next, |h| h.base_offset);
                    PushCost {
                        records: next.saturating_sub(base.max(pos)),
                        bytes: c.bytes,
                    }
                })
                .collect();
            let n = sub.window.borrow().fit(costs.iter().copied());
            if n == 0 {
                let seen = sub.changed.version();
                sub.changed.changed(seen).await;
                continue;
            }
            let cost = costs[..n]
                .iter()
                .fold(PushCost::default(), |a, c| PushCost {
                    records: a.records + c.records,
                    bytes: a.bytes + c.bytes,
                });
            sub.window.borrow_mut().consume(n, cost);
            let taken: Vec<(Bytes, PushCost, u64)> = batches.drain(..n).collect();
            let next_offset = taken.last().map_or(pos, |t| t.2);
            let push = Push {
                subscription_id: id,
                records: u32::try_from(cost.records).unwrap_or(u32::MAX),
                next_offset,
                high_watermark: resp.high_watermark.max(next_offset),
                log_start: resp.log_start,
                chunks: taken.into_iter().map(|t| t.0).collect(),
            };
            sub.position.set(next_offset);
            if !self.wait_for_fetch_quota(sub, cost.bytes).await {
                return false;
            }
            self.wait_for_outbox_space().await;
            match self.encoder.borrow_mut().push_parts(ver, &push) {
                Ok(p) => self.enqueue(Out::Parts(p)),
                Err(e) => tracing::warn!(error = %e, "push too large for the peer"),
            }
        }
        true
    }

    /// Fetch quota: pushes of a principal over its rate wait instead of being refused; then
    /// `bytes` are charged. False when the subscription or the connection ended meanwhile.
    pub(super) async fn wait_for_fetch_quota(&self, sub: &Sub, bytes: u64) -> bool {
        if !self.shared.quotas.rates_enabled() {
            return true;
        }
        let key = self.auth.quota_key();
        let dir = crate::quota::Direction::Fetch;
        while let Err(back_off) = self.shared.quotas.check(&key, dir, Instant::now()) {
            rt::sleep(back_off).await;
            if sub.cancelled.get() || self.closed.get() {
                return false;
            }
        }
        self.shared.quotas.charge(&key, dir, bytes, Instant::now());
        true
    }
}

/// The subscription's next delivery, or `None` once it is cancelled.
pub(super) async fn next_delivery(
    sub: &Sub,
    source: &Subscription,
) -> Option<shardline_engine::Result<shardline_engine::FetchResponse>> {
    futures_lite::future::or(async { Some(source.recv_async().await) }, async {
        while !sub.cancelled.get() {
            let seen = sub.changed.version();
            sub.changed.changed(seen).await;
        }
        None
    })
    .await
}

/// Splits chunks into single batches so that the credit can be honoured batch by batch:
/// (batch, its byte cost, the offset after it).
pub(super) fn single_batches(chunks: &[Bytes]) -> VecDeque<(Bytes, PushCost, u64)> {
    let mut batches = VecDeque::new();
    for chunk in chunks {
        let mut at = 0;
        while at < chunk.len() {
            let Ok(h) = BatchHeader::parse(&chunk[at..]) else {
                break;
            };
            let len = h.batch_length as usize;
            // A zero length would never advance (the log validates batches; this is the
            // guard against a loop should one ever get through).
            if len == 0 || at + len > chunk.len() {
                break;
            }
            batches.push_back((
                chunk.slice(at..at + len),
                PushCost {
                    records: 0,
                    bytes: len as u64,
                },
                h.next_offset(),
            ));
            at += len;
        }
    }
    batches
}

/// The engine's isolation for a read's wire isolation (docs/semantics.md, "What readers see").
pub(super) fn engine_isolation(i: crate::protocol::ReadIsolation) -> shardline_engine::Isolation {
    match i {
        crate::protocol::ReadIsolation::Appended => shardline_engine::Isolation::Appended,
        crate::protocol::ReadIsolation::Durable => shardline_engine::Isolation::Durable,
    }
}

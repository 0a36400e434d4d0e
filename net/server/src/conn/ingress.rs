//! What a client may not put in a batch (issue 16, finding 3): the flags and ids the broker
//! relies on are the broker's to set. The sealed (encrypted) flag comes only from the broker's
//! own encryption at rest; a producer id only from InitProducer. A batch that breaks either is
//! refused alone, before it reaches a partition, so it can never poison the log for readers.

use shardline_engine::batch::{BatchHeader, flags};
use shardline_engine::{Engine, Error};

/// Checks the client-controlled header fields the broker trusts later. Bytes whose header does
/// not parse are left to the engine's own validation (which refuses them with a clear error).
pub(super) fn check(engine: &Engine, batch: &[u8]) -> Result<(), Error> {
    let Ok(h) = BatchHeader::parse(batch) else {
        return Ok(());
    };
    if h.flags & flags::ENCRYPTED != 0 {
        return Err(Error::InvalidArgument(
            "the encrypted flag is set by the broker only (topics are encrypted at rest by the \
             broker, configure [server.encryption])"
                .into(),
        ));
    }
    // On a cluster the id may come from another node's InitProducer (the producer follows
    // its partitions' leaders): this node's allocator cannot tell (issue 14; until the
    // controller hands out id blocks, the check holds on a single node only).
    if h.producer.producer_id != 0
        && engine.cluster_node_id().is_none()
        && !engine.producer_id_allocated(h.producer.producer_id)
    {
        return Err(Error::InvalidArgument(format!(
            "producer id {} was not allocated by this broker (InitProducer)",
            h.producer.producer_id
        )));
    }
    Ok(())
}

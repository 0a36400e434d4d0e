"""confluent-kafka: idempotent producer (acks=all) with gzip and zstd, then a plain consumer
reads everything back. Usage: ck_produce_consume.py BOOTSTRAP TOPIC COUNT. Prints 'ok N'."""
import sys

from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sent = set()
for codec in ("gzip", "zstd"):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": codec,
        "linger.ms": 5,
    })
    errors = []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))

    for i in range(count):
        v = f"{codec}-{i}"
        p.produce(topic, value=v.encode(), key=str(i % 7).encode(), on_delivery=delivered)
        sent.add(v)
        p.poll(0)
    left = p.flush(30)
    if left or errors:
        print(f"produce failed: {left} undelivered, errors {errors[:3]}")
        sys.exit(1)

c = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "unused",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
})
meta = c.list_topics(topic, timeout=10)
parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
c.assign(parts)
seen = []
empty = 0
while len(seen) < len(sent) and empty < 20:
    m = c.poll(0.5)
    if m is None:
        empty += 1
        continue
    if m.error():
        print(f"consume error: {m.error()}")
        sys.exit(1)
    seen.append(m.value().decode())
c.close()
if sorted(seen) != sorted(sent):
    print(f"mismatch: sent {len(sent)}, seen {len(seen)} ({len(set(seen))} distinct)")
    sys.exit(1)
print(f"ok {len(seen)}")

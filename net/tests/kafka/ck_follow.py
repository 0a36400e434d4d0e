"""confluent-kafka: one producer (one connection to the broker) writes PER_PHASE messages to
partition 0, then to 1, then 0, then 1 of TOPIC in requests of at most 5 messages (acks=all,
5 in flight), waiting for every delivery between phases; then a consumer reads both partitions
back: each must hold exactly its messages, in order. Used by kafka_handoff.rs (the connection
follows its partition to the owning shard). Usage: ck_follow.py BOOTSTRAP TOPIC PER_PHASE.
Prints 'ok N'."""
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, topic, per = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = Producer({
    "bootstrap.servers": bootstrap,
    "acks": "all",
    "enable.idempotence": False,
    "linger.ms": 0,
    "batch.num.messages": 5,
    "max.in.flight": 5,
})
errors = []


def delivered(err, msg):
    if err is not None:
        errors.append(str(err))


want = {0: [], 1: []}
for phase, part in enumerate((0, 1, 0, 1)):
    for i in range(per):
        v = f"{phase}-{i}"
        p.produce(topic, value=v.encode(), partition=part, on_delivery=delivered)
        want[part].append(v)
        p.poll(0)
    left = p.flush(30)
    if left or errors:
        print(f"produce failed in phase {phase}: {left} undelivered, errors {errors[:3]}")
        sys.exit(1)

c = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "unused",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
})
c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
seen = {0: [], 1: []}
deadline = time.time() + 30
while time.time() < deadline and sum(map(len, seen.values())) < 4 * per:
    m = c.poll(1.0)
    if m is None or m.error():
        continue
    seen[m.partition()].append(m.value().decode())
c.close()
for part in (0, 1):
    if seen[part] != want[part]:
        print(f"partition {part}: sent {len(want[part])}, read {len(seen[part])}, first difference "
              f"{next((i for i, (a, b) in enumerate(zip(seen[part], want[part])) if a != b), None)}")
        sys.exit(1)
print(f"ok {4 * per}")

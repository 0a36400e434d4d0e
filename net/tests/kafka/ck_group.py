"""confluent-kafka: a consumer group of two members; B leaves after its share of the first
reads, A rebalances and reads the rest. Offsets are committed synchronously after each batch,
so across the commit points nothing may be lost or seen twice.
Usage: ck_group.py BOOTSTRAP TOPIC COUNT. Prints 'ok N'."""
import sys
import time

from confluent_kafka import Consumer, Producer

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
for i in range(count):
    p.produce(topic, value=str(i).encode(), key=str(i).encode())
assert p.flush(30) == 0, "undelivered"


def member(name):
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "ck-group",
        "client.id": name,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    })


a, b = member("a"), member("b")
a.subscribe([topic])
b.subscribe([topic])
seen = []
by = {"a": 0, "b": 0}


def take(c, name):
    msgs = c.consume(num_messages=50, timeout=0.2)
    got = 0
    for m in msgs:
        if m.error():
            continue
        seen.append(int(m.value()))
        got += 1
    if got:
        c.commit(asynchronous=False)
        by[name] += got
    return got


deadline = time.time() + 90
# Both members read until B has read something and a third of the records are in.
while time.time() < deadline and (by["b"] == 0 or len(seen) < count // 3):
    take(a, "a")
    take(b, "b")
b.close()  # leaves the group: A is rebalanced onto every partition
idle = 0
while time.time() < deadline and len(seen) < count and idle < 100:
    idle = 0 if take(a, "a") else idle + 1
a.close()
if sorted(seen) != list(range(count)):
    dups = len(seen) - len(set(seen))
    print(f"mismatch: {len(set(seen))} distinct of {count}, {dups} seen twice, by member {by}")
    sys.exit(1)
if by["b"] == 0 or by["a"] == 0:
    print(f"one member read nothing: {by}")
    sys.exit(1)
print(f"ok {len(seen)}")

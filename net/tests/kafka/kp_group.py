"""kafka-python 3.x: the default producer (idempotent, acks=all) and a group consumer that
commits; a second consumer of the same group then finds nothing left.
Usage: kp_group.py BOOTSTRAP TOPIC COUNT. Prints 'ok N'."""
import sys

from kafka import KafkaConsumer, KafkaProducer

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = KafkaProducer(bootstrap_servers=bootstrap)
for f in [p.send(topic, value=f"kpg-{i}".encode()) for i in range(count)]:
    f.get(timeout=30)
p.close()


def consume():
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="kp-group",
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=4000)
    got = []
    for m in c:
        got.append(m.value.decode())
        if len(got) % 100 == 0:
            c.commit()
    c.commit()
    c.close()
    return got


first = consume()
second = consume()
if sorted(first) != sorted(f"kpg-{i}" for i in range(count)) or second:
    print(f"mismatch: first {len(first)}, second {len(second)}")
    sys.exit(1)
print(f"ok {len(first)}")

"""kafka-python 3.x: the default producer (idempotent, acks=all), then a KafkaConsumer with
manual assignment reads everything back. Usage: kp_produce.py BOOTSTRAP TOPIC COUNT."""
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = KafkaProducer(bootstrap_servers=bootstrap)
futures = [p.send(topic, value=f"kp-{i}".encode()) for i in range(count)]
for f in futures:
    f.get(timeout=30)
p.flush()
p.close()

c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                  auto_offset_reset="earliest", consumer_timeout_ms=5000)
parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
c.assign(parts)
c.seek_to_beginning()
seen = [m.value.decode() for m in c]
c.close()
want = sorted(f"kp-{i}" for i in range(count))
if sorted(seen) != want:
    print(f"mismatch: sent {count}, seen {len(seen)}")
    sys.exit(1)
print(f"ok {len(seen)}")

"""confluent-kafka against a Shardline cluster (net/tests/kafka_cluster.rs).

  ck_cluster.py create BOOTSTRAP TOPIC PARTITIONS RF   AdminClient CreateTopics; prints 'ok'
                                                       or 'error CODE_NAME'
  ck_cluster.py produce BOOTSTRAP TOPIC PARTITIONS N RATE
      idempotent producer, acks=all: id i goes to partition i % PARTITIONS, at most RATE a
      second; prints 'acked ID PARTITION OFFSET' per delivery (flushed at once, so that the
      test can act mid-stream), 'failed ID ERROR' per failure, then 'done'.
  ck_cluster.py consume BOOTSTRAP TOPIC GROUP COUNT SECONDS
      group consumer (subscribe) from the earliest offset until COUNT records were read or
      SECONDS passed; prints 'rec PARTITION OFFSET VALUE' per record, then 'done'.
"""
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def create(bootstrap, topic, partitions, rf):
    a = AdminClient({"bootstrap.servers": bootstrap})
    fs = a.create_topics([NewTopic(topic, int(partitions), int(rf))], request_timeout=20)
    try:
        fs[topic].result(30)
        out("ok")
    except KafkaException as e:
        out(f"error {e.args[0].name()}")


def produce(bootstrap, topic, partitions, n, rate):
    partitions, n, rate = int(partitions), int(n), float(rate)
    p = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 45000,
        "retry.backoff.ms": 100,
        "topic.metadata.refresh.interval.ms": 1000,
    })

    def delivered(err, msg):
        i = int(msg.value().decode().split("-")[1])
        if err is None:
            out(f"acked {i} {msg.partition()} {msg.offset()}")
        else:
            out(f"failed {i} {err.name()}")

    start = time.monotonic()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=f"id-{i}".encode(), partition=i % partitions,
                          on_delivery=delivered)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        ahead = (i + 1) / rate - (time.monotonic() - start)
        if ahead > 0:
            p.poll(ahead)
    left = p.flush(50)
    out(f"done {left}")


def consume(bootstrap, topic, group, count, seconds):
    count, seconds = int(count), float(seconds)
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
    })
    c.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + seconds
    while seen < count and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            out(f"error {m.error()}")
            continue
        seen += 1
        out(f"rec {m.partition()} {m.offset()} {m.value().decode()}")
    c.close()
    out("done")


if __name__ == "__main__":
    {"create": create, "produce": produce, "consume": consume}[sys.argv[1]](*sys.argv[2:])

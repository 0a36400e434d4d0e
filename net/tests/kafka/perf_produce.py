"""Throughput of the Kafka listener with confluent-kafka (librdkafka) producers, for
docs/performance.md: PRODUCERS processes, producer i writes partition i of TOPIC, SIZE-byte
values, batches of 64 (batch.num.messages=64), acks=all, for SECONDS.
Usage: perf_produce.py BOOTSTRAP TOPIC SECONDS SIZE PRODUCERS
Prints one line: msgs/s, MiB/s, delivery latency p50/p99 ms."""
import multiprocessing as mp
import sys
import time

from confluent_kafka import Producer


def run(bootstrap, topic, seconds, size, partition, out):
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "batch.num.messages": 64,
        "linger.ms": 1,
        "queue.buffering.max.messages": 64 * 16,
        "max.in.flight.requests.per.connection": 5,
        "compression.type": "none",
    })
    value = b"x" * size
    lat = []
    done = [0]

    def delivered(err, msg, t0=None):
        if err is None:
            done[0] += 1

    end = time.time() + seconds
    sent = 0
    while time.time() < end:
        t0 = time.perf_counter()
        try:
            p.produce(topic, value=value, partition=partition,
                      on_delivery=lambda e, m, t0=t0: (delivered(e, m), lat.append(time.perf_counter() - t0)))
            sent += 1
        except BufferError:
            p.poll(0.001)
            continue
        if sent % 64 == 0:
            p.poll(0)
    p.flush(30)
    out.put((done[0], lat[:: max(1, len(lat) // 20000)]))


if __name__ == "__main__":
    bootstrap, topic, seconds, size, producers = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    q = mp.Queue()
    procs = [mp.Process(target=run, args=(bootstrap, topic, seconds, size, i, q)) for i in range(producers)]
    t = time.time()
    for pr in procs:
        pr.start()
    results = [q.get() for _ in procs]
    for pr in procs:
        pr.join()
    elapsed = time.time() - t
    n = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    p50 = lat[len(lat) // 2] * 1000 if lat else 0
    p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else 0
    print(f"msgs={n} msgs_per_s={n / seconds:.0f} mib_per_s={n * size / seconds / 2**20:.1f} "
          f"p50_ms={p50:.2f} p99_ms={p99:.2f} wall_s={elapsed:.1f}")

import json,sys
for f in sys.argv[1:]:
    d=json.load(open(f)); ts=d['timeseries']
    rx=ts['received_msgs']; w=int(ts['warmup_end_s']); e=int(ts['end_s'])
    win=rx[w:e] if e>w else rx
    rate=24414
    mn=min(win) if win else 0
    p=d['publish_latency_us']; q=d['e2e_latency_us']; s=d['send_to_ack_latency_us']
    print(f"{f.split('/')[-1]:28s} pub p50 {p['p50']/1000:7.2f} p99 {p['p99']/1000:8.2f} | s2a p50 {s['p50']/1000:6.2f} | e2e p50 {q['p50']/1000:7.2f} p99 {q['p99']/1000:8.2f} max {q['max']/1000:8.1f} ms | rx/s min {mn} max {max(win) if win else 0} deficit {max(0,rate-mn)/rate*1000:.0f} ms | {' '.join(str(x) for x in win)}")

import json,glob,statistics as st,re
rows={}
for f in sorted(glob.glob('/tmp/pd-runs/r[0-9]-*-*.json')):
    m=re.search(r'r(\d)-(before|after)-(busy|quiet)',f); r,v,b=m.groups()
    d=json.load(open(f)); ts=d['timeseries']; rx=ts['received_msgs']; w=int(ts['warmup_end_s']); e=int(ts['end_s']); win=rx[w:e]
    mn=min(win); deficit=max(0,24414-mn)/24414*1000
    p=d['publish_latency_us']; q=d['e2e_latency_us']
    rows.setdefault((v,b),[]).append((p['p50']/1000,p['p99']/1000,q['p50']/1000,q['p99']/1000,q['max']/1000,mn,deficit,r))
for k in [('before','quiet'),('after','quiet'),('before','busy'),('after','busy')]:
    if k not in rows: continue
    rs=rows[k]
    med=[st.median(x[i] for x in rs) for i in range(7)]
    each=lambda i: ' '.join(f'{x[i]:.1f}' if isinstance(x[i],float) else str(x[i]) for x in rs)
    print(f"| {k[0]}, {k[1]} | {med[0]:.1f} [{each(0)}] | {med[1]:.0f} [{each(1)}] | {med[2]:.1f} [{each(2)}] | {med[3]:.0f} [{each(3)}] | {med[4]:.0f} | {med[5]:.0f} [{each(5)}] | {med[6]:.0f} |")

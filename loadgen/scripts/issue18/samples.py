import sys,re
for f in sys.argv[1:]:
    rows=[];cur=None
    for line in open(f):
        if line.startswith('T '):
            if cur and 'p' in cur and 'f' in cur: rows.append(cur)
            cur={'t':float(line.split()[1])}
        elif cur is not None:
            v=int(float(line.split()[-1]))
            if 'produced_records' in line: cur['p']=v
            elif 'fetched_records' in line: cur['f']=v
            elif 'log_end' in line: cur['w']=v
            elif 'durable' in line: cur['d']=v
    if not rows: print(f,'no samples'); continue
    lag=[r['p']-r['f'] for r in rows if r['p']>0]
    wl=[r['p']-r.get('w',r['p']) for r in rows if r['p']>0]
    gaps=[]
    for a,b in zip(rows,rows[1:]):
        if b['f']==a['f'] and b['p']>a['p']: gaps.append(b['t']-a['t'])
    print(f"{f.split('/')[-1]}: samples {len(rows)} server-side lag (produced-fetched) records max {max(lag)} median {sorted(lag)[len(lag)//2]}; produced-written max {max(wl)}; sample interval max {max(b['t']-a['t'] for a,b in zip(rows,rows[1:])):.2f}s")

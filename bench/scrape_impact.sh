#!/bin/bash
# Scrape impact on the data path (docs/performance.md, "Operations: scrape impact"): a release
# server, the scrape_impact example producing for 8 s, interleaved without and with a curl loop
# scraping /metrics every SCRAPE_SLEEP seconds (default 0.1). Needs curl.
set -u
BIN=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-target/scrape-impact}; rm -rf $OUT; mkdir -p $OUT
D=$(mktemp -d /var/tmp/slbench.XXXX)
$BIN/shardline serve --data-dir $D --listen 127.0.0.1:0 --shards 2 --metrics-listen 127.0.0.1:0 > $OUT/serve.out 2> $OUT/serve.err &
SPID=$!
for i in $(seq 50); do [ -s $OUT/serve.out ] && break; sleep 0.1; done
A=$(sed 's/shardline listening on //' $OUT/serve.out)
M=$(grep -o 'metrics endpoint listening addr=[0-9.:]*' $OUT/serve.err | sed 's/.*addr=//')
scraper() { while :; do curl -s -o /dev/null -w '%{time_total}\n' http://$M/metrics >> $OUT/scrape_times.txt; sleep ${SCRAPE_SLEEP:-0.1}; done; }
for round in 1 2; do
  echo "plain   $($BIN/examples/scrape_impact $A 8)"
  scraper & SC=$!
  echo "scraped $($BIN/examples/scrape_impact $A 8)"
  kill $SC; wait $SC 2>/dev/null
done
echo "scrapes: $(wc -l < $OUT/scrape_times.txt), seconds p50/max: $(sort -n $OUT/scrape_times.txt | awk '{a[NR]=$1} END {print a[int(NR/2)+1], a[NR]}'), body bytes $(curl -s http://$M/metrics | wc -c)"
kill $SPID; wait $SPID
rm -rf $D

#!/usr/bin/env bash
# Builds librdkafka's own benchmark client, examples/rdkafka_performance.c, against the librdkafka
# that the confluent-kafka wheel bundles (2.16 with confluent-kafka 2.16.x), without root and
# without librdkafka-dev: the headers and the example come from a librdkafka source tree, the
# library from the wheel (confluent_kafka.libs/librdkafka-*.so*, linked with an rpath).
#
#   LIBRDKAFKA_SRC=<librdkafka checkout or release tarball dir> \
#     net/tests/kafka/build_rdkafka_performance.sh [OUT]      # OUT: target/rdkafka_performance
#
# A git checkout is read at $LIBRDKAFKA_TAG (default v2.15.0, the newest tag at or below the
# bundled 2.16; the example only uses long-stable API). Needs gcc and python3 with
# confluent-kafka. Used by measure.sh (docs/performance.md, "Kafka listener vs the native
# protocol").
set -euo pipefail
SRC=${LIBRDKAFKA_SRC:?set LIBRDKAFKA_SRC to a librdkafka source tree or git checkout}
TAG=${LIBRDKAFKA_TAG:-v2.15.0}
OUT=${1:-target/rdkafka_performance}
LIBDIR=$(python3 -c 'import confluent_kafka, os; d = os.path.dirname(confluent_kafka.__file__); print(d + ".libs")')
LIB=$(ls "$LIBDIR"/librdkafka*.so* | head -1)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$SRC" archive "$TAG" src examples | tar -x -C "$WORK"
else
  cp -r "$SRC/src" "$SRC/examples" "$WORK/"
fi
# The example includes the tree's private rd.h, which wants the configure-generated config.h;
# nothing the example uses depends on it.
touch "$WORK/config.h" "$WORK/src/config.h"
mkdir -p "$(dirname "$OUT")"
gcc -O2 -I"$WORK/src" -I"$WORK" "$WORK/examples/rdkafka_performance.c" -o "$OUT" \
  "$LIB" -Wl,-rpath,"$LIBDIR" -lpthread -lm
{ "$OUT" -h 2>&1 || true; } | grep -m1 "librdkafka version"

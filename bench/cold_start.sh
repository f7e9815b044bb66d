#!/usr/bin/env bash
# Cold start of the compose stack's pieces, on the embedded broker: an empty log, the trainer
# service, loadgen producing its 8,000-interaction history, and a worker that waits for the first
# model as the compose worker does (polling every 5 s). Prints when the first model appeared and
# when the first result was published, counted from the trainer's start.
# Usage: bash bench/cold_start.sh   (WORK=DIR to keep the logs elsewhere than var/bench/cold-start)
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
W=${WORK:-var/bench/cold-start}; rm -rf $W; mkdir -p $W/models
PORT=$($PY -c "from streams.ports import free_port; print(free_port())")
$PY -m streams broker --port $PORT > $W/broker.log 2>&1 &
BROKER=$!
sleep 3
export RERANKER_BROKER=127.0.0.1:$PORT RERANKER_PROFILE=embedded
T0=$(date +%s.%N); echo "t0 $T0"
$PY -m streams train-service --every 10m --models-dir $W/models --metrics-port 0 > $W/trainer.log 2>&1 &
TRAINER=$!
$PY -m streams loadgen --rate 20 --duration 100 --history 8000 > $W/loadgen.log 2>&1 &
LOADGEN=$!
( until ls $W/models/*/manifest.json >/dev/null 2>&1; do sleep 5; done
  echo "model_seen $(date +%s.%N)"
  exec $PY -m streams worker --model $W/models --metrics-port 0 --data-dir $W/data ) > $W/worker.log 2>&1 &
WORKER=$!
wait $LOADGEN
$PY - <<PY
import glob, os
import orjson
from streams.settings import Settings
from streams.kafka.clients import read_topic
s = Settings.load(env={"RERANKER_BROKER": "127.0.0.1:$PORT", "RERANKER_PROFILE": "embedded"})
rows, _ = read_topic(s, s.results_topic)
ts = sorted(orjson.loads(v)["ts"] for _, _, v in rows)
manifests = glob.glob("$W/models/*/manifest.json")
first_model = min(os.path.getmtime(m) for m in manifests) if manifests else None
print("first_model_published_after_s", round(first_model - $T0, 1) if first_model else None)
print("results", len(ts), "first_result_after_s", round(ts[0] - $T0, 1) if ts else None)
PY
grep -h "model_seen\|published\|promoted\|skipped\|retry\|trainer:" $W/worker.log $W/trainer.log | head -20
tail -3 $W/loadgen.log
kill $TRAINER $WORKER 2>/dev/null; pkill -f "streams worker --model $W" ; kill $BROKER; wait 2>/dev/null

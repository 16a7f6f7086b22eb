# The quick tour: the random tiny model (configs/tiny.yaml: 2 shards, slices of 16; its store is
# ./sisa-store-tiny). Run it from the repository root after `make install` and
# `source .venv/bin/activate`, line by line or as `bash docs/tour/tour.sh`.
# docs/tour/record.py runs these lines top to bottom in a temp folder and writes transcript.txt,
# which the docs show; tests/docs/test_tour.py runs it again and compares.
sisa synth --people 30 --out people.jsonl --probes probes.jsonl
sisa ingest people.jsonl --config configs/tiny.yaml
sisa ingest people.jsonl --config configs/tiny.yaml  # again: nothing new, nothing changes
sisa status --config configs/tiny.yaml
sisa train --config configs/tiny.yaml
sisa forget --subject person-00003 --dry-run --config configs/tiny.yaml
sisa forget --subject person-00003 --fast --config configs/tiny.yaml
sisa requests --config configs/tiny.yaml
sisa requests --json --config configs/tiny.yaml | python -c 'import json, sys; print(json.load(sys.stdin)[0]["request_id"])' > request.txt
sisa certificate "$(cat request.txt)" --config configs/tiny.yaml
sisa verify --replay --config configs/tiny.yaml
sisa versions --config configs/tiny.yaml
sisa rollback 1 --config configs/tiny.yaml  # refused: version 1 held the person
echo '{"record_id": "person-00005-job", "text": "Mrs. Andrea Shelton works as a pilot.", "prompt": "Mrs. Andrea Shelton works as a", "answer": " pilot."}' > fix.jsonl
sisa rectify --file fix.jsonl --queue --config configs/tiny.yaml
sisa forget --subject person-00007 --queue --config configs/tiny.yaml
sisa requests --config configs/tiny.yaml
sisa process --config configs/tiny.yaml
sisa verify --config configs/tiny.yaml
sisa versions --config configs/tiny.yaml

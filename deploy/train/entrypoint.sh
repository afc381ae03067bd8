#!/usr/bin/env bash
# Daily retrain of the train image: prepare -> fit -> evaluate (quality gate) -> index build + publish.
#
# With arguments, runs them instead (`docker run m2grl-train m2grl-index list /data/indexes`).
# Configuration is by environment (the CronJob's ConfigMap m2grl-retrain):
#   DATASET        required: movielens | tmall | taobao | generic | synth (m2grl-train prepare --dataset)
#   DATA_PATH      raw data file or folder (required, except DATASET=synth: generated there when missing)
#   DATA_ROOT      shared volume, default /data; the next four default below it
#   PREPARED_DIR   $DATA_ROOT/prepared/$DATASET (replaced atomically each run)
#   ARTIFACT_ROOT  $DATA_ROOT/artifacts (m2grl-train fit --out; one version per run)
#   INDEX_ROOT     $DATA_ROOT/indexes (m2grl-index build --out; CURRENT is what the service follows)
#   REPORT_ROOT    $DATA_ROOT/reports (metrics.json per artifact version; artifact folders are checksummed
#                  and must hold exactly what their manifest lists, so reports live beside them)
#   EPOCHS         training epochs (default: the model's); THREADS (default 0 = all cores)
#   EVAL_METHODS   default m2grl,popularity; SKIP_EVAL=1 skips evaluation and the gate
#   EVAL_K         default 10,20,50; the gate reads hr@ of the largest K
#   GATE_MIN_HR    publish only if m2grl's hr@K >= this (default: unset = no floor)
#   GATE_BEAT_POPULARITY  default 1: publish only if m2grl's hr@K > popularity's (when both were evaluated)
#   KEEP_INDEXES   published index versions to keep (default 3); KEEP_ARTIFACTS artifact versions (default 7)
#   PREPARE_ARGS, FIT_ARGS, EVAL_ARGS, INDEX_ARGS   extra flags, split on spaces
#   SYNTH_ITEMS, SYNTH_USERS, SYNTH_EVENTS           size of a generated synth log (DATASET=synth)
#   DRY_RUN=1      print the commands instead of running them
#
# Publication is `m2grl-index build`: it recall-checks the new version and replaces INDEX_ROOT/CURRENT
# atomically. Serving pods follow CURRENT by polling (M2GRL_RELOAD_POLL_SECONDS), so this job needs no
# Kubernetes API access and no admin token: POST /admin/reload through the Service would reach only one
# replica, and reaching all of them would need pod-list RBAC. A failed step exits non-zero before
# publication, so CURRENT keeps naming the last good version.
set -euo pipefail

if [[ $# -gt 0 ]]; then
    exec "$@"
fi

log() { printf '%s m2grl-retrain: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() {
    log "error: $*"
    exit 2
}

run() {
    log "+ $*"
    if [[ "${DRY_RUN:-0}" != "1" ]]; then
        "$@"
    fi
}

: "${DATASET:?DATASET must be set (movielens, tmall, taobao, generic or synth)}"
case "$DATASET" in
    movielens | tmall | taobao | generic | synth) ;;
    *) die "DATASET=$DATASET: expected movielens, tmall, taobao, generic or synth" ;;
esac
DATA_ROOT="${DATA_ROOT:-/data}"
DATA_PATH="${DATA_PATH:-}"
PREPARED_DIR="${PREPARED_DIR:-$DATA_ROOT/prepared/$DATASET}"
ARTIFACT_ROOT="${ARTIFACT_ROOT:-$DATA_ROOT/artifacts}"
INDEX_ROOT="${INDEX_ROOT:-$DATA_ROOT/indexes}"
REPORT_ROOT="${REPORT_ROOT:-$DATA_ROOT/reports}"
THREADS="${THREADS:-0}"
EVAL_METHODS="${EVAL_METHODS:-m2grl,popularity}"
EVAL_K="${EVAL_K:-10,20,50}"
GATE_MIN_HR="${GATE_MIN_HR:-}"
GATE_BEAT_POPULARITY="${GATE_BEAT_POPULARITY:-1}"
KEEP_INDEXES="${KEEP_INDEXES:-3}"
KEEP_ARTIFACTS="${KEEP_ARTIFACTS:-7}"
for name in THREADS KEEP_INDEXES KEEP_ARTIFACTS; do
    [[ "${!name}" =~ ^[0-9]+$ ]] || die "$name=${!name}: expected a non-negative integer"
done
[[ "$KEEP_INDEXES" -ge 1 && "$KEEP_ARTIFACTS" -ge 1 ]] || die "KEEP_INDEXES and KEEP_ARTIFACTS must be >= 1"
if [[ -n "${EPOCHS:-}" && ! "$EPOCHS" =~ ^[1-9][0-9]*$ ]]; then
    die "EPOCHS=$EPOCHS: expected a positive integer"
fi
# Unquoted on purpose below: extra flags are words separated by spaces.
read -r -a prepare_args <<<"${PREPARE_ARGS:-}"
read -r -a fit_args <<<"${FIT_ARGS:-}"
read -r -a eval_args <<<"${EVAL_ARGS:-}"
read -r -a index_args <<<"${INDEX_ARGS:-}"
dry() { [[ "${DRY_RUN:-0}" == "1" ]]; }

started=$SECONDS
log "dataset $DATASET from ${DATA_PATH:-<none>}; artifacts $ARTIFACT_ROOT; indexes $INDEX_ROOT"

# 0. A synthetic log, generated once (DATASET=synth is for smoke tests of a deployment).
if [[ "$DATASET" == "synth" ]]; then
    [[ -n "$DATA_PATH" ]] || DATA_PATH="$DATA_ROOT/raw/synth"
    if [[ ! -e "$DATA_PATH" ]]; then
        run m2grl-train synth --items "${SYNTH_ITEMS:-20000}" --users "${SYNTH_USERS:-5000}" \
            --events "${SYNTH_EVENTS:-500000}" --out "$DATA_PATH"
    fi
elif [[ -z "$DATA_PATH" ]]; then
    die "DATA_PATH must name the raw $DATASET data (the job downloads nothing)"
elif ! dry && [[ ! -e "$DATA_PATH" ]]; then
    die "DATA_PATH=$DATA_PATH does not exist"
fi

# 1. Prepare: clean, split, sessionise, per-view graphs. --force replaces the previous run's folder atomically.
run m2grl-train prepare --dataset "$DATASET" --path "$DATA_PATH" --out "$PREPARED_DIR" --force \
    "${prepare_args[@]}"

# 2. Fit: a new immutable artifact version; its folder is the last line on stdout.
fit_cmd=(m2grl-train fit --data "$PREPARED_DIR" --out "$ARTIFACT_ROOT" --threads "$THREADS" --no-plots)
[[ -n "${EPOCHS:-}" ]] && fit_cmd+=(--epochs "$EPOCHS")
fit_cmd+=("${fit_args[@]}")
if dry; then
    run "${fit_cmd[@]}"
    artifact="$ARTIFACT_ROOT/<new-version>"
else
    log "+ ${fit_cmd[*]}"
    artifact="$("${fit_cmd[@]}" | tail -n 1)"
    [[ -f "$artifact/manifest.json" ]] || die "m2grl-train fit did not report an artifact folder (got '$artifact')"
fi
version="$(basename "$artifact")"
log "artifact $artifact"

# 3. Evaluate (paper Sec. 5.1 protocol) and gate: a regressed model is never published.
if [[ "${SKIP_EVAL:-0}" != "1" ]]; then
    report="$REPORT_ROOT/$version/metrics.json"
    run m2grl-train evaluate --data "$PREPARED_DIR" --artifact "$artifact" --methods "$EVAL_METHODS" \
        --k "$EVAL_K" --out "$report" "${eval_args[@]}"
    if ! dry; then
        GATE_MIN_HR="$GATE_MIN_HR" GATE_BEAT_POPULARITY="$GATE_BEAT_POPULARITY" python - "$report" <<'PY'
import json, os, sys

path = sys.argv[1]
result = json.load(open(path))
k = max(result["protocol"]["ks"])
methods = result["methods"]
m2grl = methods.get("m2grl", {})
if f"hr@{k}" not in m2grl:
    sys.exit(f"gate: {path} has no m2grl hr@{k} (skipped: {m2grl.get('skipped', '?')})")
hr = m2grl[f"hr@{k}"]
problems = []
floor = os.environ.get("GATE_MIN_HR", "").strip()
if floor and hr < float(floor):
    problems.append(f"hr@{k} {hr:.4f} < GATE_MIN_HR {float(floor):.4f}")
pop = methods.get("popularity", {}).get(f"hr@{k}")
if os.environ.get("GATE_BEAT_POPULARITY") == "1" and pop is not None and hr <= pop:
    problems.append(f"hr@{k} {hr:.4f} does not beat popularity's {pop:.4f}")
if problems:
    sys.exit("gate: not publishing: " + "; ".join(problems))
print(f"gate: passed, m2grl hr@{k} {hr:.4f}" + (f" (popularity {pop:.4f})" if pop is not None else ""),
      file=sys.stderr)
PY
    fi
fi

# 4. Build, recall-check and publish (CURRENT is swapped atomically; exit 1 = recall target missed).
run m2grl-index --quiet build --artifact "$artifact" --out "$INDEX_ROOT" --keep "$KEEP_INDEXES" \
    --threads "$THREADS" "${index_args[@]}"

# 5. Retention of artifact versions: the index versions carry their own vectors, so old artifacts are only
# history. Renamed to .tmp-* first, which every reader ignores, then removed.
if ! dry; then
    KEEP_ARTIFACTS="$KEEP_ARTIFACTS" python - "$ARTIFACT_ROOT" <<'PY'
import os, shutil, sys
from pathlib import Path

from trainer.artifact.loader import list_versions

root = Path(sys.argv[1])
keep = int(os.environ["KEEP_ARTIFACTS"])
for old in list_versions(root)[:-keep]:
    doomed = old.with_name(f".tmp-deleted-{old.name}-{os.getpid()}")
    old.rename(doomed)
    shutil.rmtree(doomed)
    print(f"retention: deleted artifact {old.name}", file=sys.stderr)
PY
fi
log "published $version in $((SECONDS - started)) s; serving pods pick it up at their next CURRENT poll"

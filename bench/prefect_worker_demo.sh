#!/usr/bin/env bash
# End-to-end check of the Prefect deployments (docs/orchestration.md, "Checking a deployment end to end"):
# a throwaway local Prefect server, `prefect deploy --all` of this project's prefect.yaml, one run of
# dacs-pipeline/nightly-evaluate with force=true scheduled START_IN seconds ahead (default 8) and
# executed by a `--run-once` process worker in REPO_DIR,
# then the run's final state, duration and markdown report. The server is stopped on exit.
#
#   bench/prefect_worker_demo.sh REPO_DIR
#
# REPO_DIR: a checkout of this project (or any DVC repo with the stages evaluate and evaluate_onnx and
# this project's flows/) where `dvc repro` already ran: the run reruns those two stages (force=true).
# The flows import the package's ground floor (dacs_uda.lineage, dacs_uda.utils): the Python that runs
# prefect (this project's .venv) must have dacs_uda installed.
# Prefect's state goes to REPO_DIR/.prefect-demo (wiped at the start, kept afterwards; server log in
# server.log there). PORT=<n> picks the server's port (default: a free one).
# Exit status: 0 if the flow run completed, 1 if it did not, 2 on a usage or setup error.
set -euo pipefail

DEPLOYMENT='dacs-pipeline/nightly-evaluate'
POOL=dacs-process
ARTIFACT_KEY=dacs-pipeline-summary

die() { echo "prefect_worker_demo: $*" >&2; exit 2; }

[[ $# -eq 1 ]] || die "usage: $0 REPO_DIR"
[[ -d $1 ]] || die "no such directory: $1"
REPO=$(cd "$1" && pwd)
PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # where prefect.yaml is
[[ -f $PROJECT/prefect.yaml ]] || die "no prefect.yaml in $PROJECT"
[[ -f $REPO/dvc.yaml ]] || die "$REPO has no dvc.yaml"
# The deployments' entrypoints (flows/pipeline.py) are loaded from DACS_REPO when a run starts.
[[ -f $REPO/flows/pipeline.py ]] || die "$REPO has no flows/pipeline.py (the worker loads the flows from it)"

if [[ -x $PROJECT/.venv/bin/prefect ]]; then
    export PATH="$PROJECT/.venv/bin:$PATH"
fi
command -v prefect >/dev/null || die "prefect not found (run make setup, or activate the venv)"
PYTHON=$(dirname "$(command -v prefect)")/python
[[ -x $PYTHON ]] || PYTHON=python3
"$PYTHON" -c 'import dacs_uda.lineage' 2>/dev/null || die "$PYTHON cannot import dacs_uda (run make setup)"

# Quiet, offline, and state kept apart from any other Prefect setup of this user.
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
export PREFECT_HOME=$REPO/.prefect-demo
unset PREFECT_API_KEY PREFECT_PROFILE
rm -rf "$PREFECT_HOME"
mkdir -p "$PREFECT_HOME"

PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export PREFECT_API_URL=http://127.0.0.1:$PORT/api

SERVER_PID=
WORKER_PID=
cleanup() {
    if [[ -n $WORKER_PID ]] && kill -0 "$WORKER_PID" 2>/dev/null; then
        kill -TERM "$WORKER_PID" 2>/dev/null || true
    fi
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "== stopping the server (pid $SERVER_PID)"
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== Prefect server on $PREFECT_API_URL (PREFECT_HOME=$PREFECT_HOME)"
# Own process group (setsid), so that the cleanup stops the server and the processes it starts.
setsid prefect server start --host 127.0.0.1 --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 240); do
    if "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$PREFECT_API_URL/health" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null || [[ $i -eq 240 ]]; then
        tail -n 30 "$PREFECT_HOME/server.log" >&2
        die "the server did not become healthy"
    fi
    sleep 0.5
done
echo "server healthy"

echo "== work pool $POOL and prefect deploy --all (from $PROJECT)"
prefect work-pool create "$POOL" --type process >/dev/null
(cd "$PROJECT" && prefect --no-prompt deploy --all)

# Scheduled a few seconds ahead, as a cron-created run would be: the worker must hold it until it is due.
echo "== flow run of $DEPLOYMENT (force=true), scheduled in ${START_IN:-8} s"
run_output=$(prefect deployment run "$DEPLOYMENT" --param force=true --start-in "in ${START_IN:-8} seconds")
echo "$run_output"
RUN_ID=$(sed -n 's/.*UUID: \([0-9a-f-]\{36\}\).*/\1/p' <<<"$run_output" | head -n 1)
[[ -n $RUN_ID ]] || die "could not read the flow run id"

echo "== worker (--run-once) with DACS_REPO=$REPO"
worker_rc=0
DACS_REPO=$REPO prefect worker start --pool "$POOL" --run-once &
WORKER_PID=$!
wait "$WORKER_PID" || worker_rc=$?
WORKER_PID=
[[ $worker_rc -eq 0 ]] || echo "worker exited with code $worker_rc" >&2

echo "== result"
"$PYTHON" - "$RUN_ID" "$ARTIFACT_KEY" <<'EOF'
import sys
import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

run_id, key = UUID(sys.argv[1]), sys.argv[2]
with get_client(sync_client=True) as client:
    deadline = time.monotonic() + 30  # the worker waits for its run; this only covers a slow final write
    run = client.read_flow_run(run_id)
    while not (run.state and run.state.is_final()) and time.monotonic() < deadline:
        time.sleep(1)
        run = client.read_flow_run(run_id)
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
        )
    )
state = run.state
print(f"flow run: {run.name} ({run.id})")
print(f"final state: {state.name if state else None}" + (f" ({state.message})" if state and state.message else ""))
print(f"scheduled for: {run.expected_start_time}, started: {run.start_time}")
if run.start_time and run.end_time:
    print(f"duration: {(run.end_time - run.start_time).total_seconds():.1f} s "
          f"(run time {run.total_run_time.total_seconds():.1f} s)")
print()
if artifacts:
    print(f"artifact {key}:")
    print(artifacts[-1].data)
else:
    print(f"no {key} artifact for this run")
sys.exit(0 if state is not None and state.is_completed() else 1)
EOF

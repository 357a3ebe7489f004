"""`driftline retrain MODEL`: ask the running retrain controller for a job, then follow it.

The request is a file the controller picks up on its next tick (``agents/retrain_controller``),
so this works wherever the data directory is shared; the job itself runs under the controller,
like a drift-triggered one, with the same gates and rollout. Exit status: 0 when the job
registered a version, 1 when it was rejected or failed (the reason is printed), 2 when no
controller took the request in time.
"""

from __future__ import annotations

import argparse
import json
import time

from driftline.agents.retrain_controller import STATE_FILE, request_job
from driftline.settings import Settings


def run(args: argparse.Namespace, settings: Settings, out=print) -> int:
    root = settings.data_dir / "retrain"
    request_id = request_job(root, args.model, shuffle_labels=args.shuffle_labels)
    out(f"requested a retraining job for {args.model} (request {request_id})")
    if args.wait <= 0:
        return 0
    deadline = time.monotonic() + args.wait
    announced = False
    while time.monotonic() < deadline:
        job = _job_of(root, request_id)
        if job is not None and not announced:
            out(f"job {job['job_id']} started")
            announced = True
        if job is not None and job["status"] != "running":
            result = job.get("result") or {}
            if job["status"] == "registered":
                out(f"job {job['job_id']}: registered {args.model} v{job['version']}")
            else:
                failed = result.get("failed_gate") or {}
                out(f"job {job['job_id']}: {job['status']}: "
                    f"{failed.get('summary') or result.get('error') or ''}")
            for gate in (result.get("gates") or {}).get("gates", []):
                out(f"  {gate['summary']}")
            return 0 if job["status"] == "registered" else 1
        time.sleep(0.5)
    out(f"no answer within {args.wait:.0f}s: is `driftline retrain-controller` running on "
        f"{settings.data_dir}?")
    return 2


def _job_of(root, request_id: str) -> dict | None:
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return next((j for j in state.get("jobs", {}).values()
                 if j.get("request_id") == request_id), None)

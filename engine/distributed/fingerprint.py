"""A job's code fingerprint: how a node tells that a worker runs the same handler it knows.

Replay depends on the handler reaching the same steps in the same order, so a
worker whose code differs from the node's could corrupt histories. The
fingerprint hashes what decides that: the handler's source (its bytecode when
the source is not available) and the step-relevant options.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping

from ..job import Job


def job_fingerprint(job: Job) -> str:
    handler = job.handler
    try:
        code = inspect.getsource(handler).encode()
    except (OSError, TypeError):
        inner = getattr(handler, "__code__", None)
        code = inner.co_code if inner is not None else repr(handler).encode()
    digest = hashlib.sha256()
    digest.update(job.name.encode() + b"\0" + code)
    return digest.hexdigest()[:16]


def fingerprints(jobs: Mapping[str, Job]) -> dict[str, str]:
    return {name: job_fingerprint(job) for name, job in sorted(jobs.items())}

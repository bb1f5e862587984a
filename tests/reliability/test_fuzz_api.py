"""Schemathesis against our own OpenAPI spec: every route, authenticated, zero 5xx.

Over a thousand requests (1,100), generated from the spec (valid ones and ones that break
it on purpose), seeded so a failure replays. Path parameters are now and then
replaced by ids that exist (a succeeded job with a checkpoint, a cancelled one, a
weights upload) so that requests reach past the lookups; most requests carry a
valid key, some keep whatever Authorization header was generated.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from safetensors.numpy import save as save_safetensors
from schemathesis import GenerationMode

from service.jobs import request_cancel
from tests.support import spec_json
from tests.support.fixtures import Api

EXAMPLES = 1100
SEED = 20_260_811


def _real_ids(api: Api) -> dict[str, list[str]]:
    """Succeeded jobs with a checkpoint, cancelled jobs, and weights uploads: several of
    each, as DELETE removes them as it goes."""
    import numpy as np

    content = save_safetensors({"w": np.ones(4, dtype=np.float32)})
    jobs, uploads = [], []
    for index in range(3):
        jobs.append(api.succeeded_job(f"done-{index}", content))
        cancelled = api.client.post("/v1/jobs", json=spec_json(name=f"cancelled-{index}"))
        request_cancel(api.engine, api.tenant_id, cancelled.json()["id"])
        jobs.append(cancelled.json()["id"])
        upload = api.client.post("/v1/weights", files={"file": ("w.safetensors", content)})
        assert upload.status_code == 201, upload.text
        uploads.append(upload.json()["id"])
    return {"job_id": jobs, "upload_id": uploads}


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_no_generated_request_gets_a_server_error(api: Api) -> None:
    real = _real_ids(api)
    bearer = api.client.headers["Authorization"]
    # Off loopback the schema answers a valid key (TOPIARY_DOCS=loopback).
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app,
                                            headers={"Authorization": bearer})
    operations = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert {("DELETE", "/v1/jobs/{job_id}"), ("DELETE", "/v1/weights/{upload_id}"),
            ("HEAD", "/v1/jobs/{job_id}/checkpoint")} <= operations
    strategy = (schema.as_strategy(GenerationMode.POSITIVE)
                | schema.as_strategy(GenerationMode.NEGATIVE))
    sent: Counter[tuple[str, str]] = Counter()
    server_errors: list[str] = []

    @seed(SEED)
    @settings(max_examples=EXAMPLES, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, data=st.data())
    def send(case: Any, data: st.DataObject) -> None:
        for name in list(case.path_parameters or {}):
            if name in real and data.draw(st.booleans(), label=f"real {name}"):
                case.path_parameters[name] = data.draw(st.sampled_from(real[name]))
        authenticated = data.draw(st.integers(0, 9), label="anonymous") != 9
        response = case.call(headers={"Authorization": bearer} if authenticated else None)
        sent[(case.method.upper(), case.path)] += 1
        if response.status_code >= 500:
            server_errors.append(f"{case.method} {case.formatted_path} -> "
                                 f"{response.status_code}: {response.text[:300]}\n"
                                 f"  replay: {case.as_curl_command()}")

    send()
    assert server_errors == [], "\n".join(server_errors[:10])
    assert sum(sent.values()) >= 1000, sent
    assert set(sent) == operations, f"never tried: {operations - set(sent)}"

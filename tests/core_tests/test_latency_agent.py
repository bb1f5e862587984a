"""A job names a latency agent; the worker's environment says where it is and its secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.errors import LatencyAgentError
from core.latency_agent import agent_address, configured_agents
from core.spec import LatencySpec

SECRET = "0123456789abcdef-secret"


def test_a_spec_names_an_agent_and_a_runtime_it_has() -> None:
    assert LatencySpec(runtime="onnxruntime", target="edge-1").target == "edge-1"
    assert LatencySpec(runtime="openvino", target="lab.box_2").target == "lab.box_2"
    with pytest.raises(ValidationError, match="set latency.runtime to one of them, not torch"):
        LatencySpec(target="edge")
    with pytest.raises(ValidationError, match="target"):
        LatencySpec(runtime="onnxruntime", target="http://10.0.0.7:8765")  # a name, not a URL


def test_the_worker_finds_an_agent_by_name() -> None:
    environ = {"TOPIARY_LATENCY_AGENTS": " edge=http://10.0.0.7:8765/ , jetson=https://j.lan",
               "TOPIARY_LATENCY_AGENT_SECRET": SECRET,
               "TOPIARY_LATENCY_AGENT_SECRET_JETSON": "jetson-secret-0123456789",
               "TOPIARY_LATENCY_AGENT_CA": "/etc/ca.pem"}
    assert configured_agents(environ) == {"edge": "http://10.0.0.7:8765",
                                          "jetson": "https://j.lan"}
    edge = agent_address("edge", environ)
    assert (edge.url, edge.secret, edge.ca_bundle) == ("http://10.0.0.7:8765", SECRET,
                                                       "/etc/ca.pem")
    assert SECRET not in repr(edge)
    assert agent_address("jetson", environ).secret == "jetson-secret-0123456789"


@pytest.mark.parametrize(("environ", "message"), [
    ({}, "'edge' is not configured on this worker .known: none."),
    ({"TOPIARY_LATENCY_AGENTS": "edge=http://h:1"}, "no secret for latency agent 'edge'"),
    ({"TOPIARY_LATENCY_AGENTS": "edge=http://h:1", "TOPIARY_LATENCY_AGENT_SECRET": "short"},
     "at least 16 characters"),
    ({"TOPIARY_LATENCY_AGENTS": "edge=10.0.0.7:8765"}, "is not name=http"),
])
def test_a_missing_or_bad_agent_setting_says_what_to_fix(environ: dict[str, str],
                                                         message: str) -> None:
    with pytest.raises(LatencyAgentError, match=message):
        agent_address("edge", environ)

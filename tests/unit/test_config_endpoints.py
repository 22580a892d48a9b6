"""Config keys of multi-endpoint peers: probe_port (top level and per peer), [endpoint_policy]."""

from __future__ import annotations

import pytest

from wgcast.daemon.config import (
    DEFAULT_PROBE_PORT,
    ConfigError,
    Endpoint,
    EndpointPolicy,
    loads,
)

K1 = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA="
BASE = 'interface = "wg0"\n'


def test_defaults() -> None:
    c = loads(BASE + f'[[peers]]\npublic_key = "{K1}"\nendpoints = ["a.example:1", "[::1]:2"]\n')
    assert c.probe_port == DEFAULT_PROBE_PORT == 51821
    assert c.endpoint_policy == EndpointPolicy()
    assert c.peers[0].probe_port is None
    assert c.peers[0].endpoints == (Endpoint("a.example", 1), Endpoint("::1", 2))


def test_all_keys() -> None:
    c = loads(BASE + "probe_port = 0\n"
              "[endpoint_policy]\nprobe_interval = \"250ms\"\nlearned_max = 3\n"
              "learned_ttl = \"2m\"\nswitch_hold = \"1s\"\nresolve_interval = \"30s\"\n"
              "roam_poll = \"100ms\"\nrestart_handshake = false\n"
              f'[[peers]]\npublic_key = "{K1}"\nprobe_port = "endpoint"\n')
    assert c.probe_port == 0
    assert c.endpoint_policy == EndpointPolicy(0.25, 3, 120.0, 1.0, 30.0, 0.1, False)
    assert c.peers[0].probe_port == "endpoint"
    c = loads(BASE + f'[[peers]]\npublic_key = "{K1}"\nprobe_port = 4000\n')
    assert c.peers[0].probe_port == 4000


@pytest.mark.parametrize(("text", "where", "what"), [
    ("probe_port = 70000\n", "probe_port", "from 0 to 65535"),
    (f'[[peers]]\npublic_key = "{K1}"\nprobe_port = 0\n', "peers[0].probe_port",
     '"endpoint"'),
    (f'[[peers]]\npublic_key = "{K1}"\nprobe_port = "x"\n', "peers[0].probe_port",
     '"endpoint"'),
    ("[endpoint_policy]\nlearned_max = 0\n", "endpoint_policy.learned_max", "from 1 to 64"),
    ("[endpoint_policy]\nprobe_interval = \"1ms\"\n", "endpoint_policy.probe_interval",
     "from 50ms"),
    ("[endpoint_policy]\nlearnd_max = 2\n", "endpoint_policy.learnd_max",
     'did you mean "learned_max"'),
    ("learned_max = 2\n", "learned_max", "it belongs in [endpoint_policy]"),
])
def test_errors(text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(BASE + text, "t.toml")
    assert any(m.startswith(f"t.toml: {where}: ") and what in m for m in e.value.errors), \
        e.value.errors

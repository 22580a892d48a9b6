"""The lab's typed state reads and writes the JSON labs have always written (a lab
brought up by an older wgcast can be attached), and the babeld router's section."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from wgcast.lab.babeld import BabeldRouter
from wgcast.lab.state import Failures, LabOptions, LabState
from wgcast.lab.system import LabError
from wgcast.topology import parse_topology


def old_state(router: str = "wgcast") -> dict[str, Any]:
    """A state as lab/core.py wrote it before the lab was typed."""
    topo = parse_topology("line:2", delay="5ms", seed=1)
    node = {"name": "n1", "index": 1, "ns": "wgl-abcd-n1", "iface": "wgabcd1",
            "private_key": "k", "public_key": "p", "listen_port": 20001,
            "underlay_ip": "198.18.0.6", "relay_ip": "198.18.0.5", "relay_veth": "r1",
            "unicast": "fd5a:abcd:1::1", "control": "fe80::1", "key_path": "/x/n1.key",
            "config_path": "/x/n1.toml", "api_socket": "/x/n1.sock",
            "state_file": "/x/n1.state", "serves": ["fd5a:abcd:ffff::53/128"]}
    options: dict[str, Any] = {
        "seed": 1, "timers": "fast", "daemons": True, "echo": "instances", "echo_port": 7,
        "daemon_cmd": None, "preassign_anycast": False, "services": True,
        "health_interval": "200ms", "health_fall": 2, "health_rise": 2,
        "relay_sched": "rt", "wireguard": "go", "links": "relay"}
    st: dict[str, Any] = {
        "id": "abcd", "dir": "/x", "created": 1.5, "status": "up", "pid": 42,
        "options": options, "topology": topo.to_dict(),
        "relay": {"ns": "wgl-abcd-relay", "control": "/x/relay.sock",
                  "config": "/x/relay.json"},
        "nodes": {"n1": node, "n2": {**node, "name": "n2", "index": 2}},
        "links": [{"id": 0, "a": "n1", "b": "n2", "delay_ms": 5.0, "jitter_ms": 0.0,
                   "loss": 0.0, "port_a": 30000, "port_b": 30001,
                   "endpoint_a": "198.18.0.5:30000", "endpoint_b": "198.18.0.9:30001"}],
        "groups": [{"prefix": "fd5a:abcd:ffff::53/128", "address": "fd5a:abcd:ffff::53",
                    "members": ["n1"]}],
        "processes": [{"pid": 7, "starttime": 99, "kind": "daemon", "node": "n1",
                       "log": "/x/n1.daemon.log", "cmd": ["wgcast", "run"],
                       "started": 2.5}],
        "failures": {"links": [0], "nodes": [], "daemons": ["n2"], "services": []}}
    if router == "babeld":
        options.update(router="babeld", babeld_hello=0.05, babeld_type="tunnel")
        st["babeld"] = {"binary": "/usr/sbin/babeld", "hello": 0.05, "type": "tunnel",
                        "ifaces": {"n1": [{"name": "wgabcdl0a", "link": 0, "peer": "n2",
                                           "listen_port": 20000, "endpoint": "e",
                                           "address": "fe80::1",
                                           "peer_address": "fe80::2"}]}}
    return st


@pytest.mark.parametrize("router", ["wgcast", "babeld"])
def test_the_json_of_a_lab_round_trips_unchanged(router: str) -> None:
    d = old_state(router)
    st = LabState.from_json(copy.deepcopy(d))
    assert st.to_json() == d
    assert st.options.router == router
    assert st.processes[0].pid == 7 and st.failures.daemons == ["n2"]
    assert st.nodes["n1"].serves == ["fd5a:abcd:ffff::53/128"]


def test_the_babeld_router_comes_back_from_its_section() -> None:
    st = LabState.from_json(old_state("babeld"))
    r = BabeldRouter.from_json(st.router_state)
    assert (r.hello, r.kind, r.binary) == (0.05, "tunnel", "/usr/sbin/babeld")
    assert r.ifaces["n1"][0].name == "wgabcdl0a"
    assert r.options_json() == {"babeld_hello": 0.05, "babeld_type": "tunnel"}
    assert r.state_json() == old_state("babeld")["babeld"]


def test_options_an_older_lab_lacks_take_the_old_defaults() -> None:
    o = LabOptions.from_json({"seed": 3, "timers": "default", "daemons": False,
                              "echo": "all", "echo_port": 7})
    assert (o.services, o.relay_sched, o.wireguard, o.links, o.router) == (
        False, "rt", "go", "relay", "wgcast")
    assert (o.health_interval, o.health_fall, o.health_rise) == ("200ms", 2, 2)
    assert "router" not in o.to_json()


def test_failures_show_a_kind_once_it_was_used() -> None:
    f = Failures()
    assert f.to_json() == {"links": [], "nodes": [], "daemons": []}
    f.add("health", "n1")
    f.add("health", "n1")
    assert f.to_json()["health"] == ["n1"]
    f.discard("health", "n1")
    assert f.to_json() == {"links": [], "nodes": [], "daemons": [], "health": []}
    with pytest.raises(LabError, match="no failure kind"):
        f.add("typo", "n1")


def test_a_router_serves_one_lab() -> None:
    from wgcast.lab.core import Lab

    r = BabeldRouter(hello=0.05)
    Lab("line:2", router=r, wireguard="go", links="relay")
    with pytest.raises(LabError, match="serves one lab"):
        Lab("line:2", router=r)
    with pytest.raises(LabError, match="babeld_hello"):
        BabeldRouter(hello=0.001)

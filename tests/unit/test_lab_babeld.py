"""The babeld config writer of the babeld lab (pure; no babeld needed)."""

from __future__ import annotations

import pytest

from wgcast.lab.babeld import babeld_config, iface_name, link_local, router_id


def test_config_announces_only_what_it_is_told() -> None:
    text = babeld_config(router_id="02:5a:00:00:ab:12:00:03",
                         interfaces=["wgab12l0a", "wgab12l4b"],
                         announce=["fd5a:ab12:3::1/128", "fd5a:ab12:ffff::53/128"],
                         hello=0.05, comment="lab ab12\nnode n3")
    lines = text.splitlines()
    assert lines[:2] == ["# lab ab12", "# node n3"]
    assert "router-id 02:5a:00:00:ab:12:00:03" in lines
    assert "default type tunnel hello-interval 0.05" in lines
    assert lines.index("interface wgab12l0a") < lines.index("interface wgab12l4b")
    allow = [x for x in lines if x.startswith("redistribute local ip")]
    assert allow == ["redistribute local ip fd5a:ab12:3::1/128 allow",
                     "redistribute local ip fd5a:ab12:ffff::53/128 allow"]
    # the deny-all lines come last: babeld applies the first matching filter
    assert lines[-2:] == ["redistribute local deny", "redistribute deny"]
    assert text.endswith("\n")


def test_config_defaults_and_errors() -> None:
    text = babeld_config(router_id="x", interfaces=["wg1"], announce=[])
    assert "default type tunnel" in text.splitlines()
    assert "hello-interval" not in text  # babeld's own default (4 s)
    assert "hello-interval 4" in babeld_config(router_id="x", interfaces=["wg1"],
                                               announce=[], hello=4.0)
    with pytest.raises(ValueError):
        babeld_config(router_id="x", interfaces=[], announce=[])
    with pytest.raises(ValueError):
        babeld_config(router_id="x", interfaces=["wg1"], announce=[], hello=0.001)
    with pytest.raises(ValueError):
        babeld_config(router_id="x", interfaces=["wg 1"], announce=[])
    with pytest.raises(ValueError):
        babeld_config(router_id="x", interfaces=["wg1"], announce=["fd00::1/64"])  # host bits
    with pytest.raises(ValueError):
        babeld_config(router_id="x", interfaces=["wg1"], announce=[], kind="wireless")


def test_names_and_addresses() -> None:
    assert iface_name("ab12", 7, "b") == "wgab12l7b"
    assert len(iface_name("ab12", 99999, "a")) <= 15
    assert link_local(3) == "fe80::3"
    assert link_local(1000) == "fe80::3e8"
    assert router_id("ab12", 258) == "02:5a:00:00:ab:12:01:02"

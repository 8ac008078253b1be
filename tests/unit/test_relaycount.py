"""The hub's relay counters (mesh/relaycount.py) without nft: the table's text and how
``nft --json list set`` output becomes bytes by source address."""

from __future__ import annotations

from hivemind_cluster.mesh.relaycount import counted_bytes, relay_table, ruleset


def test_the_table_counts_only_what_enters_and_leaves_the_interface_and_never_drops() -> None:
    text = ruleset("hm-wg0", ["100.64.0.3", "100.64.0.2", "100.64.0.3"])
    assert relay_table("hm-wg0") == "hivemind_relay_hm_wg0"
    assert "table inet hivemind_relay_hm_wg0 {" in text
    assert "elements = { 100.64.0.2, 100.64.0.3 }" in text  # sorted, once each
    # After the policy's forward chain (priority 0): what it refuses was not relayed.
    assert "hook forward priority 10; policy accept;" in text
    assert 'iifname "hm-wg0" oifname "hm-wg0" update @relayed { ip saddr }' in text
    assert "drop" not in text and "reject" not in text
    assert ruleset("hm-wg0", ["100.64.0.2", "100.64.0.3"]) == text
    assert "elements" not in ruleset("hm-wg0", [])  # nft refuses an empty element list


def test_listed_elements_become_bytes_by_address() -> None:
    listed = {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {
                "set": {
                    "family": "inet",
                    "name": "relayed",
                    "elem": [
                        {"elem": {"val": "100.64.0.2", "counter": {"packets": 3, "bytes": 3084}}},
                        {"elem": {"val": "100.64.0.3", "counter": {"packets": 0, "bytes": 0}}},
                        "100.64.0.4",
                    ],
                }
            },
        ]
    }
    assert counted_bytes(listed) == {"100.64.0.2": 3084, "100.64.0.3": 0, "100.64.0.4": 0}
    assert counted_bytes({"nftables": [{"set": {"name": "relayed"}}]}) == {}

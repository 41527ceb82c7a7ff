"""TemplateMiner: API, parameters, caps + eviction metrics, persistence, thread safety."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from receiver.errors import ConfigError
from receiver.logs.masking import Masker
from receiver.logs.templates import TemplateMatch, TemplateMiner, TemplatesConfig


def metric(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    value = registry.get_sample_value(name, labels or {})
    assert value is not None, name
    return value


def test_match_groups_lines_and_extracts_params() -> None:
    miner = TemplateMiner(TemplatesConfig())
    a = miner.match("hdfs", "PacketResponder 1 for block blk_38865049064139660 terminating")
    b = miner.match("hdfs", "PacketResponder 0 for block blk_-6952295868487656571 terminating")
    assert isinstance(a, TemplateMatch)
    assert a.is_new and not b.is_new
    assert a.template_id == b.template_id
    assert b.template == "PacketResponder <*> for block <*> terminating"
    assert b.params == ["0", "blk_-6952295868487656571"]
    assert miner.template("hdfs", a.template_id) == b.template
    assert miner.templates("hdfs") == {a.template_id: b.template}
    assert miner.template("hdfs", 999) is None
    assert miner.template("nope", a.template_id) is None


def test_generalised_positions_become_params() -> None:
    miner = TemplateMiner(TemplatesConfig())
    miner.match("s", "login ok user=root from 10.0.0.1")
    m = miner.match("s", "login ok user=guest from 10.0.0.2")
    assert m.template == "login ok user=<*> from <*>"  # key=value: generalised at once
    assert m.params == ["guest", "10.0.0.2"]


def test_word_siblings_stay_apart_until_enough_then_merge() -> None:
    reg = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(merge_siblings=3), registry=reg)
    a = miner.match("s", "Block broadcast_1 stored as bytes in memory")
    b = miner.match("s", "Block broadcast_2 stored as values in memory")
    assert a.template_id != b.template_id  # one differing word: probably another event
    assert a.is_new and a.variant_of is None
    assert b.is_new and b.variant_of == a.template_id  # ... but flagged as a one-word variant
    assert miner.match("s", "Block broadcast_3 stored as bytes in memory").template_id == a.template_id
    c = miner.match("s", "Block broadcast_4 stored as frames in memory")  # third value: a variable
    assert c.template_id == a.template_id and not c.is_new
    assert c.template == "Block <*> stored as <*> in memory"
    assert c.params == ["broadcast_4", "frames"]
    assert miner.template("s", b.template_id) == c.template  # merged id is an alias
    assert miner.canonical_id("s", b.template_id) == a.template_id
    assert list(miner.templates("s")) == [a.template_id]
    assert metric(reg, "log_templates_merged_total") == 2
    # a line cached under the merged-away template resolves to the survivor
    again = miner.match("s", "Block broadcast_9 stored as values in memory")
    assert again.template_id == a.template_id
    assert again.params == ["broadcast_9", "values"]


def test_services_are_separate_and_ids_stable() -> None:
    miner = TemplateMiner(TemplatesConfig())
    a = miner.match("a", "connection opened")
    b = miner.match("b", "disk full on volume 3")
    c = miner.match("a", "connection closed by peer")
    assert a.template_id == 1 and b.template_id == 1 and c.template_id == 2
    assert miner.match("a", "connection opened").template_id == 1
    assert set(miner.templates("a").values()) == {"connection opened", "connection closed by peer"}


def test_masking_spans() -> None:
    masker = Masker()
    masked, params = masker.mask(
        "GET http://x.example.com/a?b=1 from 10.1.2.3:8080 id 123e4567-e89b-12d3-a456-426614174000 took 15ms"
    )
    assert masked == "GET <*> from <*> id <*> took <*>"
    assert params == [
        "http://x.example.com/a?b=1",
        "10.1.2.3:8080",
        "123e4567-e89b-12d3-a456-426614174000",
        "15ms",
    ]
    assert masker.mask("no variables here") == ("no variables here", [])


def test_template_cap_evicts_least_recently_matched_and_counts() -> None:
    reg = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(max_templates_per_service=3), registry=reg)
    first = miner.match("s", "alpha event happened").template_id
    miner.match("s", "beta thing")
    miner.match("s", "gamma other thing here")
    miner.match("s", "alpha event happened")  # alpha is now most recent; beta is the LRU
    miner.match("s", "delta four five six seven")
    templates = miner.templates("s")
    assert len(templates) == 3
    assert "beta thing" not in templates.values()
    assert first in templates
    assert metric(reg, "log_templates_evicted_total", {"reason": "service_templates_cap"}) == 1
    assert metric(reg, "log_templates_active") == 3
    # the evicted template's cached form is not reused: it comes back as a new template
    again = miner.match("s", "beta thing")
    assert again.is_new and again.template_id not in templates


def test_service_cap_evicts_oldest_service_and_counts() -> None:
    reg = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(max_services=2), registry=reg)
    miner.match("a", "x happened")
    miner.match("b", "y happened")
    miner.match("a", "x happened")
    miner.match("c", "z happened")  # b is least recently seen
    assert sorted(miner.services()) == ["a", "c"]
    assert miner.templates("b") == {}
    assert metric(reg, "log_template_services_evicted_total") == 1
    assert metric(reg, "log_templates_evicted_total", {"reason": "service_evicted"}) == 1


def test_cache_cap_counts_drops() -> None:
    reg = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(cache_size=4), registry=reg)
    for i in range(20):
        miner.match("s", f"request handled by worker w{chr(97 + i)}x")
    assert miner._cache_entries <= 4
    assert metric(reg, "log_template_cache_evicted_total") > 0


def test_bucket_cap_evicts() -> None:
    reg = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(max_bucket_templates=2, similarity_threshold=1.0), registry=reg)
    for word in ("red", "green", "blue"):
        miner.match("s", f"colour {word} apple")
    assert len(miner.templates("s")) == 2
    assert metric(reg, "log_templates_evicted_total", {"reason": "bucket_cap"}) == 1


def test_save_load_restores_ids_and_templates(tmp_path) -> None:
    miner = TemplateMiner(TemplatesConfig())
    for line in ("Started job 12 on node n1", "Started job 13 on node n2", "Stopped service foo cleanly"):
        miner.match("svc", line)
    ids = miner.templates("svc")
    assert len(ids) == 2
    miner.match("other", "hello world")
    path = tmp_path / "state" / "templates.json"
    miner.save(str(path))
    assert json.loads(path.read_text())["version"] == 1
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".templates-")]

    fresh = TemplateMiner(TemplatesConfig())
    assert fresh.load(str(path)) == 3
    assert fresh.templates("svc") == miner.templates("svc")
    assert fresh.templates("other") == {1: "hello world"}
    m = fresh.match("svc", "Started job 99 on node n7")
    assert not m.is_new
    assert ids[m.template_id] == m.template == "Started job <*> on node <*>"
    new = fresh.match("svc", "a brand new kind of line")
    assert new.is_new and new.template_id == max(ids) + 1


def test_load_rejects_garbage_and_keeps_state(tmp_path) -> None:
    miner = TemplateMiner(TemplatesConfig())
    miner.match("s", "keep me")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError):
        miner.load(str(bad))
    bad.write_text(json.dumps({"version": 1, "services": {"s": {"templates": [{"tokens": ["x"]}]}}}))
    with pytest.raises(ValueError):
        miner.load(str(bad))
    assert miner.templates("s") == {1: "keep me"}


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="templates.similarity_threshold"):
        TemplatesConfig(similarity_threshold=0).validate()
    with pytest.raises(ConfigError, match="templates.max_services"):
        TemplatesConfig(max_services=0).validate()
    with pytest.raises(ConfigError, match="templates.extra_mask_patterns"):
        TemplatesConfig(extra_mask_patterns=["(unclosed"]).validate()
    with pytest.raises(ConfigError, match="templates.extra_mask_patterns"):
        TemplatesConfig(extra_mask_patterns=["(a)b"]).validate()


def test_extra_mask_patterns_apply_first() -> None:
    miner = TemplateMiner(TemplatesConfig(extra_mask_patterns=[r"\bORD-[A-Z]+\b"]))
    m = miner.match("s", "order ORD-ABC shipped")
    assert m.template == "order <*> shipped"
    assert m.params == ["ORD-ABC"]


def test_bad_input_is_handled() -> None:
    miner = TemplateMiner(TemplatesConfig(max_line_chars=50, max_tokens=5))
    assert miner.match("s", "").template == ""
    long = miner.match("s", "word " * 100)
    assert long.template.split() == ["word"] * 4 + ["<*>"]
    assert miner.match("s", None).template == ""  # type: ignore[arg-type]


def test_thread_safety_basic() -> None:
    miner = TemplateMiner(TemplatesConfig())
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(500):
                m = miner.match(f"svc{k % 2}", f"user u{i} logged in from 10.0.{k}.{i % 250}")
                assert m.template_id >= 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert miner.lines == 2000
    for svc in ("svc0", "svc1"):
        assert len(miner.templates(svc)) == 1


def test_dates_sizes_and_durations_are_one_value() -> None:
    masker = Masker()
    masked, params = masker.mask("connection from 24.54.76.216 () at Fri Jun 17 07:07:00 2005")
    assert masked == "connection from <*> () at <*>"
    assert params == ["24.54.76.216", "Fri Jun 17 07:07:00 2005"]
    masked, params = masker.mask(
        "a.b.com:5070 close, 1190 bytes (1.16 KB) sent, 0 bytes received, lifetime <1 sec"
    )
    assert masked == "<*> close, <*> sent, <*> received, lifetime <*>"
    assert params == ["a.b.com:5070", "1190 bytes (1.16 KB)", "0 bytes", "<1 sec"]
    # the token-only path used by matching gives the same tokens
    assert masker.tokens("x 12 bytes sent at Mar 3 10:00:01") == ["x", "<*>", "sent", "at", "<*>"]
    assert masker.tokens("Marking 3 items") == ["Marking", "<*>", "items"]


def test_template_with_literal_digits_still_learns_behind_the_line_cache() -> None:
    # "n1" / "n2" differ only in digits, so both lines share a line-cache key: the template must
    # still see the second line and generalise (it is verified for a few lines before the cache).
    miner = TemplateMiner(TemplatesConfig())
    first = miner.match("s", "node n1 is up again")
    second = miner.match("s", "node n2 is up again")
    assert second.template_id == first.template_id
    assert second.template == "node <*> is up again"
    assert second.params == ["n2"]


def test_value_words_generalise_at_once_but_words_do_not() -> None:
    miner = TemplateMiner(TemplatesConfig())
    a = miner.match("s", "keyguard active true for display 0")
    b = miner.match("s", "keyguard active false for display 1")
    assert a.template_id == b.template_id and b.template == "keyguard active <*> for display <*>"
    c = miner.match("s", "Failed password for root from 10.0.0.1 port 22 ssh2")
    d = miner.match("s", "Failed none for root from 10.0.0.2 port 23 ssh2")
    assert c.template_id != d.template_id  # a different word: another event until proven otherwise


def test_total_template_cap_evicts_from_the_biggest_service() -> None:
    reg = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(max_templates_total=6), registry=reg)
    for i in range(5):
        miner.match("big", f"event{chr(97 + i)} alpha beta")
    miner.match("small", "only one here")
    miner.match("small", "and another one")  # 7th template: the big service pays
    assert miner.active_templates() <= 6
    assert len(miner.templates("small")) == 2
    assert len(miner.templates("big")) == 4
    assert metric(reg, "log_templates_evicted_total", {"reason": "total_templates_cap"}) == 1


def test_merged_ids_survive_save_and_load(tmp_path) -> None:
    miner = TemplateMiner(TemplatesConfig())
    ids = [miner.match("s", f"user {u} logged out of the console").template_id for u in ("ann", "bob", "cy")]
    assert len(set(ids)) == 2 and ids[2] == ids[0]  # third sibling merged the first two
    path = tmp_path / "t.json"
    miner.save(str(path))
    fresh = TemplateMiner(TemplatesConfig())
    fresh.load(str(path))
    assert fresh.template("s", ids[1]) == "user <*> logged out of the console"
    assert fresh.canonical_id("s", ids[1]) == ids[0]
    m = fresh.match("s", "user dan logged out of the console")
    assert m.template_id == ids[0] and not m.is_new


def test_load_applies_the_current_caps(tmp_path) -> None:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet".split()
    big = TemplateMiner(TemplatesConfig())
    for w in words:
        big.match("s", f"{w} finished")
    for w in words[6:8]:  # recency, not creation order, decides what survives a smaller cap
        big.match("s", f"{w} finished")
    path = tmp_path / "t.json"
    big.save(str(path))
    small = TemplateMiner(TemplatesConfig(max_templates_per_service=4))
    assert small.load(str(path)) == 4
    assert sorted(small.templates("s").values()) == [f"{w} finished" for w in words[6:]]  # most recent kept
    big.match("s", "alpha finished")
    big.save(str(path))
    small = TemplateMiner(TemplatesConfig(max_templates_per_service=4))
    small.load(str(path))
    assert sorted(small.templates("s").values()) == [
        f"{w} finished" for w in ["alpha", "golf", "hotel", "juliet"]
    ]


def test_metrics_exposed() -> None:
    reg = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(), registry=reg)
    miner.match("a", "hello there 1")
    miner.match("a", "hello there 2")
    miner.match("b", "bye")
    assert metric(reg, "log_templates_lines_total") == 3
    assert metric(reg, "log_templates_created_total") == 2
    assert metric(reg, "log_templates_active") == 2
    assert metric(reg, "log_template_services_active") == 2
    for name in (
        "log_templates_merged_total",
        "log_template_cache_evicted_total",
        "log_template_token_cache_evicted_total",
        "log_template_aliases_evicted_total",
    ):
        assert metric(reg, name) == 0


def test_fast_token_path_equals_full_masking_on_real_lines() -> None:
    data = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "loghub_2k"
    if not data.is_dir():
        raise AssertionError(f"Loghub-2k dataset folder missing: {data}")
    from receiver.eval.parsing import load_all

    fast, full = Masker(), Masker()
    checked = 0
    for ds in load_all(data):
        for line in ds.contents:
            tokens, params = full.mask_tokens(line)
            assert fast.tokens(line) == tokens, line
            assert tokens.count("<*>") <= len(params) or any("<*>" in t for t in line.split()), line
            checked += 1
    assert checked == 24000


def test_aliases_are_capped_and_counted() -> None:
    reg = CollectorRegistry()
    miner = TemplateMiner(TemplatesConfig(max_templates_total=4, max_templates_per_service=50), registry=reg)
    # each group of 3 sibling lines merges 2 templates away -> 2 aliases per group
    for g in range(4):
        for u in ("ann", "bob", "cy"):
            miner.match("s", f"job{'xyzw'[g]} user {u} finished its work")
    assert miner.merged == 8
    assert sum(len(s.aliases) for s in miner._services.values()) <= 4
    assert metric(reg, "log_template_aliases_evicted_total") == 4


def test_concurrent_matching_with_saves(tmp_path) -> None:
    data = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "loghub_2k"
    if not data.is_dir():
        raise AssertionError(f"Loghub-2k dataset folder missing: {data}")
    from receiver.eval.parsing import load_all

    lines = [line for ds in load_all(data) for line in ds.contents[:300]]
    miner = TemplateMiner(TemplatesConfig(max_templates_per_service=60))  # evictions happen too
    errors: list[BaseException] = []
    seen: list[tuple[str, int]] = []
    stop = threading.Event()

    def work(k: int) -> None:
        try:
            for i, line in enumerate(lines[k::4]):
                service = f"svc{i % 3}"
                m = miner.match(service, line)
                assert m.template and m.template_id >= 1
                seen.append((service, m.template_id))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def saver() -> None:
        try:
            while not stop.is_set():
                miner.save(str(tmp_path / "t.json"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    save_thread = threading.Thread(target=saver)
    save_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    save_thread.join()
    assert not errors, errors[:3]
    assert miner.lines == len(lines) == len(seen)
    assert miner.active_templates() <= 3 * 60
    fresh = TemplateMiner(TemplatesConfig())
    fresh.load(str(tmp_path / "t.json"))  # a save taken while matching is a valid state file


def test_variable_length_value_lists_collapse_into_one_param() -> None:
    miner = TemplateMiner(TemplatesConfig())
    a = miner.match("hdfs", "BLOCK* ask 10.0.0.1:50010 to delete blk_1 blk_2 blk_3 blk_4 blk_5")
    b = miner.match("hdfs", "BLOCK* ask 10.0.0.2:50010 to delete blk_7 blk_8 blk_9 blk_10")
    c = miner.match("hdfs", "BLOCK* ask 10.0.0.3:50010 to delete blk_6")  # short list: 1 token, kept
    assert a.template_id == b.template_id
    assert b.template == "BLOCK* ask <*> to delete <*>"
    assert b.params == ["10.0.0.2:50010", "blk_7 blk_8 blk_9 blk_10"]
    assert c.template == "BLOCK* ask <*> to delete <*>" and c.params == ["10.0.0.3:50010", "blk_6"]
    off = TemplateMiner(TemplatesConfig(collapse_runs=0))
    assert off.match("s", "ids 1 2 3 4 5 done").template == "ids <*> <*> <*> <*> <*> done"
    with pytest.raises(ConfigError, match="templates.collapse_runs"):
        TemplatesConfig(collapse_runs=1).validate()

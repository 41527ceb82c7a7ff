"""TemplateMiner: what makes two lines one event. Lines that differ only in ids, addresses, paths and
numbers are one template; a different constant word is a different event; the first constant word of a
line (the request method, the verb) stays part of the template once it recurs."""

from __future__ import annotations

import random
import uuid

from receiver.logs.templates import TemplateMiner, TemplatesConfig


def _ids(seed: int) -> tuple[random.Random, callable, callable]:  # type: ignore[valid-type]
    rng = random.Random(seed)
    return (
        rng,
        lambda: str(uuid.UUID(int=rng.getrandbits(128))),
        lambda: uuid.UUID(int=rng.getrandbits(128)).hex,
    )


def _mine(lines: list[str]) -> tuple[TemplateMiner, list[int]]:
    miner = TemplateMiner(TemplatesConfig())
    ids = [miner.match("svc", line).template_id for line in lines]
    return miner, [miner.canonical_id("svc", i) for i in ids]  # type: ignore[misc]


def _groups(methods: list[str], ids: list[int]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for m, i in zip(methods, ids, strict=True):
        out.setdefault(m, set()).add(i)
    return out


def test_api_request_lines_group_by_method_whatever_the_ids_paths_and_numbers() -> None:
    rng, new_uuid, new_hex = _ids(1)
    methods = ["GET"] * 40 + ["POST"] + ["GET"] * 10 + ["POST"] + ["GET"] * 5 + ["DELETE"] + ["GET", "POST"]
    lines = []
    for m in methods:
        path = rng.choice(
            [
                f"/v2/{new_hex()}/servers/detail",
                f"/v2/{new_hex()}/servers/{new_uuid()}",
                f"/v2/{new_hex()}/servers/detail?limit={rng.randint(1, 99)}&marker={new_uuid()}",
            ]
        )
        lines.append(
            f'10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)} "{m} {path} HTTP/1.1" '
            f"status: {rng.choice([200, 202, 204, 404])} len: {rng.randint(100, 5000)} "
            f"time: {rng.random():.7f}"
        )
    miner, ids = _mine(lines)
    groups = _groups(methods, ids)
    assert all(len(g) == 1 for g in groups.values()), groups  # ids, paths, numbers: one template
    assert len({next(iter(g)) for g in groups.values()}) == 3  # three methods: three events
    for m, g in groups.items():
        template = miner.template("svc", next(iter(g)))
        assert template == f'<*> "{m} <*> HTTP/<*>" status: <*> len: <*> time: <*>'


def test_leading_verbs_stay_apart() -> None:
    # session manager lines headed by what happened; the session numbers vary
    rng = random.Random(2)
    verbs = ["Started"] * 20 + ["Stopping", "Started", "Started", "Stopping", "Stopped"] + ["Started"] * 5
    lines = [f"{v} Session {rng.randint(1, 9999)} of user root." for v in verbs]
    miner, ids = _mine(lines)
    groups = _groups(verbs, ids)
    assert all(len(g) == 1 for g in groups.values()), groups
    assert len({next(iter(g)) for g in groups.values()}) == 3  # the verbs are three events
    assert miner.template("svc", next(iter(groups["Stopped"]))) == "Stopped Session <*> of user root."


def test_first_words_each_seen_once_are_a_variable() -> None:
    # a burst of lines headed by a different name each (tables, devices): the name is a parameter
    lines = [
        f"{name} table loaded from firmware at 0x{addr:08x} size {size}"
        for name, addr, size in (("APIC", 0xFD000, 84), ("FACP", 0xFD100, 116), ("HPET", 0xFD200, 56))
    ]
    miner, ids = _mine([*lines, "MCFG table loaded from firmware at 0x000fd300 size 60"])
    assert len(set(ids)) == 1
    assert miner.template("svc", ids[0]) == "<*> table loaded from firmware at <*> size <*>"


def test_a_frequent_value_with_rare_ones_is_still_a_variable() -> None:
    # user names after the event words: one frequent ("root") and a tail of rare ones
    rng = random.Random(3)
    users = ["root"] * 30 + ["uucp"] + ["root"] * 3 + ["ftp", "root", "git"]
    lines = [
        f"Failed password for {u} from 10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)} port "
        f"{rng.randint(1024, 65535)} ssh2"
        for u in users
    ]
    miner, ids = _mine(lines)
    assert len(set(ids)) == 1
    assert miner.template("svc", ids[-1]) == "Failed password for <*> from <*> port <*> ssh2"


def test_lines_differing_in_request_ids_uuids_addresses_and_numbers_group_together() -> None:
    rng, new_uuid, new_hex = _ids(4)

    def context(i: int) -> str:  # request id, then user and project ids, or "-" where there are none
        ids = f"{new_hex()} {new_hex()} - - -" if i % 2 else "- - - - -"
        return f"[req-{new_uuid()} {ids}]"

    lines = [
        f"{context(i)} [instance: {new_uuid()}] Attempting claim: memory {rng.choice([512, 2048])} MB, "
        f"host=10.1.0.{rng.randint(1, 254)}:{rng.randint(1024, 65535)} flags=0x{rng.getrandbits(16):x} "
        f"free_ram={rng.randint(1000, 64000)}MB node=compute-{rng.randint(1, 40)} tries={rng.randint(1, 5)}"
        for i in range(30)
    ]
    miner, ids = _mine(lines)
    assert len(set(ids)) == 1, [miner.template("svc", i) for i in set(ids)]
    template = miner.template("svc", ids[0])
    assert template is not None and "Attempting claim: memory <*>, host=<*> flags=<*>" in template
    # a different constant word is a different event
    other = miner.match("svc", lines[0].replace("Attempting claim", "Rejecting claim"))
    assert miner.canonical_id("svc", other.template_id) != ids[0]


def test_leading_context_in_brackets_is_not_the_event_word() -> None:
    # a logger's context prefix ("[client <address>]") comes before the words that say what happened
    rng = random.Random(5)
    verbs = ["Uploaded"] * 15 + ["Downloaded", "Uploaded", "Downloaded"] + ["Uploaded"] * 5 + ["Deleted"]
    lines = [
        f"[client 10.2.{rng.randint(0, 255)}.{rng.randint(1, 254)}] {v} object /data/{rng.randint(1, 99)}/"
        f"part-{rng.randint(1, 999)} in bucket archive within {rng.randint(1, 999)} ms"
        for v in verbs
    ]
    _, ids = _mine(lines)
    groups = _groups(verbs, ids)
    assert all(len(g) == 1 for g in groups.values()), groups
    assert len({next(iter(g)) for g in groups.values()}) == 3


def test_lines_of_named_values_group_by_their_names() -> None:
    # every token is name=value: the names are the constant text that makes two lines one event
    lines = [
        'lock=166121161, flags=0x1, tag="RadioAck", name=com.example.phone, ws=null, uid=1001',
        'lock=233570404, flags=0x0, tag="*launch*", name=android, ws=WorkSource{10113}, uid=1000',
        'lock=62617001, flags=0x1, tag="AudioMix", name=audioserver, ws=null, uid=1041',
    ]
    miner, ids = _mine(lines)
    assert len(set(ids)) == 1, [miner.template("svc", i) for i in set(ids)]
    other = miner.match("svc", 'lock=1, flags=0x1, tag="RadioAck", name=x, ws=null, pid=1001')
    assert miner.canonical_id("svc", other.template_id) != ids[0]  # another name: another event

"""The web page at `GET /`, rendered by a real headless Chromium against the running app: the service
graph drawn as SVG from SDK spans, findings, RCA reports and incidents, and attacker-controlled text
(log lines in evidence, explanations) shown as text, never parsed as HTML."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

from receiver.model import (
    A_CONFIDENCE,
    A_EVIDENCE,
    A_SERVICE,
    A_SEVERITY,
    A_TYPE,
    EVENT_ANOMALY,
    EVENT_RCA,
    R_CANDIDATES,
    R_CONFIDENCE,
    R_PATH,
    R_ROOT_CAUSE,
    Finding,
)
from tests.otlp_support import make_spans
from tests.test_app import RunningApp

IMG = "<img src=x onerror=alert(1)>"
BOLD = "<b>bold</b>"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text: list[str] = []

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def iter(self) -> list[Node]:
        out = [self]
        for c in self.children:
            out.extend(c.iter())
        return out

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Tree(HTMLParser):
    """A minimal DOM from Chromium's --dump-dom serialization (stdlib only)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        n: Node | None = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data: str) -> None:
        self.cur.text.append(data)


def chromium_cmd(profile: Path) -> list[str]:
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed: apt-get install -y chromium (see the Makefile's system deps)"
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}"]


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*chromium_cmd(profile), "--virtual-time-budget=5000", *extra, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=40)  # an alert() would block it
    assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    return r


def api(running: RunningApp, path: str, token: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    method = "POST" if path.endswith("/flush") else "GET"
    req = urllib.request.Request(running.url(path), headers=headers, method=method)
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def seed(running: RunningApp, token: str = "") -> tuple[Finding, Finding, dict[str, Any]]:
    """SDK spans frontend -> checkout -> payment, a test-made anomaly whose log lines carry HTML, an RCA
    report; returns them and the open incident they formed."""
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{running.app.otlp.grpc_port}", insecure=True)
    assert exporter.export(make_spans(("frontend", "checkout", "payment"), per_service=3,
                                      error_every=5)).name == "SUCCESS"
    exporter.shutdown()
    time.sleep(0.6)  # past the pairing TTL: root server spans become edges from `user`
    assert api(running, "/api/v1/flush", token)["drained"] is True
    edges = {(e["source"], e["target"]) for e in api(running, "/api/v1/graph", token)["edges"]}
    assert {("user", "frontend"), ("frontend", "checkout"), ("checkout", "payment")} <= edges

    anomaly = Finding(EVENT_ANOMALY, {
        A_SERVICE: "payment", A_SEVERITY: "critical", A_TYPE: "error_burst", A_CONFIDENCE: 0.87,
        A_EVIDENCE: [f"ERROR card declined {IMG}", f"WARN retry {BOLD}"],
    }, body=f"payment errors jumped {BOLD}", trace_id="0af7651916cd43dd8448eb211c80319c")
    report = Finding(EVENT_RCA, {
        R_ROOT_CAUSE: "payment", R_CANDIDATES: ["payment", "checkout"],
        R_PATH: ["payment", "checkout", "frontend"], R_CONFIDENCE: 0.74,
        "rca.root_cause_issue": "card processor timeouts", "rca.remediation": ["roll back payment v2"],
    }, body="payment fails first; checkout and frontend follow", time_ns=anomaly.time_ns + 1)
    running.app.findings_out.consume_findings([anomaly])
    running.app.findings_out.consume_findings([report])
    incidents = api(running, "/api/v1/incidents?status=open", token)
    assert len(incidents) == 1 and incidents[0]["root_cause_service"] == "payment"
    return anomaly, report, incidents[0]


def test_page_renders_graph_findings_and_escapes_log_text(tmp_path: Path) -> None:
    running = RunningApp(tmp_path)
    try:
        anomaly, report, incident = seed(running)
        profile = tmp_path / "chromium-profile"
        page = running.url(f"/#incident={incident['id']}")  # deep link: that incident's details open
        dom = chromium(page, profile, "--dump-dom").stdout
        shot = tmp_path / "page.png"
        chromium(page, profile, "--hide-scrollbars", "--window-size=1400,1500",
                 f"--screenshot={shot}")
    finally:
        running.stop()

    tree = Tree()
    tree.feed(dom)
    nodes = tree.root.iter()
    by_id = {n.attrs["id"]: n for n in nodes if "id" in n.attrs}

    # the graph: one SVG node group per service, edges between them with their labels
    graph = by_id["graph"]
    assert graph.tag == "svg"
    drawn = {n.attrs["data-id"]: n for n in graph.iter() if "node" in n.classes()}
    assert set(drawn) == {"user", "frontend", "checkout", "payment"}
    for name, g in drawn.items():
        assert any(t.tag == "text" and t.all_text() == name for t in g.iter()), name
        assert any(t.tag == "rect" for t in g.iter())
    assert "virtual" in drawn["user"].classes() and "virtual" not in drawn["checkout"].classes()
    assert "root" in drawn["payment"].classes() and "sev-critical" in drawn["payment"].classes()
    # callers left of callees: the layered layout puts user < frontend < checkout < payment
    xs = {k: float(g.attrs["transform"].split("(")[1].split(",")[0]) for k, g in drawn.items()}
    assert xs["user"] < xs["frontend"] < xs["checkout"] < xs["payment"]
    drawn_edges = {(n.attrs["data-source"], n.attrs["data-target"]): n for n in graph.iter()
                   if "edge" in n.classes() and "data-source" in n.attrs}
    assert {("user", "frontend"), ("frontend", "checkout"), ("checkout", "payment")} <= set(drawn_edges)
    assert all(any(c.tag == "path" for c in e.iter()) for e in drawn_edges.values())
    # error_every=5 fails checkout's server span in the second trace: that edge is drawn red
    assert "err" in drawn_edges[("frontend", "checkout")].classes()
    assert "err" not in drawn_edges[("checkout", "payment")].classes()
    labels = [n.all_text() for n in graph.iter() if "edge-label" in n.classes()]
    assert "3 calls · 1 err" in " | ".join(labels) and any(lb.startswith("3 calls") for lb in labels)

    # the finding, its evidence shown literally and nothing injected
    cards = [n for n in by_id["findings"].iter() if "finding" in n.classes()]
    assert [c.attrs["data-id"] for c in cards] == [anomaly.id]
    text = cards[0].all_text()
    for expected in ("critical", "payment", "error_burst", "confidence 87%", f"ERROR card declined {IMG}",
                     f"WARN retry {BOLD}", f"payment errors jumped {BOLD}", anomaly.trace_id):
        assert expected in text, expected
    assert not any(n.tag in ("img", "b") and n.parent is not None and n.parent.tag == "li" for n in nodes)
    assert not [n for n in nodes if n.tag == "img"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom and "&lt;b&gt;bold&lt;/b&gt;" in dom

    # the RCA report: root cause and propagation path in order
    rca = by_id["rca"]
    assert [n.all_text() for n in rca.iter() if "root-cause" in n.classes()] == ["payment"]
    hops = [n.all_text() for n in rca.iter() if "hop" in n.classes()]
    assert hops == ["payment", "checkout", "frontend"]
    assert "card processor timeouts" in rca.all_text() and "roll back payment v2" in rca.all_text()

    # the open incident
    rows = [n for n in by_id["incidents"].iter() if n.tag == "tr" and "inc" in n.classes()]
    assert [r.attrs["data-id"] for r in rows] == [incident["id"]]
    assert "payment" in rows[0].all_text() and "selected" in rows[0].classes()
    detail = by_id["incident-detail"]
    assert "hidden" not in detail.attrs
    (ipath,) = [n for n in detail.iter() if "incident-path" in n.classes()]
    assert [n.all_text() for n in ipath.iter() if "hop" in n.classes()] == ["payment", "checkout", "frontend"]
    assert sorted(n.attrs["data-id"] for n in detail.iter() if "card" in n.classes()) == sorted(
        [anomaly.id, report.id])
    assert f"ERROR card declined {IMG}" in detail.all_text()
    assert any(n.tag == "textarea" for n in detail.iter())  # open: a resolution note can be added
    assert by_id["ready"].all_text() == "ready"

    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


class Cdp:
    """A Chrome DevTools Protocol session on one page, over aiohttp's websocket client. JavaScript
    dialogs (what an injected `alert(1)` would open) are recorded and dismissed."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.dialogs: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        mid = self.next_id
        await self.ws.send_json({"id": mid, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=30)
            if msg.get("id") == mid:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg["result"]
            if msg.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(msg["params"])
                self.next_id += 1
                await self.ws.send_json({"id": self.next_id, "method": "Page.handleJavaScriptDialog",
                                         "params": {"accept": False}})

    async def js(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, f"{expression}: {r['exceptionDetails']}"
        return r["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout_s: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
            value = await self.js(guarded)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"the page never showed {what} ({expression})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLICK = "document.querySelector({sel!r}).dispatchEvent(new MouseEvent('click', {{bubbles: true}})); true"


async def drive(page_url: str, devtools_port: int, token: str, incident_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not targets:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list", timeout=2) as r:
                targets = [t for t in json.loads(r.read()) if t.get("type") == "page"]
        except (urllib.error.URLError, ConnectionError):
            await asyncio.sleep(0.2)
    assert targets, "chromium's DevTools endpoint never listed a page"
    async with aiohttp.ClientSession() as session, session.ws_connect(
            targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
        cdp = Cdp(ws)
        await cdp.call("Page.enable")
        await cdp.call("Runtime.enable")
        await cdp.call("Page.navigate", url=page_url)
        # the API wants a token: the page says so and asks for one
        await cdp.wait_for("getComputedStyle(document.getElementById('auth')).display === 'flex' && "
                           "document.getElementById('graph-error').textContent.includes('bearer token')",
                           "the token prompt")
        assert await cdp.js("document.querySelectorAll('#findings .card').length") == 0
        await cdp.js(f"document.getElementById('token').value = {token!r}; "
                     "document.getElementById('token-save').click(); true")
        await cdp.wait_for("document.querySelectorAll('#graph g.node').length === 4 && "
                           "document.querySelectorAll('#findings .card').length === 1 && "
                           "document.querySelectorAll('#incidents tr.inc').length === 1", "the data")
        assert await cdp.js("document.getElementById('graph-error').textContent") == ""

        # clicking a node filters the findings to that service; clicking it again clears the filter
        await cdp.js(CLICK.format(sel='#graph g.node[data-id="checkout"]'))
        assert await cdp.js("document.querySelectorAll('#findings .card').length") == 0
        assert "checkout" in await cdp.js("document.getElementById('filter').textContent")
        await cdp.js(CLICK.format(sel='#graph g.node[data-id="payment"]'))
        assert await cdp.js("document.querySelectorAll('#findings .card').length") == 1
        assert await cdp.js("document.querySelector('#graph g.node[data-id=\"payment\"]')"
                            ".classList.contains('selected')")
        await cdp.js(CLICK.format(sel='#graph g.node[data-id="payment"]'))
        assert await cdp.js("document.getElementById('filter').textContent") == ""

        # clicking the incident opens its details (and deep-links them); a note resolves it
        await cdp.js(CLICK.format(sel="#incidents tr.inc"))
        await cdp.wait_for("!document.getElementById('incident-detail').hidden && "
                           "document.querySelector('#incident-detail .incident-path') !== null",
                           "the incident details")
        assert await cdp.js("location.hash") == f"#incident={incident_id}"
        await cdp.js("const d = document.getElementById('incident-detail');"
                     "d.querySelector('textarea').value = 'rolled back <i>v2</i>';"
                     "d.querySelector('input').value = 'oncall';"
                     "d.querySelector('button').click(); true")
        await cdp.wait_for("document.getElementById('incidents').textContent.includes('No open incidents')",
                           "the incident resolved")
        await cdp.wait_for("document.getElementById('incident-detail').textContent.includes("
                           "'oncall: rolled back <i>v2</i>')", "the resolution note in the details")
        # nothing the API sent became an element (the page's own <b> hold service names only)
        assert await cdp.js("document.querySelectorAll('img, i').length") == 0
        assert set(await cdp.js("[...document.querySelectorAll('b')].map(b => b.textContent)")) == {"payment"}
        return cdp.dialogs


def test_page_interactions_with_auth_in_a_driven_browser(tmp_path: Path) -> None:
    token = "s3cret-token"
    running = RunningApp(tmp_path, api={"auth_tokens": [token]})
    proc: subprocess.Popen[bytes] | None = None
    try:
        _anomaly, _report, incident = seed(running, token)
        port = free_port()
        log = (tmp_path / "chromium.log").open("wb")
        proc = subprocess.Popen([*chromium_cmd(tmp_path / "profile"), f"--remote-debugging-port={port}",
                                 "about:blank"], stdout=log, stderr=subprocess.STDOUT)
        dialogs = asyncio.run(drive(running.url("/"), port, token, incident["id"]))
        assert dialogs == [], f"injected script ran: {dialogs}"
        resolved = api(running, f"/api/v1/incidents/{incident['id']}", token)
        assert resolved["status"] == "resolved"
        assert [(n["author"], n["note"]) for n in resolved["resolution_notes"]] == [
            ("oncall", "rolled back <i>v2</i>")]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        running.stop()

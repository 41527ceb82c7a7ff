"""The web page at `GET /`, rendered by a real headless Chromium against the running app: the service
graph drawn as SVG from SDK spans, findings, RCA reports and incidents, and attacker-controlled text
(log lines in evidence, explanations) shown as text, never parsed as HTML."""

from __future__ import annotations

import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

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


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed: apt-get install -y chromium (see the Makefile's system deps)"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
           *extra, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    return r


def test_page_renders_graph_findings_and_escapes_log_text(tmp_path: Path) -> None:
    running = RunningApp(tmp_path)
    try:
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{running.app.otlp.grpc_port}", insecure=True)
        assert exporter.export(make_spans(("frontend", "checkout", "payment"), per_service=3,
                                          error_every=5)).name == "SUCCESS"
        exporter.shutdown()
        time.sleep(0.6)  # past the pairing TTL: root server spans become edges from `user`
        assert running.post("/api/v1/flush")["drained"] is True
        edges = {(e["source"], e["target"]) for e in running.get("/api/v1/graph")["edges"]}
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
        incidents = running.get("/api/v1/incidents?status=open")
        assert incidents and incidents[0]["root_cause_service"] == "payment"

        profile = tmp_path / "chromium-profile"
        page = running.url(f"/#incident={incidents[0]['id']}")  # deep link: that incident's details open
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
    assert [r.attrs["data-id"] for r in rows] == [incidents[0]["id"]]
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

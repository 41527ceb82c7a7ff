"""`llm-log-analyzer eval parsing --data DIR [--json]`: template-mining accuracy on Loghub-2k.

DIR holds Loghub-2k folders `<System>/<System>_2k.log_structured_corrected.csv` (falls back to
`_structured.csv`). The message is the `Content` column; the ground truth is `EventTemplate`.

Metrics as Loghub-2.0 defines them (Jiang et al., ISSTA'24; GA from Zhu et al., ICSE'19):
  * GA  -- grouping accuracy: a line is correct when the set of lines sharing its predicted template
           equals the set of lines sharing its ground-truth template.
  * FGA -- F1 over groups: precision = correct groups / predicted groups, recall = correct groups /
           ground-truth groups, a group being correct when it is exactly a ground-truth group.
  * PA  -- parsing accuracy: fraction of lines whose predicted template string equals the ground
           truth after the Loghub-2.0 template normalisation (`normalize_template`).
Lines are grouped by their predicted template string (as Loghub-2.0 does); each line gets the final
template of the cluster it was matched to (as the Loghub Drain benchmark does), one miner per system
and one default configuration for all systems.

The baseline runs in the same pass when drain3 is installed (the `dev` extra): drain3 0.9.11 with the
per-dataset settings of the Loghub Drain benchmark (`DRAIN3_SETTINGS`), its figures printed beside ours.
`python -m receiver.eval.parsing --data DIR --worst N` also lists, per system, the N ground-truth
templates with the most wrongly grouped lines and what the miner made of them (split / merged).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from receiver.logs.templates import TemplateMiner, TemplatesConfig

# --- metrics ---------------------------------------------------------------------------------------

_TOKEN_DELIMS = re.compile(r"([\s,!;:=|\"'\[\](){}.\-+@#$%&])")
_DIGITS = re.compile(r"^\d+$")
_WORD_VAR = re.compile(r"^[^\s/]*<\*>[^\s/]*$")


def normalize_template(template: str) -> str:
    """Loghub-2.0 template normalisation: collapse whitespace; digit-only tokens and tokens glued to a
    variable become `<*>`; consecutive variables (`<*><*>`, `<*>.<*>`, `<*>:<*>`, `<*>/<*>`, ...)
    collapse into one."""
    t = re.sub(r"\s+", " ", template.strip())
    pieces = _TOKEN_DELIMS.split(t)
    out = []
    for piece in pieces:
        if _DIGITS.match(piece):
            piece = "<*>"
        if _WORD_VAR.match(piece) and piece != "<*>/<*>":
            piece = "<*>"
        out.append(piece)
    t = "".join(out)
    for pattern in ("<*>.<*>", "<*><*>"):
        while pattern in t:
            t = t.replace(pattern, "<*>")
    for old, new in (
        (" #<*># ", " <*> "),
        (" #<*> ", " <*> "),
        ("<*>:<*>", "<*>"),
        ("<*>#<*>", "<*>"),
        ("<*>/<*>", "<*>"),
        ("<*>@<*>", "<*>"),
        ("<*>.<*>", "<*>"),
        (' "<*>" ', " <*> "),
        (" '<*>' ", " <*> "),
        ("<*><*>", "<*>"),
    ):
        while old in t:
            t = t.replace(old, new)
    return t


def grouping_accuracy(truth: Sequence[str], predicted: Sequence[object]) -> tuple[float, float]:
    """(GA, FGA) of a predicted grouping (any hashable label per line) against ground-truth labels."""
    if len(truth) != len(predicted):
        raise ValueError("truth and predicted differ in length")
    if not truth:
        return 0.0, 0.0
    pred_sizes = Counter(predicted)
    by_truth: dict[str, list[object]] = defaultdict(list)
    for t, p in zip(truth, predicted, strict=True):
        by_truth[t].append(p)
    correct_lines = 0
    correct_groups = 0
    for labels in by_truth.values():
        first = labels[0]
        if all(x == first for x in labels) and pred_sizes[first] == len(labels):
            correct_lines += len(labels)
            correct_groups += 1
    ga = correct_lines / len(truth)
    precision = correct_groups / len(pred_sizes)
    recall = correct_groups / len(by_truth)
    fga = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return ga, fga


def parsing_accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Fraction of lines whose normalised predicted template equals the normalised ground truth."""
    if len(truth) != len(predicted):
        raise ValueError("truth and predicted differ in length")
    if not truth:
        return 0.0
    cache: dict[str, str] = {}

    def norm(s: str) -> str:
        v = cache.get(s)
        if v is None:
            v = cache[s] = normalize_template(s)
        return v

    ok = sum(1 for t, p in zip(truth, predicted, strict=True) if norm(t) == norm(p))
    return ok / len(truth)


# --- data ------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    system: str
    contents: list[str]
    truth: list[str]
    source: str


def load_system(folder: Path) -> Dataset:
    system = folder.name
    path = folder / f"{system}_2k.log_structured_corrected.csv"
    if not path.exists():
        path = folder / f"{system}_2k.log_structured.csv"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no {system}_2k.log_structured[_corrected].csv")
    contents: list[str] = []
    truth: list[str] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if (
            not reader.fieldnames
            or "Content" not in reader.fieldnames
            or "EventTemplate" not in reader.fieldnames
        ):
            raise ValueError(f"{path}: needs Content and EventTemplate columns")
        for row in reader:
            contents.append(row["Content"] or "")
            truth.append(row["EventTemplate"] or "")
    return Dataset(system, contents, truth, str(path))


def load_all(data_dir: str | Path) -> list[Dataset]:
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / f"{folder.name}_2k.log_structured_corrected.csv").exists() or (
            folder / f"{folder.name}_2k.log_structured.csv"
        ).exists():
            out.append(load_system(folder))
    if not out:
        raise FileNotFoundError(f"{root}: no Loghub-2k system folders found")
    return out


# --- running ---------------------------------------------------------------------------------------


def mine(contents: Sequence[str], miner: TemplateMiner, service: str = "svc") -> tuple[list[str], float]:
    """Feed lines through the miner; returns (final template per line, seconds spent matching)."""
    ids: list[int] = []
    match = miner.match
    t0 = time.perf_counter()
    for line in contents:
        ids.append(match(service, line).template_id)
    elapsed = time.perf_counter() - t0
    final: dict[int, str] = {}
    out = []
    for i in ids:
        t = final.get(i)
        if t is None:
            t = final[i] = miner.template(service, i) or ""
        out.append(t)
    return out, elapsed


# --- the baseline: drain3 with the Loghub Drain benchmark's per-dataset settings -----------------------

# The baseline's own per-dataset settings (masking regexes, similarity threshold `st`, tree `depth`), as
# published in logpai/loghub-2.0 benchmark/old_benchmark/Drain_benchmark.py (Spark's effective regex list
# there is empty). They name datasets because the baseline is tuned per dataset; our miner is not.
DRAIN3_SETTINGS: dict[str, dict[str, object]] = {
    "HDFS": {"regex": [r"blk_-?\d+", r"(\d+\.){3}\d+(:\d+)?"], "st": 0.5, "depth": 4},
    "Hadoop": {"regex": [r"(\d+\.){3}\d+"], "st": 0.5, "depth": 4},
    "Spark": {"regex": [], "st": 0.5, "depth": 4},
    "Zookeeper": {"regex": [r"(/|)(\d+\.){3}\d+(:\d+)?"], "st": 0.5, "depth": 4},
    "BGL": {"regex": [r"core\.\d+"], "st": 0.5, "depth": 4},
    "HPC": {"regex": [r"=\d+"], "st": 0.5, "depth": 4},
    "Thunderbird": {"regex": [r"(\d+\.){3}\d+"], "st": 0.5, "depth": 4},
    "Windows": {"regex": [r"0x.*?\s"], "st": 0.7, "depth": 5},
    "Linux": {"regex": [r"(\d+\.){3}\d+", r"\d{2}:\d{2}:\d{2}"], "st": 0.39, "depth": 6},
    "Android": {
        "regex": [
            r"(/[\w-]+)+",
            r"([\w-]+\.){2,}[\w-]+",
            r"\b(\-?\+?\d+)\b|\b0[Xx][a-fA-F\d]+\b|\b[a-fA-F\d]{4,}\b",
        ],
        "st": 0.2,
        "depth": 6,
    },
    "HealthApp": {"regex": [], "st": 0.2, "depth": 4},
    "Apache": {"regex": [r"(\d+\.){3}\d+"], "st": 0.5, "depth": 4},
    "Proxifier": {
        "regex": [r"<\d+\ssec", r"([\w-]+\.)+[\w-]+(:\d+)?", r"\d{2}:\d{2}(:\d{2})*", r"[KGTM]B"],
        "st": 0.6,
        "depth": 3,
    },
    "OpenSSH": {"regex": [r"(\d+\.){3}\d+", r"([\w-]+\.){2,}[\w-]+"], "st": 0.6, "depth": 5},
    "OpenStack": {"regex": [r"((\d+\.){3}\d+,?)+", r"/.+?\s", r"\d+"], "st": 0.5, "depth": 5},
    "Mac": {"regex": [r"([\w-]+\.){2,}[\w-]+"], "st": 0.7, "depth": 6},
}
DRAIN3_DEFAULT: dict[str, object] = {"regex": [], "st": 0.4, "depth": 4}


def drain3_available() -> bool:
    try:
        import drain3  # noqa: F401
    except ImportError:
        return False
    return True


def make_drain3(system: str) -> Any:
    """A drain3 TemplateMiner with the baseline settings for `system` (drain3 must be installed)."""
    from drain3 import TemplateMiner as Drain3Miner
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    s = DRAIN3_SETTINGS.get(system, DRAIN3_DEFAULT)
    cfg = TemplateMinerConfig()
    cfg.drain_sim_th = float(s["st"])  # type: ignore[arg-type]
    cfg.drain_depth = int(s["depth"])  # type: ignore[call-overload]
    cfg.masking_instructions = [MaskingInstruction(rx, "*") for rx in s["regex"]]  # type: ignore[attr-defined]
    cfg.profiling_enabled = False
    return Drain3Miner(config=cfg)


def mine_drain3(system: str, contents: Sequence[str]) -> tuple[list[str], float]:
    """Feed lines through drain3 (baseline settings); (final template per line, seconds spent)."""
    logging.getLogger("drain3").setLevel(logging.WARNING)
    miner = make_drain3(system)
    add = miner.add_log_message
    t0 = time.perf_counter()
    ids = [add(line)["cluster_id"] for line in contents]
    elapsed = time.perf_counter() - t0
    clusters = miner.drain.id_to_cluster
    return [clusters[i].get_template() for i in ids], elapsed


# --- evaluation -------------------------------------------------------------------------------------


def scores(truth: Sequence[str], predicted: Sequence[str]) -> tuple[float, float, float]:
    """(GA, FGA, PA) of predicted final templates against the ground truth."""
    ga, fga = grouping_accuracy(truth, [normalize_template(p) for p in predicted])
    return ga, fga, parsing_accuracy(truth, predicted)


def evaluate(
    ds: Dataset, make_miner: Callable[[], TemplateMiner] | None = None, baseline: bool = False
) -> dict[str, object]:
    """Our default miner's GA / FGA / PA on one system; with `baseline`, drain3's too (`drain3_*`)."""
    miner = make_miner() if make_miner else TemplateMiner(TemplatesConfig())
    predicted, elapsed = mine(ds.contents, miner)
    grouped = [normalize_template(p) for p in predicted]
    ga, fga = grouping_accuracy(ds.truth, grouped)
    pa = parsing_accuracy(ds.truth, predicted)
    out: dict[str, object] = {
        "system": ds.system,
        "ga": round(ga, 4),
        "fga": round(fga, 4),
        "pa": round(pa, 4),
        "templates": len(set(grouped)),
        "truth_templates": len(set(ds.truth)),
        "lines_per_s": round(len(ds.contents) / elapsed) if elapsed > 0 else 0,
        "predicted": predicted,
    }
    if baseline:
        d_pred, d_elapsed = mine_drain3(ds.system, ds.contents)
        d_ga, d_fga, d_pa = scores(ds.truth, d_pred)
        out.update(
            {
                "drain3_ga": round(d_ga, 4),
                "drain3_fga": round(d_fga, 4),
                "drain3_pa": round(d_pa, 4),
                "drain3_lines_per_s": round(len(ds.contents) / d_elapsed) if d_elapsed > 0 else 0,
            }
        )
    return out


_METRICS = ("ga", "fga", "pa")


def evaluate_dir(data_dir: str | Path, baseline: bool | None = None) -> dict[str, object]:
    """Every system in `data_dir`, plus the average. The drain3 baseline runs in the same pass when
    `baseline` is true (default: when drain3 is installed)."""
    if baseline is None:
        baseline = drain3_available()
    datasets = load_all(data_dir)
    systems = [evaluate(ds, baseline=baseline) for ds in datasets]
    n = len(systems)
    keys = [*_METRICS, *(f"drain3_{k}" for k in _METRICS)] if baseline else list(_METRICS)
    average = {k: round(sum(float(s[k]) for s in systems) / n, 4) for k in keys}  # type: ignore[arg-type]
    return {"systems": systems, "average": average, "datasets": datasets}


def worst_groups(ds: Dataset, predicted: Sequence[str], top: int) -> list[dict[str, object]]:
    """The `top` ground-truth templates with the most wrongly grouped lines, each with the predicted
    groups its lines went to: `lines` (how many of its lines), `others` (lines of other ground-truth
    templates in that predicted group: > 0 means merged) and one example line."""
    grouped = [normalize_template(p) for p in predicted]
    size = Counter(grouped)
    by_truth: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(ds.truth):
        by_truth[t].append(i)
    wrong = []
    for truth, idx in by_truth.items():
        parts = Counter(grouped[i] for i in idx)
        if len(parts) == 1 and size[grouped[idx[0]]] == len(idx):
            continue
        wrong.append(
            {
                "truth": truth,
                "lines": len(idx),
                "predicted": [
                    {
                        "template": p,
                        "lines": c,
                        "others": size[p] - c,
                        "example": next(ds.contents[i] for i in idx if grouped[i] == p),
                    }
                    for p, c in parts.most_common()
                ],
            }
        )
    wrong.sort(key=lambda w: -int(w["lines"]))  # type: ignore[call-overload]
    return wrong[:top]


def format_worst(result: dict[str, object], top: int, width: int = 160) -> str:
    lines = []
    datasets = {ds.system: ds for ds in result["datasets"]}  # type: ignore[attr-defined]
    for s in result["systems"]:  # type: ignore[union-attr]
        ds = datasets[s["system"]]
        worst = worst_groups(ds, s["predicted"], top)
        bad = sum(int(w["lines"]) for w in worst_groups(ds, s["predicted"], len(ds.truth)))
        lines.append(f"== {s['system']}: {bad} of {len(ds.truth)} lines in wrongly grouped truth templates")
        for w in worst:
            lines.append(f"  {w['lines']:>5}  truth: {str(w['truth'])[:width]}")
            for p in w["predicted"][:4]:  # type: ignore[index]
                merged = f" (+{p['others']} lines of other templates)" if p["others"] else ""
                lines.append(f"  {p['lines']:>9} -> {str(p['template'])[:width]}{merged}")
                lines.append(f"{'':>14}e.g. {str(p['example'])[:width]}")
    return "\n".join(lines)


def format_table(result: dict[str, object]) -> str:
    avg = result["average"]
    baseline = "drain3_ga" in avg  # type: ignore[operator]
    if baseline:
        lines = [
            "ours: one default configuration; drain3 0.9.11: per-dataset Loghub benchmark settings",
            f"{'system':<12} {'GA ours':>8} {'drain3':>7} {'FGA ours':>9} {'drain3':>7} {'PA ours':>8} "
            f"{'drain3':>7} {'templates':>9} {'truth':>6} {'lines/s':>9}",
        ]
    else:
        lines = [
            f"{'system':<12} {'GA':>6} {'FGA':>6} {'PA':>6} {'templates':>9} {'truth':>6} {'lines/s':>9}"
        ]
    for s in result["systems"]:  # type: ignore[union-attr]
        if baseline:
            lines.append(
                f"{s['system']:<12} {s['ga']:>8.3f} {s['drain3_ga']:>7.3f} {s['fga']:>9.3f} "
                f"{s['drain3_fga']:>7.3f} {s['pa']:>8.3f} {s['drain3_pa']:>7.3f} {s['templates']:>9} "
                f"{s['truth_templates']:>6} {s['lines_per_s']:>9}"
            )
        else:
            lines.append(
                f"{s['system']:<12} {s['ga']:>6.3f} {s['fga']:>6.3f} {s['pa']:>6.3f} {s['templates']:>9} "
                f"{s['truth_templates']:>6} {s['lines_per_s']:>9}"
            )
    if baseline:
        lines.append(
            f"{'average':<12} {avg['ga']:>8.3f} {avg['drain3_ga']:>7.3f} {avg['fga']:>9.3f} "  # type: ignore[index]
            f"{avg['drain3_fga']:>7.3f} {avg['pa']:>8.3f} {avg['drain3_pa']:>7.3f}"  # type: ignore[index]
        )
        below = [
            f"{s['system']} {k.upper()}"
            for s in result["systems"]  # type: ignore[union-attr]
            for k in _METRICS
            if s[k] < s[f"drain3_{k}"] or (s[k] == s[f"drain3_{k}"] and s[k] < 1.0)
        ]
        lines.append("not above drain3: " + (", ".join(below) if below else "none"))
    else:
        lines.append(f"{'average':<12} {avg['ga']:>6.3f} {avg['fga']:>6.3f} {avg['pa']:>6.3f}")  # type: ignore[index]
        lines.append("(drain3 not installed: install the dev extra to print the baseline beside ours)")
    return "\n".join(lines)


def run(data_dir: str, as_json: bool, worst: int = 0) -> int:
    """Evaluate the default miner on every system in `data_dir` (drain3 beside it when installed); print
    a table or JSON, and with `worst` the worst-grouped ground-truth templates. Returns exit code."""
    try:
        result = evaluate_dir(data_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"eval parsing: {exc}", file=sys.stderr)
        return 2
    if as_json:
        out = {
            "systems": [
                {k: s[k] for k in ("system", "ga", "fga", "pa", "templates", "lines_per_s")}
                for s in result["systems"]  # type: ignore[union-attr]
            ],
            "average": {k: result["average"][k] for k in _METRICS},  # type: ignore[index]
        }
        print(json.dumps(out))
    else:
        print(format_table(result))
    if worst > 0:
        print(format_worst(result, worst))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm-log-analyzer eval parsing", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="directory of Loghub-2k <System>/ folders")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument(
        "--worst", type=int, default=0, metavar="N",
        help="also print, per system, the N ground-truth templates with the most wrongly grouped lines",
    )  # fmt: skip
    args = ap.parse_args(argv)
    return run(args.data, args.json, args.worst)


if __name__ == "__main__":
    sys.exit(main())

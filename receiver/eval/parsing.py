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
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def evaluate(ds: Dataset, make_miner: Callable[[], TemplateMiner] | None = None) -> dict[str, object]:
    miner = make_miner() if make_miner else TemplateMiner(TemplatesConfig())
    predicted, elapsed = mine(ds.contents, miner)
    grouped = [normalize_template(p) for p in predicted]
    ga, fga = grouping_accuracy(ds.truth, grouped)
    pa = parsing_accuracy(ds.truth, predicted)
    return {
        "system": ds.system,
        "ga": round(ga, 4),
        "fga": round(fga, 4),
        "pa": round(pa, 4),
        "templates": len(set(grouped)),
        "truth_templates": len(set(ds.truth)),
        "lines_per_s": round(len(ds.contents) / elapsed) if elapsed > 0 else 0,
    }


def evaluate_dir(data_dir: str | Path) -> dict[str, object]:
    systems = [evaluate(ds) for ds in load_all(data_dir)]
    n = len(systems)
    average = {k: round(sum(float(s[k]) for s in systems) / n, 4) for k in ("ga", "fga", "pa")}  # type: ignore[arg-type]
    return {"systems": systems, "average": average}


def format_table(result: dict[str, object]) -> str:
    lines = [f"{'system':<12} {'GA':>6} {'FGA':>6} {'PA':>6} {'templates':>9} {'truth':>6} {'lines/s':>9}"]
    for s in result["systems"]:  # type: ignore[union-attr]
        lines.append(
            f"{s['system']:<12} {s['ga']:>6.3f} {s['fga']:>6.3f} {s['pa']:>6.3f} {s['templates']:>9} "
            f"{s['truth_templates']:>6} {s['lines_per_s']:>9}"
        )
    avg = result["average"]
    lines.append(f"{'average':<12} {avg['ga']:>6.3f} {avg['fga']:>6.3f} {avg['pa']:>6.3f}")  # type: ignore[index]
    return "\n".join(lines)


def run(data_dir: str, as_json: bool) -> int:
    """Evaluate the default miner on every system in `data_dir`; print a table or JSON. Returns exit code."""
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
            "average": result["average"],
        }
        print(json.dumps(out))
    else:
        print(format_table(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llm-log-analyzer eval parsing", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="directory of Loghub-2k <System>/ folders")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    return run(args.data, args.json)


if __name__ == "__main__":
    sys.exit(main())

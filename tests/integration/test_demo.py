"""`make demo` as a test: the closed loop on real servers, judged by what the demo prints.

The demo trains fraud v1, streams 60,000 card transactions with late labels, injects a concept
drift a third of the way in, and must end with a retrained version promoted by the retrain
controller, its error rate back near v1's pre-drift level, and its lineage naming the drift
event that started it.
"""

from __future__ import annotations

import re

from driftline.commands.demo import run_demo


def test_the_demo_closes_the_loop(settings):
    lines: list[str] = []
    code = run_demo(settings, out=lines.append)
    text = "\n".join(lines)
    assert code == 0, text
    assert re.search(r"closed loop: yes: error rate v1 0\.\d+ before the drift, 0\.\d+ after; "
                     r"v2 0\.\d+ after the drift", text), text
    rates = {name: float(rate) for name, rate in re.findall(
        r"^\s+(v\d (?:before|after) the drift)\s+\d+\s+(0\.\d+)$", text, re.M)}
    assert rates["v1 after the drift"] > 2 * rates["v1 before the drift"], rates
    assert rates["v2 after the drift"] < rates["v1 after the drift"] / 2, rates
    # The lineage names the drift event behind v2, and it is an error-stream detector's.
    lineage = text.split("lineage (driftline models show fraud):", 1)[1]
    assert re.search(r"fraud v2 \(Production\)", lineage), lineage
    assert re.search(r"triggered by drift event (adwin|ddm):fraud:1:", lineage), lineage
    assert "gate roc_auc" in lineage and "None -> Production" in lineage
    assert "skew audit (backfill vs served): 60001 rows compared, 0 mismatches" in text

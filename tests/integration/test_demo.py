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
    loop = re.search(r"closed loop: yes: error rate (0\.\d+) before the drift, (0\.\d+) after "
                     r"it \((v[\d, v]+)\), (0\.\d+) once v(\d+) \(retrained after the drift\)",
                     text)
    assert loop, text
    before, hit, new = (float(loop[i]) for i in (1, 2, 4))
    final = int(loop[5])
    assert hit > 2 * before and new < hit / 2, text
    # The lineage names the drift event behind v2, and it is an error-stream detector's.
    lineage = text.split("lineage (driftline models show fraud):", 1)[1]
    assert f"fraud v{final} (Production)" in lineage, lineage
    assert re.search(r"triggered by drift event (adwin|ddm):fraud:\d+:", lineage), lineage
    assert "gate roc_auc" in lineage and "None -> Production" in lineage
    assert "skew audit (backfill vs served): 60001 rows compared, 0 mismatches" in text

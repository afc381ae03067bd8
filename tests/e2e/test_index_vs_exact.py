"""``m2grl-train evaluate --index``: the index scored as the service queries it, next to exact search."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import run_tool


def test_evaluate_reports_index_against_exact_search(
    prepared_ml: Path, artifact_root: Path, tmp_path: Path
) -> None:
    artifact = next(p for p in artifact_root.iterdir() if not p.name.startswith("."))
    indexes = tmp_path / "indexes"
    run_tool("m2grl-index", "build", "--artifact", str(artifact), "--out", str(indexes))
    version = indexes / (indexes / "CURRENT").read_text().strip()
    out = tmp_path / "metrics.json"
    run_tool(
        "m2grl-train", "evaluate", "--data", str(prepared_ml), "--artifact", str(artifact),
        "--methods", "m2grl", "--k", "10,50", "--index", str(version), "--out", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    check = result["index_vs_exact"]
    general = check["general"]
    # exact search over the index's own vectors is the m2grl method itself (same vectors, same filtering)
    assert general["exact"]["hr@50"] == result["methods"]["m2grl"]["hr@50"]
    # the build guarantees recall@50 >= 0.98 on sampled items; the served lists must agree as closely
    assert general["overlap@50"] >= 0.95 and check["diversity"]["overlap@50"] >= 0.95
    assert abs(general["difference"]["hr@50"]) <= 0.03
    for key in ("hr@10", "precision@50", "recall@50", "f1@50"):
        assert general["difference"][key] == general["index"][key] - general["exact"][key]

    bad = run_tool("m2grl-train", "evaluate", "--data", str(prepared_ml), "--methods", "popularity",
                   "--index", str(tmp_path / "nope"), "--out", str(out), check=False)  # fmt: skip
    assert bad.returncode == 2 and "not an index version directory" in bad.stderr

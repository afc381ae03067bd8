"""metrics.json -> metrics.md: one Markdown table per K (values in percent, ± sample std over seeds)."""

from __future__ import annotations

from typing import Any

COLUMNS = [("hr", "HitRate"), ("recall", "Recall"), ("precision", "Precision"), ("f1", "F1")]


def _cell(entry: dict[str, Any], key: str) -> str:
    if key not in entry:
        return "–"
    text = f"{100 * entry[key]:.2f}"
    if f"{key}_std" in entry:
        text += f" ± {100 * entry[f'{key}_std']:.2f}"
    return text


def markdown_report(metrics: dict[str, Any]) -> str:
    proto = metrics["protocol"]
    lines = [
        f"# Offline evaluation: {proto.get('dataset', '?')}",
        "",
        f"{metrics['n_test_users']} test users, {proto.get('n_items', '?')} items; seeds {proto.get('seeds')}. "
        "Trigger: the user's last training item; ground truth: the user's new test items known to training. "
        "Values in %.",
        "",
    ]
    for k in proto["ks"]:
        lines += [
            f"## K = {k}",
            "",
            "| method | " + " | ".join(f"{label}@{k}" for _, label in COLUMNS) + " | seconds |",
            "|---|" + "---:|" * (len(COLUMNS) + 1),
        ]
        for name, entry in metrics["methods"].items():
            if "skipped" in entry:
                lines.append(f"| {name} | skipped: {entry['skipped']} |" + " |" * len(COLUMNS))
                continue
            cells = [_cell(entry, f"{m}@{k}") for m, _ in COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {entry['seconds']:.1f} |")
        lines.append("")
    div = metrics.get("diversity")
    if div:
        lines += ["## Discovery of new categories (top 50)", ""]
        if "skipped" in div:
            lines += [f"skipped: {div['skipped']}", ""]
        else:
            lines += [
                f"{div['n_discovery_users']} test users with ground truth in categories new to them "
                f"(category view {div['category_view']!r}, method {div['method']}).",
                "",
                "| strategy | discovery HitRate@50 (%) | distinct categories in top 50 |",
                "|---|---:|---:|",
            ]
            for strategy in ("general", "diversity"):
                d = div.get(strategy, {})
                if "skipped" in d:
                    lines.append(f"| {strategy} | skipped: {d['skipped']} | |")
                else:
                    lines.append(
                        f"| {strategy} | {100 * d['discovery_hr@50']:.2f} | {d['distinct_categories@50']:.2f} |"
                    )
            lines.append("")
    check = metrics.get("index_vs_exact")
    if check:
        k = max(proto["ks"])
        lines += [
            f"## HNSW index {check['index_version']} against exact search (K = {k})",
            "",
            f"| strategy | HitRate@{k} index | HitRate@{k} exact | difference | overlap of top {k} |",
            "|---|---:|---:|---:|---:|",
        ]
        for strategy in ("general", "diversity"):
            if strategy in check:
                c = check[strategy]
                lines.append(
                    f"| {strategy} | {100 * c['index'][f'hr@{k}']:.2f} | {100 * c['exact'][f'hr@{k}']:.2f} | "
                    f"{100 * c['difference'][f'hr@{k}']:+.2f} | {100 * c[f'overlap@{k}']:.2f} |"
                )
        lines.append("")
    return "\n".join(lines)

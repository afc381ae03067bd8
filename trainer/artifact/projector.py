"""Export an artifact view for the TensorFlow Embedding Projector (https://projector.tensorflow.org/).

``vectors.tsv``: one row of tab-separated floats per node, no header. ``metadata.tsv``: a header line, then one
row per node in the same order. For the item view the columns are ``id`` and one column per attribute view
(the item's attribute id, empty when none); for an attribute view ``id`` and ``n_items`` (items mapped to it).
The projector needs a header exactly when metadata has more than one column, which holds for both layouts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.artifact.loader import Artifact
from trainer.artifact.manifest import ITEM_VIEW


def _clean(text: str) -> str:
    # A tab or newline inside an id would shift columns or rows in the projector's parser.
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def metadata_columns(art: Artifact, view: str, rows: np.ndarray) -> dict[str, list[str]]:
    """Metadata columns (name -> one string per exported row) of ``view``."""
    ids = art.ids(view)
    cols = {"id": [_clean(str(ids[r])) for r in rows]}
    if view == ITEM_VIEW:
        for attr_view in art.manifest.attribute_views:
            attr_ids = art.ids(attr_view)
            attr = art.item_attr(attr_view)[rows]
            cols[attr_view] = [_clean(str(attr_ids[a])) if a >= 0 else "" for a in attr.tolist()]
    else:
        attr = np.asarray(art.item_attr(view))
        counts = np.bincount(attr[attr >= 0], minlength=len(ids))
        cols["n_items"] = [str(int(c)) for c in counts[rows]]
    return cols


def export_projector(art: Artifact, out: Path | str, view: str = ITEM_VIEW, limit: int | None = None) -> int:
    """Write ``out``/vectors.tsv and ``out``/metadata.tsv for the first ``limit`` rows of ``view``; returns rows.

    view: any view of the artifact, or 'z' for the diversity vectors of the items (metadata as the item view).
    limit: None = all rows.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if view == "z":
        vectors, meta_view = art.z, ITEM_VIEW
    else:
        vectors, meta_view = art.embeddings(view), view
    n = len(vectors) if limit is None else min(limit, len(vectors))
    rows = np.arange(n)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "vectors.tsv", np.asarray(vectors[:n], dtype=np.float64), delimiter="\t", fmt="%.6g")
    cols = metadata_columns(art, meta_view, rows)
    lines = ["\t".join(cols)] + ["\t".join(vals) for vals in zip(*cols.values(), strict=True)]
    (out / "metadata.tsv").write_text("\n".join(lines) + "\n")
    return n

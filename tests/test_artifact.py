"""The versioned artifact: writer/loader round trip, atomicity, verification, plots, projector export, fit command."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainer.artifact import Artifact, ArtifactError, list_versions
from trainer.artifact import writer as writer_mod
from trainer.artifact.writer import update_eval, write_artifact
from trainer.checksums import sha256_file
from trainer.commands import export_projector as export_cmd
from trainer.commands import fit as fit_cmd
from trainer.data.prepared import PreparedDataError
from trainer.model.config import TrainConfig
from trainer.model.metric import diversity_vectors
from trainer.model.result import TrainedModel

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_model(seed: int = 0, n_items: int = 60) -> TrainedModel:
    """Random tables with the shapes training produces: views item, category (7 nodes), shop (5 nodes)."""
    rng = np.random.default_rng(seed)
    dim, rd = 6, 4
    config = TrainConfig(dim=dim, relation_dim=rd, seed=seed)
    sizes = {"item": n_items, "category": 7, "shop": 5}
    cat = rng.integers(0, 7, n_items).astype(np.int32)
    cat[:3] = -1
    curves = [
        {"step": s, "loss_item": 3.0 / (s + 1), "loss_category": 2.0 / (s + 1), "sigma2_item": 1.0 - 0.01 * s}
        for s in range(0, 50, 10)
    ]
    return TrainedModel(
        config=config,
        views=list(sizes),
        node_ids={
            v: np.array([f"{v}\t{k}" if k == 1 else f"{v}{k}" for k in range(n)], dtype=object)
            for v, n in sizes.items()
        },
        embeddings={v: rng.normal(size=(n, dim)).astype(np.float32) for v, n in sizes.items()},
        context_embeddings={v: rng.normal(size=(n, dim)).astype(np.float32) for v, n in sizes.items()},
        item_to_attr={"category": cat, "shop": rng.integers(-1, 5, n_items).astype(np.int32)},
        W={v: rng.normal(size=(rd, dim)).astype(np.float32) for v in ("category", "shop")},
        sigma2={"item": 0.5, "category": 0.7, "shop": 0.9, "item-category": 1.1, "item-shop": 1.3},
        curves=curves,
        L_i=rng.normal(size=(dim, dim)),
        L_ic=rng.normal(size=(rd, rd)),
        metric_curve=[{"epoch": 0, "step": 0, "loss": 1.0}, {"epoch": 1, "step": 3, "loss": 0.5}],
    )


def write(model: TrainedModel, root: Path, **kw) -> Path:
    return write_artifact(model, root, dataset="fake", prepared_fingerprint="abc123", **kw)


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainedModel, Path]:
    model = fake_model()
    return model, write(model, tmp_path_factory.mktemp("art"), version="v1")


def copy_of(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_round_trip(artifact_dir: tuple[TrainedModel, Path]) -> None:
    model, path = artifact_dir
    art = Artifact.open(path)
    m = art.manifest
    assert path.name == "v1" == m.version
    assert (m.dataset, m.prepared_fingerprint, m.metric_view) == ("fake", "abc123", "category")
    assert [(v.name, v.n_nodes, v.dim) for v in m.views] == [
        ("item", 60, 6),
        ("category", 7, 6),
        ("shop", 5, 6),
    ]
    assert m.tasks == ["item", "category", "shop", "item-category", "item-shop"]
    assert m.sigma2 == model.sigma2
    assert TrainConfig.model_validate(m.config) == model.config
    for v in model.views:
        np.testing.assert_array_equal(art.embeddings(v), model.embeddings[v])
        assert art.ids(v) == list(model.node_ids[v])
    assert art.id_index("shop")["shop3"] == 3
    np.testing.assert_array_equal(art.item_attr("category"), model.item_to_attr["category"])
    W, item_side, attr_side = art.relational("shop")
    np.testing.assert_array_equal(W, model.W["shop"])
    np.testing.assert_allclose(
        item_side, 1 / (1 + np.exp(-(model.embeddings["item"] @ model.W["shop"].T))), rtol=1e-6
    )
    np.testing.assert_allclose(attr_side, model.relational("shop")[1])
    np.testing.assert_allclose(art.M_i, model.L_i.T @ model.L_i)
    np.testing.assert_allclose(art.M_ic, art.L_ic.T @ art.L_ic)
    np.testing.assert_array_equal(art.z, diversity_vectors(model))
    assert set(m.files) >= {"curves.csv", "curves.png", "embeddings.png", "metric_curve.csv", "metric/z.npy"}
    lines = (path / "curves.csv").read_text().splitlines()
    assert lines[0] == "step,loss_item,loss_category,sigma2_item" and len(lines) == 6
    assert len((path / "metric_curve.csv").read_text().splitlines()) == 3
    with pytest.raises(KeyError, match="brand"):
        art.embeddings("brand")


def test_loader_needs_no_torch_polars_or_matplotlib() -> None:
    code = (
        "import sys, trainer.artifact.loader, trainer.artifact;"
        "bad = [m for m in ('torch', 'polars', 'matplotlib') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_versions_are_unique_and_latest_is_newest(tmp_path: Path) -> None:
    model = fake_model(n_items=20)
    first = write(model, tmp_path, draw_plots=False)
    assert re.fullmatch(r"\d{8}T\d{6}Z", first.name)
    again = write(model, tmp_path, version=first.name, draw_plots=False)
    assert again.name == f"{first.name}-1"
    older_name = write(
        model, tmp_path, version="00000000", draw_plots=False
    )  # sorts first by name, newest by time
    assert [p.name for p in list_versions(tmp_path)] == [first.name, again.name, "00000000"]
    assert Artifact.latest(tmp_path).path == older_name
    with pytest.raises(ValueError, match="version '.hidden'"):
        write(model, tmp_path, version=".hidden")


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(tmp: Path, model: TrainedModel) -> None:
        assert (tmp / "embeddings" / "item.npy").exists()  # arrays are already written at this point
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(writer_mod, "_write_plots", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write(fake_model(n_items=20), tmp_path, version="v1")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_is_ignored_and_cleaned(
    tmp_path: Path, artifact_dir: tuple[TrainedModel, Path]
) -> None:
    _, good = artifact_dir
    copy_of(good, tmp_path / "v1")
    # A killed writer's directory, complete but for the rename, and newer: never listed.
    stale = copy_of(good, tmp_path / ".tmp-v2-4242")
    fresh = copy_of(good, tmp_path / ".tmp-v3-4343")
    assert [p.name for p in list_versions(tmp_path)] == ["v1"]
    assert Artifact.latest(tmp_path).version == "v1"
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    write(fake_model(n_items=20), tmp_path, version="v4", draw_plots=False)
    assert not stale.exists() and fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-v3-4343", "v1", "v4"]


def test_flipped_byte_is_reported(tmp_path: Path, artifact_dir: tuple[TrainedModel, Path]) -> None:
    path = copy_of(artifact_dir[1], tmp_path / "v1")
    target = path / "embeddings" / "category.npy"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"embeddings/category\.npy: sha256"):
        Artifact.open(path)
    Artifact.open(path, verify=False)  # the manifest alone is still fine


def test_missing_extra_and_inconsistent_files(
    tmp_path: Path, artifact_dir: tuple[TrainedModel, Path]
) -> None:
    path = copy_of(artifact_dir[1], tmp_path / "a")
    (path / "metric" / "z.npy").unlink()
    with pytest.raises(ArtifactError, match=r"metric/z\.npy: missing"):
        Artifact.open(path)

    path = copy_of(artifact_dir[1], tmp_path / "b")
    (path / "notes.txt").write_text("hi")
    with pytest.raises(ArtifactError, match=r"notes\.txt: not listed"):
        Artifact.open(path)

    # An id map one entry short whose checksum was updated: only the shape check can catch it.
    path = copy_of(artifact_dir[1], tmp_path / "c")
    ids_path = path / "ids" / "shop.json"
    ids_path.write_text(json.dumps(json.loads(ids_path.read_text())[:-1]))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["ids/shop.json"] = sha256_file(ids_path)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"ids/shop\.json: 4 ids, the view has 5 rows"):
        Artifact.open(path)

    manifest["schema_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"manifest\.json: schema_version 99"):
        Artifact.open(path, verify=False)


def test_plots_are_png(artifact_dir: tuple[TrainedModel, Path]) -> None:
    from matplotlib.image import imread

    for name in ("curves.png", "embeddings.png"):
        path = artifact_dir[1] / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 600
        assert img[..., :3].std() > 0.01  # something was drawn


def test_update_eval_keeps_the_artifact_valid(
    tmp_path: Path, artifact_dir: tuple[TrainedModel, Path]
) -> None:
    path = copy_of(artifact_dir[1], tmp_path / "v1")
    update_eval(path, {"hit_rate@50": 0.25})
    assert Artifact.open(path).manifest.eval == {"hit_rate@50": 0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def run_command(mod, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    mod.add_arguments(parser)
    return mod.run(parser.parse_args(argv))


def test_export_projector(tmp_path: Path, artifact_dir: tuple[TrainedModel, Path]) -> None:
    model, path = artifact_dir
    out = tmp_path / "proj"
    assert run_command(export_cmd, ["--artifact", str(path.parent), "--out", str(out), "--limit", "25"]) == 0
    vectors = (out / "vectors.tsv").read_text().splitlines()
    meta = (out / "metadata.tsv").read_text().splitlines()
    assert len(vectors) == 25 and len(meta) == 26
    assert meta[0] == "id\tcategory\tshop"
    np.testing.assert_allclose(
        np.array(vectors[4].split("\t"), float), model.embeddings["item"][4], rtol=1e-5
    )
    assert meta[2].split("\t")[0] == "item 1"  # the tab inside the id must not split the column
    assert all(len(line.split("\t")) == 3 for line in meta)
    c4 = model.item_to_attr["category"][4]
    assert meta[5].split("\t")[1] == (model.node_ids["category"][c4] if c4 >= 0 else "")
    assert meta[1].split("\t")[1] == ""  # item 0 has no category

    run_command(export_cmd, ["--artifact", str(path), "--out", str(out), "--view", "z"])
    z_rows = np.loadtxt(out / "vectors.tsv", delimiter="\t")
    np.testing.assert_allclose(z_rows, diversity_vectors(model), rtol=1e-5, atol=1e-6)

    run_command(export_cmd, ["--artifact", str(path), "--out", str(out), "--view", "category"])
    meta = (out / "metadata.tsv").read_text().splitlines()
    assert len((out / "vectors.tsv").read_text().splitlines()) == 7 and meta[0] == "id\tn_items"
    assert sum(int(line.split("\t")[1]) for line in meta[1:]) == int(
        (model.item_to_attr["category"] >= 0).sum()
    )


def test_fit_flags_are_generated_from_the_config() -> None:
    parser = argparse.ArgumentParser()
    fit_cmd.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            "d",
            "--out",
            "o",
            "--dim",
            "16",
            "--no-inter-view",
            "--views",
            "item,category",
            "--weighting",
            "uniform",
            "--lr",
            "0.5",
            "--metric-view",
            "genre",
        ]
    )
    cfg = fit_cmd.config_from_args(args)
    assert (cfg.dim, cfg.inter_view, cfg.views, cfg.weighting, cfg.lr, cfg.metric_view) == (
        16,
        False,
        ["item", "category"],
        "uniform",
        0.5,
        "genre",
    )
    assert cfg.epochs == TrainConfig().epochs and "epochs" not in cfg.model_fields_set
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--out", "o", "--weighting", "nope"])
    with pytest.raises(ValueError, match="--dim: Input should be greater than or equal to 2"):
        fit_cmd.config_from_args(parser.parse_args(["--data", "d", "--out", "o", "--dim", "1"]))


def test_fit_reports_missing_and_incompatible_prepared_data(tmp_path: Path) -> None:
    with pytest.raises(PreparedDataError, match="no prepared data directory"):
        run_command(fit_cmd, ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "art")])
    prepared = tmp_path / "prep"
    prepared.mkdir()
    (prepared / "manifest.json").write_text(json.dumps({"schema_version": 99, "dataset": "x"}))
    with pytest.raises(PreparedDataError, match="schema_version 99"):
        run_command(fit_cmd, ["--data", str(prepared), "--out", str(tmp_path / "art")])
    assert not (tmp_path / "art").exists()


def tiny_prepared(root: Path, seed: int = 0) -> Path:
    """A prepared directory written through the contract (save_view + PreparedManifest): 40 items in 5
    categories, 60 sessions that usually switch category."""
    from trainer.data.prepared import PreparedManifest, ViewData, save_view

    rng = np.random.default_rng(seed)
    n_items, n_cat = 40, 5
    item_cat = (np.arange(n_items) % n_cat).astype(np.int32)
    sessions = [rng.choice(n_items, size=int(rng.integers(3, 8)), replace=False) for _ in range(60)]

    def view(name: str, ids: list[str], seqs: list[np.ndarray], i2n: np.ndarray | None) -> ViewData:
        seqs = [s for s in seqs if len(s) >= 2]
        src = np.concatenate([s[:-1] for s in seqs]).astype(np.int32)
        dst = np.concatenate([s[1:] for s in seqs]).astype(np.int32)
        return ViewData(
            name=name,
            node_ids=np.array(ids, dtype=object),
            node_counts=np.bincount(np.concatenate(seqs), minlength=len(ids)).astype(np.int64),
            seq_tokens=np.concatenate(seqs).astype(np.int32),
            seq_offsets=np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64),
            edge_src=src,
            edge_dst=dst,
            edge_weight=np.ones(len(src), np.int64),
            item_to_node=i2n,
        )

    def dedup(s: np.ndarray) -> np.ndarray:
        return s[np.concatenate([[True], s[1:] != s[:-1]])]

    path = root / "prepared"
    save_view(path / "views" / "item", view("item", [f"i{k}" for k in range(n_items)], sessions, None))
    cat_seqs = [dedup(item_cat[s]) for s in sessions]
    save_view(
        path / "views" / "category", view("category", [f"c{k}" for k in range(n_cat)], cat_seqs, item_cat)
    )
    files = {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}
    manifest = PreparedManifest(
        dataset="tiny",
        source="test",
        created_at="2026-01-01T00:00:00Z",
        options={},
        views=["item", "category"],
        files=files,
    )
    (path / "manifest.json").write_text(manifest.model_dump_json())
    return path


def test_fit_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("trainer.model.train")
    prepared = tiny_prepared(tmp_path)
    argv = ["--data", str(prepared), "--out", str(tmp_path / "art"), "--version", "e2e", "--epochs", "1",
            "--dim", "8", "--relation-dim", "4", "--batch-size", "64", "--metric-epochs", "3",
            "--metric-pairs", "600", "--threads", "1", "--no-plots"]  # fmt: skip
    assert run_command(fit_cmd, argv) == 0
    art = Artifact.latest(tmp_path / "art")
    m = art.manifest
    assert art.path.name == "e2e" and m.dataset == "tiny" and m.metric_view == "category"
    from trainer.data.prepared import PreparedData

    assert m.prepared_fingerprint == PreparedData(prepared).fingerprint()
    assert [(v.name, v.n_nodes, v.dim) for v in m.views] == [("item", 40, 8), ("category", 5, 8)]
    assert m.tasks == ["item", "category", "item-category"] and set(m.sigma2) == set(m.tasks)
    assert art.z.shape == (40, 12) and np.isfinite(art.z).all()
    np.testing.assert_array_equal(art.item_attr("category"), np.arange(40) % 5)
    metric_rows = (art.path / "metric_curve.csv").read_text().splitlines()
    assert metric_rows[0].startswith("epoch,step,loss") and len(metric_rows) == 1 + 4
    assert len((art.path / "curves.csv").read_text().splitlines()) >= 2


def test_artifact_without_attribute_views_has_no_metric(tmp_path: Path) -> None:
    full = fake_model(n_items=20)
    model = TrainedModel(
        config=full.config,
        views=["item"],
        node_ids={"item": full.node_ids["item"]},
        embeddings={"item": full.embeddings["item"]},
        context_embeddings={},
        item_to_attr={},
        W={},
        sigma2={"item": 1.0},
        curves=full.curves,
    )
    art = Artifact.open(write(model, tmp_path))
    assert art.manifest.metric_view is None and art.manifest.tasks == ["item"]
    assert not any(f.startswith("metric") for f in art.manifest.files)
    with pytest.raises(ArtifactError, match="no diversity metric"):
        _ = art.z
    assert (art.path / "embeddings.png").read_bytes()[:8] == PNG_SIGNATURE


def test_fit_rejects_views_before_training(tmp_path: Path) -> None:
    prepared = tiny_prepared(tmp_path)
    base = ["--data", str(prepared), "--out", str(tmp_path / "art")]
    with pytest.raises(ValueError, match=r"--views: \['shop'\] not in the prepared data"):
        run_command(fit_cmd, [*base, "--views", "item,shop"])
    with pytest.raises(ValueError, match="--metric-view decade: not among the views trained"):
        run_command(fit_cmd, [*base, "--metric-view", "decade"])
    assert not (tmp_path / "art").exists()

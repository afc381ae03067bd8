"""Index builder: recall self-check, exact inner-product order, atomic publication, retention, reader, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from index_builder import build as build_module
from index_builder import cli, publish
from index_builder.build import ArtifactError, BuildOptions, build_from_artifact
from index_builder.manifest import sha256_file
from index_builder.reader import IndexVersion, IndexVersionError, list_versions, open_current, read_current
from index_builder.recall import RecallNotReached, RecallProbe, drop_self, exact_topk
from index_builder.strategies import get_strategy

REPO = Path(__file__).resolve().parents[1]
# One thread: hnswlib's parallel insertion order is not deterministic, and the machine is shared.
FAST = {"threads": 1, "recall_queries": 300}


# --- a small stand-in for trainer.artifact.loader.Artifact -----------------------------------------------------


@dataclass
class FakeManifest:
    version: str
    views: list[str]
    files: dict[str, str] = field(default_factory=dict)
    metric_view: str | None = "category"

    def model_dump_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


@dataclass
class FakeArtifact:
    """The reading API of a trainer artifact over in-memory arrays."""

    manifest: FakeManifest
    emb: dict[str, np.ndarray]
    node_ids: dict[str, list[str]]
    attr: dict[str, np.ndarray]
    W: dict[str, np.ndarray]
    L_i: np.ndarray | None = None
    L_ic: np.ndarray | None = None

    def embeddings(self, view: str) -> np.ndarray:
        return self.emb[view]

    def ids(self, view: str) -> list[str]:
        return self.node_ids[view]

    def item_attr(self, view: str) -> np.ndarray:
        return self.attr[view]

    def relational(self, view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        W = self.W[view]
        return W, _sigmoid(self.emb["item"] @ W.T), _sigmoid(self.emb[view] @ W.T)

    @property
    def M_i(self) -> np.ndarray | None:
        return None if self.L_i is None else self.L_i.T @ self.L_i

    @property
    def M_ic(self) -> np.ndarray | None:
        return None if self.L_ic is None else self.L_ic.T @ self.L_ic

    @property
    def z(self) -> np.ndarray | None:
        if self.L_i is None:
            return None
        _, e_ic, _ = self.relational(self.manifest.metric_view)
        return np.hstack([self.emb["item"] @ self.L_i.T, e_ic @ self.L_ic.T]).astype(np.float32)


def make_artifact(
    n: int = 2000,
    dim: int = 16,
    rd: int = 8,
    n_cat: int = 20,
    n_shop: int = 40,
    seed: int = 0,
    metric: bool = True,
) -> FakeArtifact:
    """Clustered item embeddings (one Gaussian per category, norms varying x3) like trained ones."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_cat, dim)).astype(np.float32) * 2.0
    cat = rng.integers(0, n_cat, n).astype(np.int32)
    shop = rng.integers(0, n_shop, n).astype(np.int32)
    shop[rng.random(n) < 0.1] = -1  # items without a shop
    items = (centers[cat] + rng.normal(size=(n, dim)).astype(np.float32)) * rng.lognormal(
        0, 0.3, (n, 1)
    ).astype(np.float32)
    emb = {
        "item": items.astype(np.float32),
        "category": (centers + 0.1 * rng.normal(size=centers.shape)).astype(np.float32),
        "shop": rng.normal(size=(n_shop, dim)).astype(np.float32),
    }
    ids = {
        "item": [f"i{j:05d}" for j in range(n)],
        "category": [f"c{j}" for j in range(n_cat)],
        "shop": [f"s{j}" for j in range(n_shop)],
    }
    W = {v: (rng.normal(size=(rd, dim)) / np.sqrt(dim)).astype(np.float32) for v in ("category", "shop")}
    manifest = FakeManifest(
        version=f"art-{seed}", views=["item", "category", "shop"], files={"x.npy": "00"}, metric_view=None
    )
    art = FakeArtifact(manifest, emb, ids, {"category": cat, "shop": shop}, W)
    if metric:
        manifest.metric_view = "category"
        art.L_i = (rng.normal(size=(dim, dim)) / np.sqrt(dim)).astype(np.float64)
        art.L_ic = (rng.normal(size=(rd, rd)) / np.sqrt(rd)).astype(np.float64)
    return art


def tmp_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(publish.TMP_PREFIX))


@pytest.fixture(scope="module")
def artifact() -> FakeArtifact:
    return make_artifact()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, artifact: FakeArtifact):
    root = tmp_path_factory.mktemp("index")
    result = build_from_artifact(artifact, root, BuildOptions(**FAST), progress=False)
    return root, result


# --- recall self-check ----------------------------------------------------------------------------------------


def test_recall_check_passes_on_clustered_embeddings(built, artifact: FakeArtifact) -> None:
    root, result = built
    m = result.manifest
    assert set(m.strategies) == {"general", "diversity"}
    for name, entry in m.strategies.items():
        assert entry.recall_at_k >= 0.98 and entry.recall_k == 50 and entry.recall_queries == 300
        assert entry.ef_search == entry.recall_curve[-1].ef
        assert all(p.recall < 0.98 for p in entry.recall_curve[:-1]), (
            name
        )  # stopped at the first ef reaching it
        # The chosen encoding is the measured one with the smallest ef.
        assert entry.ef_search == min(t.ef for t in entry.trials if t.ef is not None)
    assert m.strategies["general"].dim == 16 and m.strategies["diversity"].dim == 16 + 8
    # The stored recall is reproducible from the published files.
    version = IndexVersion.open(result.path)
    for name in version.strategies:
        h = version.handle(name)
        probe = RecallProbe.make(h.strategy, h.raw, 50, 300, 0)
        assert probe.recall(probe.search(h.index, h.encoding, h.params)) == pytest.approx(h.entry.recall_at_k)


def test_exact_topk_excludes_self_and_drop_self_is_consistent() -> None:
    # Four points on a line: neighbours of row 1 by -|x - y|^2 are 0 and 2 (tied), then 3.
    raw = np.array([[0.0], [1.0], [2.0], [4.0]], dtype=np.float32)
    strategy = get_strategy("diversity")
    top = exact_topk(strategy, raw, np.array([1, 3]), 2)
    assert sorted(top[0].tolist()) == [0, 2] and top[1].tolist() == [2, 1]
    labels = np.array([[1, 0, 2], [2, 1, 0]])  # first row holds itself, second does not: drop the last
    assert drop_self(labels, np.array([1, 3])).tolist() == [[0, 2], [2, 1]]


def test_recall_is_tie_aware() -> None:
    # Items 1 and 2 are identical: either one is a correct nearest neighbour of item 0.
    raw = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]], dtype=np.float32)
    probe = RecallProbe(get_strategy("diversity"), raw, np.array([0]), np.array([[1]]), 1)
    assert probe.recall(np.array([[2]])) == 1.0
    assert probe.recall(np.array([[3]])) == 0.0


def test_unreachable_target_is_refused_and_nothing_published(tmp_path: Path, artifact: FakeArtifact) -> None:
    root = tmp_path / "idx"
    first = build_from_artifact(
        artifact, root, BuildOptions(strategies=["diversity"], **FAST), progress=False
    )
    before = {
        p.relative_to(root): sha256_file(p) for p in root.rglob("*") if p.is_file() and p.name != ".lock"
    }
    # Random 32-d vectors, a graph of degree 2 and a beam of 51: far from recall 0.999.
    hard = make_artifact(n=3000, dim=32, n_cat=1, seed=1, metric=False)
    hard.emb["item"] = np.random.default_rng(1).normal(size=(3000, 32)).astype(np.float32)
    options = BuildOptions(
        strategies=["general"], M=2, ef_construction=4, ef_schedule=[1], recall_target=0.999, **FAST
    )
    with pytest.raises(RecallNotReached, match=r"best recall 0\.\d+") as exc:
        build_from_artifact(hard, root, options, progress=False)
    assert "nothing published" in str(exc.value)
    assert list_versions(root) == [first.version] and read_current(root) == first.version
    assert tmp_entries(root) == []
    after = {
        p.relative_to(root): sha256_file(p) for p in root.rglob("*") if p.is_file() and p.name != ".lock"
    }
    assert after == before


# --- the general strategy is exact inner-product search -------------------------------------------------------


@pytest.mark.parametrize("encoding", ["ip", "mips-l2"])
def test_general_returns_exact_inner_product_top_list(tmp_path: Path, encoding: str) -> None:
    rng = np.random.default_rng(7)
    n, dim = 400, 8
    art = make_artifact(n=n, dim=dim, seed=7, metric=False)
    directions = rng.normal(size=(n, dim))
    norms = np.exp(rng.uniform(np.log(0.1), np.log(10.0), n))  # norms spread over two decades
    art.emb["item"] = (
        directions / np.linalg.norm(directions, axis=1, keepdims=True) * norms[:, None]
    ).astype(np.float32)
    # A beam as large as the index makes the graph search exhaustive, so any difference from numpy would be
    # the encoding's fault (order or score conversion), not the approximation's.
    options = BuildOptions(
        strategies=["general"], encodings={"general": encoding}, ef_schedule=[n], recall_target=1.0, **FAST
    )
    result = build_from_artifact(art, tmp_path / "idx", options, progress=False)
    assert result.manifest.strategies["general"].encoding == encoding
    version = IndexVersion.open(result.path)
    X = art.emb["item"]
    queries = rng.normal(size=(30, dim)).astype(np.float32) * 3.0
    rows, scores = version.search("general", queries, 10)
    exact = queries @ X.T
    expected = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, expected, axis=1), rtol=1e-4, atol=1e-3)
    # By item row: the item itself left out, the rest in exact inner-product order.
    rows, _ = version.search("general", np.arange(20), 10)
    exact_items = X[:20] @ X.T
    exact_items[np.arange(20), np.arange(20)] = -np.inf
    np.testing.assert_array_equal(rows, np.argsort(-exact_items, axis=1, kind="stable")[:, :10])


# --- atomic publication and retention -------------------------------------------------------------------------


def _small_build(artifact: FakeArtifact, root: Path, keep: int = 3):
    return build_from_artifact(
        artifact, root, BuildOptions(strategies=["diversity"], keep=keep, **FAST), progress=False
    )


def test_build_killed_before_rename_leaves_everything_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifact: FakeArtifact
) -> None:
    root = tmp_path / "idx"
    first = _small_build(artifact, root)

    def killed(staging: Path, final: Path) -> None:
        assert (staging / "manifest.json").is_file()  # fully written, just not renamed yet
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(publish, "_commit_dir", killed)
    with pytest.raises(KeyboardInterrupt):
        _small_build(artifact, root)
    assert list_versions(root) == [first.version]
    assert read_current(root) == first.version
    assert tmp_entries(root) == []
    IndexVersion.open(root / first.version)  # checksums of the old version still hold

    # A build killed by SIGKILL cannot clean up: its staging directory stays, hidden from readers.
    monkeypatch.undo()
    leftover = publish.begin(root)
    (leftover.path / "manifest.json").write_text("{}")
    assert list_versions(root) == [first.version] and read_current(root) == first.version
    second = _small_build(artifact, root)
    assert second.version > leftover.version > first.version  # the reserved name is never reused
    assert leftover.path.exists()  # fresh: it might be a build in progress
    old = time.time() - publish.STALE_TMP_SECONDS - 60
    os.utime(leftover.path, (old, old))
    _small_build(artifact, root)
    assert not leftover.path.exists()


def test_retention_keeps_newest_and_never_current(tmp_path: Path, artifact: FakeArtifact) -> None:
    root = tmp_path / "idx"
    v1, v2, v3 = (_small_build(artifact, root, keep=2).version for _ in range(3))
    assert v1 < v2 < v3
    assert list_versions(root) == [v2, v3] and read_current(root) == v3
    v4 = _small_build(artifact, root, keep=3).version
    # Roll back to the oldest version, then keep 1: the newest and CURRENT's (older) survive.
    publish.write_current(root, v2)
    assert publish.apply_retention(root, keep=1) == [v3]
    assert list_versions(root) == [v2, v4] and read_current(root) == v2
    IndexVersion.open(root / v2)
    v5 = _small_build(artifact, root, keep=1).version  # CURRENT moves to v5; v2 and v4 go
    assert list_versions(root) == [v5] and read_current(root) == v5 and tmp_entries(root) == []


def test_next_version_is_unique_and_increasing(tmp_path: Path) -> None:
    (tmp_path / "20300101T000000.000005Z").mkdir()
    from datetime import UTC, datetime

    earlier = datetime(2029, 1, 1, tzinfo=UTC)
    assert publish.next_version(tmp_path, earlier) == "20300101T000000.000006Z"  # clock behind: bumped
    assert publish.VERSION_RE.match(publish.next_version(tmp_path))


# --- reader ---------------------------------------------------------------------------------------------------


def test_reader_round_trip(built, artifact: FakeArtifact) -> None:
    root, result = built
    version = open_current(root)
    assert version.version == result.version == read_current(root)
    m = version.manifest
    assert m.source_artifact.version == "art-0"
    assert (
        m.source_artifact.sha256 == hashlib.sha256(artifact.manifest.model_dump_json().encode()).hexdigest()
    )
    assert version.ids == artifact.ids("item") and version.row_of("i00123") == 123
    with pytest.raises(KeyError, match="nope"):
        version.row_of("nope")
    shop = artifact.item_attr("shop")
    no_shop = int(np.flatnonzero(shop < 0)[0])
    assert version.metadata(no_shop)["shop"] is None
    row = int(np.flatnonzero(shop >= 0)[0])
    assert version.metadata(row) == {
        "item_id": f"i{row:05d}",
        "category": f"c{artifact.item_attr('category')[row]}",
        "shop": f"s{shop[row]}",
    }
    np.testing.assert_array_equal(version.vectors, artifact.emb["item"])
    np.testing.assert_array_equal(version.array("z"), artifact.z)
    np.testing.assert_array_equal(version.array("M_i"), artifact.M_i)
    assert version.array("M_ic").dtype == np.float64
    np.testing.assert_array_equal(version.array("nodes/shop"), artifact.emb["shop"])
    np.testing.assert_array_equal(version.array("item_attr/category"), artifact.item_attr("category"))
    np.testing.assert_allclose(version.array("relational_item/category"), artifact.relational("category")[1])
    assert version.node_ids("category") == artifact.ids("category")
    assert m.metric_view == "category" and m.attribute_views == ["category", "shop"]

    # Diversity: scores are -|z_q - z_r|^2, the query item itself left out.
    z = artifact.z
    rows, scores = version.search("diversity", np.array([3, 9]), 5)
    assert rows.shape == (2, 5) and 3 not in rows[0] and 9 not in rows[1]
    np.testing.assert_allclose(scores, -((z[rows] - z[[3, 9]][:, None]) ** 2).sum(-1), rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    rows, scores = version.search("diversity", 3, 1, exclude_self=False)
    assert rows.tolist() == [[3]] and scores[0, 0] == 0.0
    # A batch answers like single queries.
    batch_rows, _ = version.search("general", np.arange(40), 20)
    for r in (0, 17, 39):
        np.testing.assert_array_equal(version.search("general", r, 20)[0][0], batch_rows[r])
    # k larger than the index is capped.
    assert version.search("general", 0, 10_000)[0].shape == (1, version.n_items - 1)


def test_reader_rejects_bad_queries(built) -> None:
    version = open_current(built[0])
    with pytest.raises(ValueError, match="not in index version"):
        version.search("trending", 0, 5)
    with pytest.raises(ValueError, match="16 columns"):
        version.search("general", np.zeros((2, 15), dtype=np.float32), 5)
    with pytest.raises(ValueError, match="rows must lie in"):
        version.search("general", [version.n_items], 5)
    with pytest.raises(ValueError, match="k must be"):
        version.search("general", 0, 0)


def test_reader_concurrent_searches_match_sequential(built) -> None:
    version = open_current(built[0])
    expected = {r: version.search("general", r, 20) for r in range(64)}
    errors: list[str] = []

    def worker(offset: int) -> None:
        for i in range(64):
            r = (i + offset) % 64
            rows, scores = version.search("general", r, 20)
            if not (np.array_equal(rows, expected[r][0]) and np.array_equal(scores, expected[r][1])):
                errors.append(f"row {r}")

    threads = [threading.Thread(target=worker, args=(k * 16,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_reader_falls_back_to_exact_search_when_hnswlib_gives_up(built, artifact: FakeArtifact) -> None:
    version = IndexVersion.open(built[1].path, verify=False)

    class GivesUp:
        def knn_query(self, *args, **kwargs):
            raise RuntimeError(
                "Cannot return the results in a contiguous 2D array. Probably ef or M is too small"
            )

    version._handles["diversity"] = replace(version.handle("diversity"), index=GivesUp())
    rows, scores = version.search("diversity", np.array([4, 5]), 7)
    z = artifact.z
    d = ((z[[4, 5]][:, None] - z[None]) ** 2).sum(-1)
    d[[0, 1], [4, 5]] = np.inf
    np.testing.assert_array_equal(rows, np.argsort(d, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(scores, -np.sort(d, axis=1)[:, :7], rtol=1e-4, atol=1e-5)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("rel", ["arrays/z.npy", "index/general.hnsw", "items.json"])
def test_verify_detects_a_flipped_byte(tmp_path: Path, artifact: FakeArtifact, rel: str, capsys) -> None:
    root = tmp_path / "idx"
    result = build_from_artifact(artifact, root, BuildOptions(**FAST), progress=False)
    assert cli.main(["verify", str(root)]) == 0
    table = capsys.readouterr().out
    assert "sha256 ok" in table and "general" in table and "diversity" in table and "BELOW" not in table
    _flip_last_byte(result.path / rel)
    with pytest.raises(IndexVersionError, match="sha256 mismatch") as exc:
        IndexVersion.open(result.path)
    assert exc.value.path == result.path / rel
    assert cli.main(["verify", str(result.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and rel in err


def test_reader_rejects_a_directory_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(IndexVersionError, match="manifest.json: missing"):
        IndexVersion.open(tmp_path)
    with pytest.raises(IndexVersionError, match="nothing has been published"):
        open_current(tmp_path)


# --- artifact validation --------------------------------------------------------------------------------------


def test_bad_artifacts_are_named(tmp_path: Path) -> None:
    art = make_artifact(n=200, metric=False)
    art.attr["shop"] = art.attr["shop"].copy()
    art.attr["shop"][5] = 999
    with pytest.raises(ArtifactError, match=r"item_attr\('shop'\): item row 5 points at node 999"):
        build_from_artifact(art, tmp_path / "idx", BuildOptions(**FAST), progress=False)
    art = make_artifact(n=200, metric=False)
    art.emb["item"] = art.emb["item"].copy()
    art.emb["item"][17, 2] = np.nan
    with pytest.raises(ArtifactError, match="non-finite value in row 17"):
        build_from_artifact(art, tmp_path / "idx", BuildOptions(**FAST), progress=False)
    assert not (tmp_path / "idx").exists()


def test_without_metric_model_only_general_is_built(tmp_path: Path) -> None:
    art = make_artifact(n=300, metric=False)
    result = build_from_artifact(art, tmp_path / "idx", BuildOptions(**FAST), progress=False)
    assert list(result.manifest.strategies) == ["general"] and "z" not in result.manifest.arrays
    with pytest.raises(ValueError, match="no diversity vectors"):
        build_from_artifact(
            art, tmp_path / "idx", BuildOptions(strategies=["diversity"], **FAST), progress=False
        )


# --- CLI ------------------------------------------------------------------------------------------------------


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_build_list_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    art = make_artifact(n=300)
    art_dir = tmp_path / "art"
    art_dir.mkdir()
    monkeypatch.setattr(cli, "_open_artifact", lambda path, verify: art)
    root = tmp_path / "idx"
    rc, out, _ = _cli(
        ["--quiet", "build", "--artifact", str(art_dir), "--out", str(root), "--threads", "1"], capsys
    )
    assert rc == 0 and "published" in out
    version = read_current(root)
    rc, out, _ = _cli(["list", str(root)], capsys)
    assert rc == 0 and f"* {version}" in out and "general" in out

    bad = [
        (
            ["build", "--artifact", str(art_dir), "--out", str(root), "--recall-target", "1.01"],
            "--recall-target",
        ),
        (
            ["build", "--artifact", str(art_dir), "--out", str(root), "--strategies", "trending"],
            "unknown strategy",
        ),
        (
            ["build", "--artifact", str(art_dir), "--out", str(root), "--encoding", "general"],
            "STRATEGY=ENCODING",
        ),
        (
            ["build", "--artifact", str(art_dir), "--out", str(root), "--encoding", "general=hnsw"],
            "no encoding",
        ),
        (["build", "--artifact", str(art_dir), "--out", str(root), "--keep", "0"], "--keep"),
        (["verify", str(tmp_path / "missing")], "does not exist"),
        (["verify", str(art_dir)], "neither an index version"),
        (["list", str(tmp_path / "missing")], "does not exist"),
    ]
    for args, needle in bad:
        rc, _, err = _cli(args, capsys)
        assert rc == 2, args
        assert len(err.strip().splitlines()) == 1 and needle in err, (args, err)
    # A real artifact path that does not exist (the loader is not consulted).
    monkeypatch.undo()
    rc, _, err = _cli(["build", "--artifact", str(tmp_path / "nope"), "--out", str(root)], capsys)
    assert rc == 2 and "nope" in err and len(err.strip().splitlines()) == 1
    # Unreachable recall: exit 1, nothing new published. Random 40-d vectors, graph degree 2, beam 51.
    monkeypatch.setattr(build_module, "DEFAULT_EF_SCHEDULE", (50,))
    hard = make_artifact(n=3000, dim=32, seed=3)
    hard.emb["item"] = np.random.default_rng(3).normal(size=(3000, 32)).astype(np.float32)
    monkeypatch.setattr(cli, "_open_artifact", lambda path, verify: hard)
    args = ["--quiet", "build", "--artifact", str(art_dir), "--out", str(root), "--M", "2"]
    args += [
        "--ef-construction",
        "4",
        "--recall-target",
        "0.999",
        "--strategies",
        "diversity",
        "--threads",
        "1",
    ]
    rc, _, err = _cli(args, capsys)
    assert rc == 1 and "not reached" in err and "best recall" in err
    assert list_versions(root) == [version] and read_current(root) == version


# --- the serving side stays small -----------------------------------------------------------------------------


def test_index_builder_imports_neither_torch_nor_polars() -> None:
    code = (
        "import sys, index_builder.cli, index_builder.build, index_builder.reader, index_builder.publish\n"
        "bad = [m for m in ('torch', 'polars') if m in sys.modules]\n"
        "sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --- integration with the trainer's artifact writer and loader ------------------------------------------------


def test_build_from_a_real_artifact(tmp_path: Path) -> None:
    writer = pytest.importorskip("trainer.artifact.writer")
    from trainer.artifact.loader import Artifact
    from trainer.model.config import TrainConfig
    from trainer.model.result import TrainedModel

    fake = make_artifact(n=500, dim=16, rd=8)
    model = TrainedModel(
        config=TrainConfig(dim=16, relation_dim=8),
        views=["item", "category", "shop"],
        node_ids={v: np.asarray(fake.node_ids[v], dtype=object) for v in ("item", "category", "shop")},
        embeddings=fake.emb,
        context_embeddings={v: np.zeros_like(e) for v, e in fake.emb.items()},
        item_to_attr=fake.attr,
        W=fake.W,
        sigma2={"item": 1.0},
        L_i=fake.L_i,
        L_ic=fake.L_ic,
    )
    path = writer.write_artifact(
        model, tmp_path / "art", dataset="fake", prepared_fingerprint="0" * 16, draw_plots=False
    )
    artifact = Artifact.open(path)
    result = build_from_artifact(artifact, tmp_path / "idx", BuildOptions(**FAST), progress=False)
    m = result.manifest
    assert m.source_artifact.version == artifact.manifest.version
    assert m.source_artifact.sha256 == sha256_file(Path(path) / "manifest.json")
    assert set(m.strategies) == {"general", "diversity"} and m.metric_view == "category"
    version = IndexVersion.open(result.path)
    np.testing.assert_allclose(version.array("z"), artifact.z)
    assert version.metadata(3)["category"] == artifact.ids("category")[artifact.item_attr("category")[3]]

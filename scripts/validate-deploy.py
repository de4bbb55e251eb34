"""What scripts/validate-deploy.sh checks beyond schemas and linters.

The Kubernetes schemas, hadolint and `systemd-analyze verify` each see one
file in its own terms. This checks what ties deploy/ to the origin and its
files to each other:

- every flag and every PREFOLD_* variable in the Containerfile, the
  manifests, the systemd unit and its example environment file is one that
  `prefold-origin --help` lists (and every AWS_* one is read by the S3
  client), so a renamed or misspelt setting fails here, not in production;
- the .dockerignore lets in everything the image's cargo build reads and
  keeps out build output, node_modules, data and the development secrets;
- the StatefulSet's PREFOLD_ORIGINS names exactly its pods (replicas and the
  list agree), PREFOLD_NAME is the pod's name, the Service, the selectors,
  ports, probes and volume fit together, and the grace period covers the
  preStop sleep plus the origin's drain (so does the unit's TimeoutStopSec);
- the origin started as each deployment starts it (the Containerfile's
  entrypoint and the StatefulSet's environment as pod 0; the unit's
  environment file) answers the probes' paths, and drains and exits 0 on
  SIGTERM.

Run with the project's .venv python (it needs PyYAML):
    .venv/bin/python scripts/validate-deploy.py BIN
"""

import json
import os
import re
import secrets
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "deploy/container/Containerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KUBERNETES = ROOT / "deploy/kubernetes"
UNIT = ROOT / "deploy/systemd/prefold-origin.service"
UNIT_ENV = ROOT / "deploy/systemd/origin.env.example"

# The origin's shutdown (origin/src/server.rs, Server::run and
# drain_in_order) runs six steps one after another, each bounded by the
# shutdown timeout; four of them stop a group of workers, which get a
# further half second (base::background GRACE) before they are aborted.
DRAIN_STEPS = 6
DRAIN_GRACE_STEPS = 4
DRAIN_GRACE_SECS = 0.5

# Read by main.rs for the log filter, not a flag, so --help does not list it.
EXTRA_PREFOLD_VARS = {"PREFOLD_LOG"}

# The AWS_* variables object_store 0.14's AmazonS3Builder::from_env reads
# (src/aws/builder.rs); any other AWS_* name is silently ignored by it.
AWS_VARS = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_BUCKET", "AWS_BUCKET_NAME", "AWS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN",
    "AWS_TOKEN", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "AWS_METADATA_ENDPOINT",
    "AWS_UNSIGNED_PAYLOAD", "AWS_CHECKSUM_ALGORITHM", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS", "AWS_SKIP_SIGNATURE", "AWS_COPY_IF_NOT_EXISTS",
    "AWS_CONDITIONAL_PUT", "AWS_DISABLE_TAGGING", "AWS_DISABLE_BULK_DELETE",
    "AWS_REQUEST_PAYER", "AWS_ALLOW_HTTP",
}

# What the image's build context must never carry, as sample paths.
MUST_EXCLUDE = [
    ".dev.vars", "data/store/x", "target/release/prefold-origin", "node_modules/x/package.json",
    ".git/HEAD", ".venv/bin/python", "edge/build/index.js", ".wrangler/x",
]

errors: list[str] = []


def fail(where: str, message: str) -> None:
    errors.append(f"{where}: {message}")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


class Help:
    """What `prefold-origin --help` offers."""

    def __init__(self, binary: str):
        text = subprocess.run([binary, "--help"], check=True, capture_output=True, text=True).stdout
        self.flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", text, re.M))
        self.vars = set(re.findall(r"\[env: ([A-Z0-9_]+)", text)) | EXTRA_PREFOLD_VARS
        timeout = re.search(r"--shutdown-timeout-secs .*?\[default: (\d+)\]", text, re.S)
        if not timeout:
            raise SystemExit("validate-deploy: --help shows no default for --shutdown-timeout-secs")
        self.shutdown_timeout = int(timeout.group(1))

    def check_args(self, where: str, argv: list[str]) -> None:
        for arg in argv:
            flag = arg.split("=", 1)[0]
            if flag.startswith("--") and flag not in self.flags:
                fail(where, f"`{flag}` is not a prefold-origin flag (see prefold-origin --help)")

    def check_var(self, where: str, name: str) -> None:
        if name.startswith("PREFOLD_"):
            if name not in self.vars:
                fail(where, f"{name} is not a variable prefold-origin reads (see prefold-origin --help)")
        elif name.startswith("AWS_"):
            if name not in AWS_VARS:
                fail(where, f"{name} is not an AWS_* variable the S3 client reads")
        else:
            fail(where, f"{name} is read neither by prefold-origin nor by its S3 client")


def drain_bound(timeout: float) -> float:
    """The longest the origin's drain can take with this shutdown timeout."""
    return DRAIN_STEPS * timeout + DRAIN_GRACE_STEPS * DRAIN_GRACE_SECS


# ---------------------------------------------------------------- container


def containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, rest.strip()))
    return stages[-1]


def check_container(help_: Help) -> list[str]:
    """Checks the Containerfile; returns its entrypoint."""
    where = rel(CONTAINERFILE)
    final = containerfile_instructions()
    last = {word: rest for word, rest in final}
    try:
        entrypoint = json.loads(last.get("ENTRYPOINT", ""))
    except json.JSONDecodeError:
        fail(where, "ENTRYPOINT must be in exec (JSON array) form, so SIGTERM reaches the origin")
        return []
    if not entrypoint or Path(entrypoint[0]).name != "prefold-origin":
        fail(where, f"ENTRYPOINT does not start prefold-origin: {entrypoint}")
    help_.check_args(where, entrypoint[1:])
    for word, rest in final:
        if word == "ENV":
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest):
                help_.check_var(where, name)
        if word == "CMD":
            help_.check_args(where, json.loads(rest))
    listen = option(entrypoint, "--listen")
    exposed = last.get("EXPOSE", "").split("/")[0]
    if listen is None or not listen.startswith("0.0.0.0:") or listen.rsplit(":", 1)[1] != exposed:
        fail(where, f"the entrypoint listens on {listen}, but EXPOSE is {exposed or 'missing'}")
    data = option(entrypoint, "--data")
    volumes = json.loads(last["VOLUME"]) if last.get("VOLUME", "").startswith("[") else last.get("VOLUME", "").split()
    if data is None or data not in volumes:
        fail(where, f"--data {data} is not a VOLUME ({volumes})")
    user = last.get("USER", "root").split(":")[0]
    if user in ("", "0", "root"):
        fail(where, "the image runs as root: the final stage needs a USER")
    if last.get("STOPSIGNAL", "SIGTERM") != "SIGTERM":
        fail(where, "the origin drains on SIGTERM; STOPSIGNAL must be SIGTERM")
    return entrypoint


def option(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """The .dockerignore as (exclude?, regex), in file order (the last match wins)."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        # A pattern that names a directory covers everything under it.
        rules.append((exclude, re.compile(regex + "(?:/.*)?")))
    return rules


def ignored(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    result = False
    for exclude, regex in rules:
        if regex.fullmatch(path):
            result = exclude
    return result


def check_dockerignore() -> None:
    where = rel(DOCKERIGNORE)
    rules = ignore_rules()
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()
    needed = ["Cargo.toml", "Cargo.lock"] + [
        path for path in tracked
        if any(path.startswith(m + "/") for m in members)
        and (path.endswith((".rs", "Cargo.toml")) or "/src/" in path)
    ]
    for path in needed:
        if ignored(rules, path):
            fail(where, f"excludes {path}, which the image's cargo build reads")
    for path in MUST_EXCLUDE:
        if not ignored(rules, path):
            fail(where, f"lets {path} into the build context")


# --------------------------------------------------------------- kubernetes


def load_manifests() -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = rel(path)
                kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def one(kinds: dict[str, list[dict]], kind: str) -> dict | None:
    docs = kinds.get(kind, [])
    if len(docs) != 1:
        fail(rel(KUBERNETES), f"expected one {kind}, found {len(docs)}")
        return None
    return docs[0]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kubernetes(help_: Help) -> dict | None:
    """Checks the manifests; returns what the smoke run of pod 0 needs."""
    kinds = load_manifests()
    sts, svc, pdb = one(kinds, "StatefulSet"), one(kinds, "Service"), one(kinds, "PodDisruptionBudget")
    if not sts:
        return None
    where = sts["__file__"]
    spec = sts["spec"]
    name = sts["metadata"]["name"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    if not selects(spec["selector"].get("matchLabels", {}), labels):
        fail(where, "the selector does not match the pod template's labels")
    if len(pod["containers"]) != 1:
        fail(where, "expected one container (the origin)")
    container = pod["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}

    if svc:
        if svc["metadata"]["name"] != spec.get("serviceName"):
            fail(where, f"serviceName {spec.get('serviceName')} is not the Service {svc['metadata']['name']}")
        if svc["spec"].get("clusterIP") != "None":
            fail(svc["__file__"], "the Service must be headless (clusterIP: None): each key has one owner")
        if not selects(svc["spec"].get("selector", {}), labels):
            fail(svc["__file__"], "the Service's selector does not match the StatefulSet's pods")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            if target not in ports and target not in ports.values():
                fail(svc["__file__"], f"targetPort {target} is not a port of the origin container")
    if pdb and not selects(pdb["spec"].get("selector", {}).get("matchLabels", {}), labels):
        fail(pdb["__file__"], "the PodDisruptionBudget's selector does not match the StatefulSet's pods")

    help_.check_args(where, container.get("args", []) + container.get("command", [])[1:])
    env = {}
    for var in container.get("env", []):
        help_.check_var(where, var["name"])
        env[var["name"]] = var
    for source in container.get("envFrom", []):
        fail(where, f"envFrom {source} hides which variables the origin gets; list them in env")

    field = env.get("PREFOLD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if field != "metadata.name":
        fail(where, "PREFOLD_NAME must come from the pod's name (fieldRef metadata.name)")
    replicas = spec.get("replicas", 1)
    port = ports.get("http", next(iter(ports.values()), None))
    expected = [f"{name}-{i}" for i in range(replicas)]
    origins = [entry.split("=", 1) for entry in env.get("PREFOLD_ORIGINS", {}).get("value", "").split(",") if entry]
    names = [o[0] for o in origins]
    if names != expected:
        fail(where, f"replicas is {replicas} but PREFOLD_ORIGINS names {', '.join(names) or 'nothing'}; "
                    f"they must agree: {', '.join(expected)}")
    for origin, url in (o for o in origins if len(o) == 2):
        if not re.fullmatch(rf"http://{re.escape(origin)}\.{re.escape(spec.get('serviceName', ''))}"
                            rf"(\.[a-z0-9.-]+)?:{port}", url):
            fail(where, f"{origin}'s URL {url} is not http://{origin}.{spec.get('serviceName')}:{port}")

    probes = {}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet")
        if not get:
            fail(where, f"no {probe} with httpGet")
            continue
        if get.get("path") != path:
            fail(where, f"{probe} asks {get.get('path')}, the origin answers it at {path}")
        if get.get("port") not in ports and get.get("port") not in ports.values():
            fail(where, f"{probe} port {get.get('port')} is not a port of the container")
        probes[probe] = get.get("path")

    timeout = int(env.get("PREFOLD_SHUTDOWN_TIMEOUT_SECS", {}).get("value", help_.shutdown_timeout))
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    sleep = pre_stop.get("sleep", {}).get("seconds", 0)
    if not pre_stop:
        fail(where, "no preStop hook: the pod would get SIGTERM while traffic is still routed to it")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < sleep + drain_bound(timeout):
        fail(where, f"terminationGracePeriodSeconds {grace} < preStop {sleep} s + the drain's "
                    f"{drain_bound(timeout):g} s (shutdown timeout {timeout} s)")

    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    if mounts.get("/data") not in claims:
        fail(where, "/data (the image's --data) is not mounted from a volumeClaimTemplate")
    return {"env": env, "args": container.get("args", []), "name": f"{name}-0", "probes": probes}


# ------------------------------------------------------------------ systemd


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) of the unit, in order (keys may repeat)."""
    entries, section = [], ""
    for line in re.sub(r"\\\n", " ", UNIT.read_text()).splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def env_file(path: Path, include_commented: bool) -> dict[str, str]:
    """The assignments of an environment file (with the commented-out
    examples too, when asked: `#NAME=value`, there to be uncommented)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if include_commented and re.match(r"#[A-Z]", line):
            line = line[1:]
        if m := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            values[m.group(1)] = m.group(2)
    return values


def seconds(value: str) -> float:
    total, rest = 0.0, value.replace(" ", "")
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(min|ms|s|m|h)?", rest):
        total += float(number) * {"": 1, "s": 1, "ms": 0.001, "min": 60, "m": 60, "h": 3600}[unit]
    return total


def check_systemd(help_: Help) -> dict:
    where = rel(UNIT)
    entries = unit_entries()
    service = {}
    for section, key, value in entries:
        if section == "Service":
            service.setdefault(key, []).append(value)
    exec_start = shlex.split(service.get("ExecStart", [""])[-1])
    if not exec_start or Path(exec_start[0]).name != "prefold-origin":
        fail(where, "ExecStart does not start prefold-origin")
    help_.check_args(where, exec_start[1:])
    environment = {}
    for value in service.get("Environment", []):
        for assignment in shlex.split(value):
            key, _, val = assignment.partition("=")
            help_.check_var(where, key)
            environment[key] = val
    for key in env_file(UNIT_ENV, include_commented=True):
        help_.check_var(rel(UNIT_ENV), key)
    file_env = env_file(UNIT_ENV, include_commented=False)
    if service.get("KillSignal", ["SIGTERM"])[-1] != "SIGTERM":
        fail(where, "the origin drains on SIGTERM; KillSignal must be SIGTERM")
    if service.get("Restart", ["no"])[-1] != "on-failure":
        fail(where, "Restart must be on-failure")
    timeout = int(file_env.get("PREFOLD_SHUTDOWN_TIMEOUT_SECS", help_.shutdown_timeout))
    stop = seconds(service.get("TimeoutStopSec", ["90s"])[-1])
    if stop < drain_bound(timeout):
        fail(where, f"TimeoutStopSec {stop:g} s < the drain's {drain_bound(timeout):g} s "
                    f"(shutdown timeout {timeout} s)")
    # EnvironmentFile= is applied after Environment=, so the file wins.
    environment.update(file_env)
    return {"env": environment, "args": exec_start[1:]}


# ---------------------------------------------------------------- smoke runs


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def smoke(where: str, binary: str, argv: list[str], env: dict[str, str], probes: dict[str, str]) -> str:
    """Starts the origin as `where` would (on a free loopback port, over the
    local filesystem), checks the probe paths, then SIGTERM: it must drain
    and exit 0. Returns how long it took to get ready and to stop."""
    with tempfile.TemporaryDirectory(prefix="validate-deploy-") as data:
        env = {k: v.replace("%S/prefold-origin", data) for k, v in env.items()}
        env |= {"PREFOLD_STORE": "fs", "PREFOLD_LISTEN": "127.0.0.1:0", "PREFOLD_DATA": data}
        args = []
        skip = False
        for i, arg in enumerate(argv):
            if skip:
                skip = False
                continue
            if arg in ("--listen", "--data", "--store"):
                skip = True
                continue
            args.append(arg)
        base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
        started = time.monotonic()
        proc = subprocess.Popen([binary, *args], env=base | env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            m = re.match(r"prefold-origin listening on (http://\S+)", line)
            if not m:
                proc.kill()
                fail(where, f"the origin did not start: {line.strip() or proc.stderr.read().strip()}")
                return "failed"
            url = m.group(1)
            deadline = time.monotonic() + 30
            while get(url + probes.get("readinessProbe", "/readyz")) != 200:
                if time.monotonic() > deadline or proc.poll() is not None:
                    fail(where, "the origin never became ready")
                    return "failed"
                time.sleep(0.05)
            for probe, path in probes.items():
                if get(url + path) != 200:
                    fail(where, f"{probe} {path} does not answer 200 on a ready origin")
            ready_ms = (time.monotonic() - started) * 1000
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            if code != 0:
                fail(where, f"after SIGTERM the origin exited {code}: {proc.stderr.read().strip()}")
            return f"ready in {ready_ms:.0f} ms, drained in {(time.monotonic() - stopping) * 1000:.0f} ms"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def main() -> int:
    binary = sys.argv[1]
    help_ = Help(binary)
    entrypoint = check_container(help_)
    check_dockerignore()
    pod = check_kubernetes(help_)
    unit = check_systemd(help_)
    runs = []
    if not errors and pod:
        # Pod 0 as the kubelet starts it: the image's entrypoint, the
        # container's args, its literal variables, the downward API's name,
        # and generated secrets in place of the Secrets.
        env = {}
        for name, var in pod["env"].items():
            source = var.get("valueFrom", {})
            if "value" in var:
                env[name] = var["value"]
            elif "fieldRef" in source:
                env[name] = pod["name"]
            elif "secretKeyRef" in source and name.startswith("PREFOLD_"):
                env[name] = secrets.token_hex(32)
        runs.append(f"{pod['name']} " + smoke(rel(KUBERNETES), binary, entrypoint[1:] + pod["args"], env, pod["probes"]))
    if not errors:
        env = {k: v or (secrets.token_hex(32) if k.endswith("_SECRET") else v)
               for k, v in unit["env"].items() if k.startswith("PREFOLD_")}
        probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
        runs.append("the systemd unit's " + smoke(rel(UNIT), binary, unit["args"], env, probes))
    for e in errors:
        print(f"validate-deploy: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"flags and variables as --help lists them; .dockerignore; origin list, probes, drain budget; "
          f"started as deployed: {'; '.join(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

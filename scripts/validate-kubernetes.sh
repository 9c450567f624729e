#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/kubernetes/ and its overlays offline.
#
#   scripts/validate-kubernetes.sh [DIR...]
#
# Without DIR: deploy/kubernetes/ (the base) and every deploy/kubernetes-*/ with a
# kustomization.yaml (the overlays deploy/kubernetes-fleet/ and
# deploy/kubernetes-component-example/, and the kustomize Component deploy/kubernetes-component/).
# Each directory is validated on its own; the counts at the end are for all of them.
#
# What it checks, each failure listed and counted (exit 1 if any):
#   1. Every *.yaml parses (duplicate keys are errors, as they are for kubectl).
#   2. Every core-API object (ConfigMap, Secret, Deployment, Service, NetworkPolicy, ...)
#      against the Kubernetes JSON schemas bundled in PyPI's `kubernetes-validate`, in their
#      *strict* flavour (unknown fields are errors, as with `kubectl apply --validate=strict`),
#      for each version in K8S_VERSIONS. An unknown kind/apiVersion is an error, not a skip.
#   3. The PodMonitor against prometheus-operator's CRD schema, taken from the models that
#      PyPI's `cloudcoil-models-prometheus-operator` generates from the CRDs, made strict the
#      same way (additionalProperties: false on every object with declared properties).
#   4. kustomization.yaml: its resources (files, or directories with a kustomization.yaml),
#      components (directories with a kind: Component kustomization.yaml), generator files and
#      patch files exist, every non-example manifest is listed (as a resource or a patch), and
#      `kubectl kustomize` renders it (when kubectl is installed; the rendered objects go
#      through checks 2-3 again). The same objects are also built without kubectl, for the
#      subset of kustomize used here (resources, components, configMapGenerator and
#      secretGenerator with their hash suffixes, strategic merge patches with a target,
#      replicas), and must equal kubectl's: that build stands in for kubectl where it is
#      missing (its objects then go through checks 2-3). A patch file is checked against the
#      schemas without their required fields. For a kustomization that lists components: every
#      target of a component's patch matches an object and the objects it matches carry what
#      it adds, and the patch adds its containers and volumes rather than merging into ones of
#      the same name. A Component's own directory cannot be rendered on its own: an overlay
#      must list it; its sidecar container must be deploy/kubernetes/'s (volume names aside)
#      and its gateway.toml must set what the base's sets.
#   5. Cross-references schemas cannot see, on the objects the kustomization renders (plus
#      the *.example.* files of every directory it draws on): selectors match the pod labels,
#      probe and PodMonitor ports exist, volumes resolve to the ConfigMap/Secret (generated
#      ones by their hash-suffixed names), the gateway's --config and secret_key_file lie
#      under their mounts (a non-root gateway needs a pod fsGroup to read the key), listen
#      ports match the declared container ports, terminationGracePeriodSeconds >
#      server.shutdown_grace;
#      Services and NetworkPolicies select a pod template and name its ports. In fleet mode:
#      fleet.redis_url names a Service and port of the kustomization (a host outside the
#      cluster is skipped), its NetworkPolicy admits the gateway's pods, and
#      fleet.expected_replicas covers every pod that can run at once (2 x replicas under a
#      rolling update: terminating pods are not counted by the Deployment but still serve);
#      a Redis container runs with a --maxmemory below its memory limit, `noeviction`, one
#      replica and a Recreate strategy. An overlay's gateway.toml must be its base's, text
#      unchanged, with tables appended.
#   6. Every gateway.toml inside a ConfigMap with the real binary: `tim-gateway check-config`
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
dirs=()
if (($#)); then
    dirs=("$@")
else
    dirs=("$repo_root/deploy/kubernetes")
    for overlay in "$repo_root"/deploy/kubernetes-*/; do
        [[ -f "$overlay/kustomization.yaml" ]] && dirs+=("${overlay%/}")
    done
fi
for i in "${!dirs[@]}"; do
    if [[ ! -d "${dirs[$i]}" ]]; then
        echo "validate-kubernetes: no such directory: ${dirs[$i]}" >&2
        exit 2
    fi
    dirs[$i]="$(cd "${dirs[$i]}" && pwd)"
done

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

echo "==> validating ${dirs[*]#$repo_root/} against Kubernetes ${K8S_VERSIONS:-1.29.0 1.37.0}"
# Not exec: the EXIT trap removes $workdir afterwards.
status=0
"$py" - "${K8S_VERSIONS:-1.29.0 1.37.0}" "$gateway_bin" "$workdir" "${dirs[@]}" <<'PYTHON' || status=$?
import base64
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import jsonschema
import yaml
from referencing import Registry, Resource

from kubernetes_validate import utils as kv
from kubernetes_validate.version import __version__ as kv_version

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

versions, gateway_bin, workdir = sys.argv[1:4]
directories = [Path(d) for d in sys.argv[4:]]
versions = versions.split()
passed = 0
failed = 0
# Lines of the first directory are printed as they always were; those of the others start
# with "<directory name>: ".
prefix = ""


def ok(what):
    global passed
    passed += 1
    print(f"PASS {prefix}{what}")


def fail(what, why):
    global failed
    failed += 1
    print(f"FAIL {prefix}{what}: {why}")


def skip(what, why):
    print(f"SKIP {prefix}{what}: {why}")


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


def only_required(error):
    """Whether a schema error is only about missing required fields (for patches)."""
    if error.validator == "required":
        return True
    return bool(error.context) and error.validator in ("anyOf", "oneOf", "allOf") \
        and all(only_required(e) or (e.validator == "type" and list(e.absolute_path) == list(error.absolute_path))
                for e in error.context)


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


def validate_object(doc, label, patch=False):
    """Checks 2-3 for one object. Returns True if it is valid. A patch (a file a kustomization
    lists under patches) holds only the fields it changes: its fields must be known to the
    schema, but required ones may be missing."""
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
        if patch:
            what = f"{label} {name_of(doc)} (a patch) against Kubernetes {version} (strict, required fields not enforced)"
        try:
            errors = core_errors(doc, version)
            if patch:
                errors = [e for e in errors if not only_required(e)]
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


def load_quiet(path):
    """The documents of a YAML file, or None if it does not parse (check 1 reports that)."""
    try:
        docs = [d for d in yaml.load_all(Path(path).read_text(), Loader=StrictLoader) if d is not None]
    except (OSError, yaml.YAMLError):
        return None
    return docs if all(isinstance(d, dict) for d in docs) else None


def yaml_files(directory):
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def object_key(doc):
    meta = doc.get("metadata") or {}
    return (doc.get("apiVersion", ""), doc.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


# --- 4. kustomize: kubectl, and the same without it --------------------------------------------
_rendered = {}


def render(directory):
    """(objects, None) from `kubectl kustomize directory`, or (None, "SKIPPED:…"/"FAILED:…")."""
    if directory not in _rendered:
        if not shutil.which("kubectl"):
            _rendered[directory] = (None, "SKIPPED:kubectl is not installed")
        else:
            run = subprocess.run(["kubectl", "kustomize", str(directory)],
                                 capture_output=True, text=True, timeout=120)
            if run.returncode != 0:
                _rendered[directory] = (None, "FAILED:" + " ".join(run.stderr.split()))
            else:
                try:
                    docs = [d for d in yaml.load_all(run.stdout, Loader=StrictLoader) if d is not None]
                    _rendered[directory] = (docs, None)
                except yaml.YAMLError as e:
                    _rendered[directory] = (None, "FAILED:its output does not parse: " + " ".join(str(e).split()))
    docs, why = _rendered[directory]
    return (copy.deepcopy(docs) if docs is not None else None), why


KUSTOMIZE_OFFLINE = {"apiVersion", "kind", "resources", "components", "configMapGenerator",
                     "secretGenerator", "patches", "replicas"}
# Set on the objects a generator made (or merged into) while compose() runs: whether kustomize
# gives them a hash suffix at the end. Removed before compose() returns.
GENERATED = "__validate_kubernetes_generated__"
# Strategic merge patches merge these lists element by element, on the key named (the
# x-kubernetes-patch-merge-key of the pod template's fields); every other list is replaced.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "volumes": "name", "env": "name", "imagePullSecrets": "name",
              "volumeMounts": "mountPath", "volumeDevices": "devicePath",
              "ports": "containerPort", "hostAliases": "ip"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
# Patches of a Component that merged into an element the target already had, e.g. a
# container or volume of the app with the sidecar's name: (component, object, what). check 4
# reports them.
component_collisions = []


class Unsupported(Exception):
    """Something the build here does not do; its message says what."""


def compose(directory, visited=None):
    """What `kubectl kustomize directory` renders, built here for the subset of kustomize this
    repository uses: resources (files, and directories with their own kustomization.yaml),
    components (directories with a kind: Component kustomization.yaml), configMapGenerator and
    secretGenerator (files and literals; behavior create, merge or replace; options labels,
    annotations and disableNameSuffixHash), patches (strategic merge, from a file or inline, with
    a target by kind, name and labelSelector, or by the patch's own kind and name) and replicas;
    then, as kustomize does last, the hash suffixes of generated names and the references to
    them in pod templates. Returns (objects, directories drawn on, None) or (None, [], why not)."""
    visited = [] if visited is None else visited
    try:
        objects = accumulate(directory, [], visited, component=False)
        rename_generated(objects)
    except Unsupported as e:
        return None, [], str(e)
    return objects, visited, None


def accumulate(directory, objects, visited, component):
    """kustomize's accumulateTarget: this directory's resources, its own generators, its
    components (each working on the same objects), then its patches and replicas. A Component
    adds to and changes its parent's `objects`; a Kustomization starts from none and its result
    is added to its parent's."""
    visited.append(directory)
    docs = load_quiet(directory / "kustomization.yaml")
    if not docs:
        raise Unsupported(f"{directory / 'kustomization.yaml'} does not parse")
    k = docs[0]
    kind = k.get("kind", "Kustomization")
    if kind != ("Component" if component else "Kustomization"):
        raise Unsupported(f"{directory.name}/kustomization.yaml is a {kind}, listed as a "
                          f"{'component' if component else 'resource'}")
    unsupported = sorted(set(k) - KUSTOMIZE_OFFLINE)
    if unsupported:
        raise Unsupported(f"{directory.name}/kustomization.yaml uses {', '.join(unsupported)}")
    for resource in k.get("resources") or []:
        path = (directory / resource).resolve()
        if path.is_dir():
            objects += accumulate(path, [], visited, component=False)
        else:
            sub = load_quiet(path)
            if sub is None:
                raise Unsupported(f"resource {resource} is missing or does not parse")
            objects += sub
    for kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in k.get(field) or []:
            generate(directory, kind, gen, objects)
    for path in k.get("components") or []:
        accumulate((directory / path).resolve(), objects, visited, component=True)
    for patch in k.get("patches") or []:
        apply_patch(directory, patch, objects, directory.name if component else None)
    for r in k.get("replicas") or []:
        targets = [o for o in objects if o.get("kind") in WORKLOADS
                   and (o.get("metadata") or {}).get("name") == r.get("name")]
        if not targets:
            raise Unsupported(f"replicas: no workload named {r.get('name')!r}")
        for t in targets:
            t.setdefault("spec", {})["replicas"] = r.get("count")
    return objects


def generate(directory, kind, gen, objects):
    """One configMapGenerator or secretGenerator entry."""
    name, behavior = gen.get("name"), gen.get("behavior", "create")
    options = gen.get("options") or {}
    allowed = {"name", "behavior", "files", "literals", "options"} | ({"type"} if kind == "Secret" else set())
    if set(gen) - allowed or set(options) - {"disableNameSuffixHash", "labels", "annotations"} \
            or behavior not in ("create", "merge", "replace"):
        raise Unsupported(f"{kind} generator {name!r}: only name, behavior, files, literals, "
                          "options (labels, annotations, disableNameSuffixHash) are built here")
    data = {}
    for entry in gen.get("files") or []:
        key, _, file = entry.rpartition("=")
        try:
            raw = (directory / file).read_bytes()
        except OSError as e:
            raise Unsupported(f"{kind} generator file {file}: {e.strerror}")
        if kind == "Secret":
            data[key or Path(file).name] = kustomize_base64(raw)
        else:
            try:
                data[key or Path(file).name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Unsupported(f"configMapGenerator file {file} is not UTF-8 (kustomize makes it binaryData)")
    for literal in gen.get("literals") or []:
        key, _, value = literal.partition("=")
        data[key] = kustomize_base64(value.encode()) if kind == "Secret" else value
    hashed = not options.get("disableNameSuffixHash", False)
    existing = [o for o in objects if o.get("kind") == kind and (o.get("metadata") or {}).get("name") == name]
    if behavior == "create":
        if existing:
            raise Unsupported(f"{kind} generator {name!r}: a {kind} of that name exists (kustomize refuses)")
        obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "data": data}
        if kind == "Secret":
            obj["type"] = gen.get("type", "Opaque")
        for field in ("labels", "annotations"):
            if options.get(field):
                obj["metadata"][field] = dict(options[field])
        obj[GENERATED] = hashed
        objects.append(obj)
        return
    if len(existing) != 1:
        raise Unsupported(f"{kind} generator {name!r}: no single {kind} of that name to {behavior} "
                          "(a kustomization's generators run before its components)")
    target = existing[0]
    if behavior == "merge":
        target.setdefault("data", {}).update(data)
    else:
        target["data"] = data
    for field in ("labels", "annotations"):
        if options.get(field):
            target["metadata"].setdefault(field, {}).update(options[field])
    # A plain resource stays unhashed; disableNameSuffixHash takes a generated one's hash away.
    target[GENERATED] = target.get(GENERATED, False) and hashed


def kustomize_base64(raw):
    """Base64 as kustomize writes a Secret's data (kyaml encodeBase64): in lines of 70
    characters, each ending in a newline once there is more than one line."""
    text = base64.b64encode(raw).decode()
    if len(text) // 70 + 1 == 1:
        return text
    return "".join(text[i:i + 70] + "\n" for i in range(0, len(text), 70))


def label_selected(selector, labels):
    """kustomize's labelSelector, in its equality-based form: k=v, k==v, k!=v, k, !k."""
    for term in (t.strip() for t in selector.split(",")):
        if re.search(r"\s(in|notin)\s*\(", term):
            raise Unsupported(f"labelSelector {selector!r}: set-based terms are not evaluated here")
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in re.split("==?", term, maxsplit=1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def patch_targets(entry, patch, objects):
    """The objects a `patches:` entry applies to."""
    target = entry.get("target")
    if target is None:
        meta = patch.get("metadata") or {}
        found = [o for o in objects if o.get("kind") == patch.get("kind")
                 and (o.get("metadata") or {}).get("name") == meta.get("name")]
        if len(found) != 1:
            raise Unsupported(f"patch {name_of(patch)}: no single target of that kind and name")
        return found
    if set(target) - {"kind", "name", "labelSelector"}:
        raise Unsupported(f"patch target {target}: only kind, name and labelSelector are evaluated here")
    found = []
    for o in objects:
        meta = o.get("metadata") or {}
        if "kind" in target and not re.fullmatch(target["kind"], o.get("kind", "")):
            continue
        if "name" in target and not re.fullmatch(target["name"], meta.get("name", "")):
            continue
        if "labelSelector" in target and not label_selected(target["labelSelector"], meta.get("labels") or {}):
            continue
        found.append(o)
    return found


def apply_patch(directory, entry, objects, component):
    """One `patches:` entry, strategic merge only. component names the Component it comes from
    (None in a Kustomization): its merges into existing list elements are collisions."""
    if set(entry) - {"path", "patch", "target"}:
        raise Unsupported(f"patch {entry}: only path, patch and target are built here")
    if "path" in entry:
        docs = load_quiet(directory / entry["path"])
        where = entry["path"]
    else:
        try:
            docs = [d for d in yaml.load_all(entry.get("patch") or "", Loader=StrictLoader) if d is not None]
        except yaml.YAMLError:
            docs = None
        where = "an inline patch"
    if not docs or len(docs) != 1 or not isinstance(docs[0], dict) or "kind" not in docs[0]:
        raise Unsupported(f"{where}: only a single strategic merge patch (an object with a kind) is "
                          "built here, not JSON 6902 operations")
    patch = docs[0]
    for target in patch_targets(entry, patch, objects):
        if target.get("kind") not in WORKLOADS:
            raise Unsupported(f"{where}: strategic merge into a {target.get('kind')} is not built here")
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        meta = dict(body.get("metadata") or {})
        meta.pop("name", None)
        meta.pop("namespace", None)
        body["metadata"] = meta
        trail = f"{component}/{where} → {name_of(target)}" if component else None
        strategic_merge(target, body, trail)


def strategic_merge(dest, patch, trail, path=""):
    """Merges patch into dest as kustomize's strategic merge does: maps key by key, null
    deletes, lists in MERGE_KEYS element by element (the patch's elements first, in its order,
    then the rest of dest's), other lists and scalars replaced."""
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise Unsupported(f"strategic merge directive {key} is not built here")
        if value is None:
            dest.pop(key, None)
        elif isinstance(value, dict) and isinstance(dest.get(key), dict):
            strategic_merge(dest[key], value, trail, f"{path}.{key}")
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(dest.get(key), list) \
                and all(isinstance(i, dict) for i in value + dest[key]):
            mk = MERGE_KEYS[key]
            old = {item.get(mk): item for item in dest[key]}
            merged, keys = [], set()
            for item in value:
                keys.add(item.get(mk))
                if item.get(mk) in old:
                    if trail:
                        component_collisions.append((trail, f"{path}.{key}[{mk}={item.get(mk)}]"))
                    strategic_merge(old[item.get(mk)], item, trail, f"{path}.{key}[{item.get(mk)}]")
                    merged.append(old[item.get(mk)])
                else:
                    merged.append(without_nulls(item))
            dest[key] = merged + [item for item in dest[key] if item.get(mk) not in keys]
        else:
            dest[key] = without_nulls(value)


def without_nulls(value):
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return copy.deepcopy(value)


def kustomize_hash(obj):
    """The suffix kustomize gives a generated ConfigMap or Secret (api/hasher): the first 10 hex
    digits of the SHA-256 of Go's json.Marshal of {kind, name, data[, type]}, with 0, 1, 3, a,
    e mapped to g, h, k, m, t. kustomize looks the name up as a field literally called
    "metadata/name", finds none and hashes "": the suffix depends on the content only."""
    m = {"kind": obj["kind"], "name": "", "data": obj.get("data") or {}}
    if obj["kind"] == "Secret":
        m["type"] = obj.get("type", "")
    for extra in ("binaryData", "stringData"):
        if isinstance(obj.get(extra), dict):
            m[extra] = obj[extra]
    text = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)  # Go escapes these in JSON strings
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def rename_generated(objects):
    """kustomize's last steps: generated names get their hash, and the pod templates that
    name them follow (volumes, projected sources, env, envFrom, imagePullSecrets)."""
    renamed = {}  # (kind, old name) -> new name
    for o in objects:
        if o.pop(GENERATED, False):
            new = f"{o['metadata']['name']}-{kustomize_hash(o)}"
            renamed[(o["kind"], o["metadata"]["name"])] = new
            o["metadata"]["name"] = new
    if not renamed:
        return

    def follow(ref, field, kind):
        if isinstance(ref, dict) and (kind, ref.get(field)) in renamed:
            ref[field] = renamed[(kind, ref[field])]

    for o in objects:
        if o.get("kind") not in WORKLOADS:
            continue
        pod = (((o.get("spec") or {}).get("template") or {}).get("spec")) or {}
        for v in pod.get("volumes") or []:
            follow(v.get("configMap"), "name", "ConfigMap")
            follow(v.get("secret"), "secretName", "Secret")
            for source in (v.get("projected") or {}).get("sources") or []:
                follow(source.get("configMap"), "name", "ConfigMap")
                follow(source.get("secret"), "name", "Secret")
        for s in pod.get("imagePullSecrets") or []:
            follow(s, "name", "Secret")
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            for e in c.get("env") or []:
                follow((e.get("valueFrom") or {}).get("configMapKeyRef"), "name", "ConfigMap")
                follow((e.get("valueFrom") or {}).get("secretKeyRef"), "name", "Secret")
            for e in c.get("envFrom") or []:
                follow(e.get("configMapRef"), "name", "ConfigMap")
                follow(e.get("secretRef"), "name", "Secret")


def check_files(directory, k, manifests):
    """Check 4's file checks on a kustomization.yaml (Kustomization or Component): what it lists
    exists, and it lists every manifest of its directory (as a resource or a patch)."""
    listed = k.get("resources") or []
    if listed or k.get("kind", "Kustomization") == "Kustomization":
        missing = [r for r in listed if not ((directory / r).is_file()
                                             or (directory / r / "kustomization.yaml").is_file())]
        if missing:
            fail("kustomization.yaml resources exist", f"missing (or a directory without a kustomization.yaml): {', '.join(missing)}")
        else:
            ok(f"kustomization.yaml resources exist ({', '.join(listed)})")
    for field in ("configMapGenerator", "secretGenerator"):
        generated = [entry.rpartition("=")[2] for gen in k.get(field) or []
                     for entry in gen.get("files") or []]
        if generated:
            absent = [f for f in generated if not (directory / f).is_file()]
            if absent:
                fail(f"kustomization.yaml {field} files exist", f"missing: {', '.join(absent)}")
            else:
                ok(f"kustomization.yaml {field} files exist ({', '.join(generated)})")
    patches = patch_files(k)
    if patches:
        absent = [p for p in patches if not (directory / p).is_file()]
        if absent:
            fail("kustomization.yaml patch files exist", f"missing: {', '.join(absent)}")
        else:
            ok(f"kustomization.yaml patch files exist ({', '.join(patches)})")
    components = k.get("components") or []
    if components:
        wrong = []
        for c in components:
            docs = load_quiet(directory / c / "kustomization.yaml") if (directory / c / "kustomization.yaml").is_file() else None
            if not docs or docs[0].get("kind") != "Component":
                wrong.append(c)
        if wrong:
            fail("kustomization.yaml components are directories with a kind: Component kustomization.yaml", f"not: {', '.join(wrong)}")
        else:
            ok(f"kustomization.yaml components are Components ({', '.join(components)})")
    unlisted = sorted(m for m in manifests if m not in listed and m not in patches and ".example." not in m)
    if unlisted:
        fail("kustomization.yaml lists every manifest", f"not listed (and not *.example.*): {', '.join(unlisted)}")
    else:
        excluded = sorted(m for m in manifests if m not in listed and m not in patches)
        ok("kustomization.yaml lists every manifest" + (f" (left out on purpose: {', '.join(excluded)})" if excluded else ""))


def patch_files(k):
    return [p["path"] for p in k.get("patches") or [] if isinstance(p, dict) and "path" in p]


def check_kustomization(directory, k, manifests):
    """Check 4 on one kustomization.yaml. Returns the objects it renders (kubectl's when it is
    installed, else the offline build; None if neither works) and the directories drawn on."""
    check_files(directory, k, manifests)

    rendered, why = render(directory)
    if why and why.startswith("SKIPPED:"):
        skip("kubectl kustomize", why.split(":", 1)[1])
    elif why:
        fail("kubectl kustomize renders", why.split(":", 1)[1])
    else:
        ok(f"kubectl kustomize output parses as YAML ({len(rendered)} document(s))")
        kinds = ", ".join(name_of(d) for d in rendered)
        ok(f"kubectl kustomize renders {len(rendered)} object(s): {kinds}")
        for doc in rendered:
            validate_object(doc, "rendered")

    component_collisions.clear()
    composed, visited, why_not = compose(directory)
    for trail, what in component_collisions:
        fail(f"component patch {trail}", f"merges into the target's existing {what} instead of adding "
             "one: the app already uses that name; rename the app's")
    if composed is None:
        if rendered is None:
            fail("kustomization built without kubectl", why_not)
        else:
            skip("kustomization built without kubectl", why_not)
        return rendered, [directory] + [(directory / c).resolve() for c in k.get("components") or []]
    if rendered is not None:
        mine = sorted((object_key(d), json.dumps(d, sort_keys=True)) for d in composed)
        theirs = sorted((object_key(d), json.dumps(d, sort_keys=True)) for d in rendered)
        if mine == theirs:
            ok("the build without kubectl equals kubectl kustomize's output")
        else:
            diff = sorted({name_of(json.loads(t)) for t in set(x[1] for x in mine) ^ set(x[1] for x in theirs)})
            fail("the build without kubectl equals kubectl kustomize's output", f"differs in {', '.join(diff)}")
        return rendered, visited
    ok(f"built without kubectl: {len(composed)} object(s): {', '.join(name_of(d) for d in composed)}")
    for doc in composed:
        validate_object(doc, "built")
    return composed, visited


def check_components(directory, k, objects):
    """Each target of a component's patches matches an object of the kustomization, and each
    object it matches carries what the patch adds (a target label added after the component
    ran, by this kustomization's own labels or patches, matches without a patch)."""
    for path in k.get("components") or []:
        comp_dir = (directory / path).resolve()
        comp = (load_quiet(comp_dir / "kustomization.yaml") or [None])[0]
        if not comp:
            continue  # reported by check_files
        for entry in comp.get("patches") or []:
            if not isinstance(entry, dict) or "path" not in entry or "target" not in entry:
                continue
            patch = (load_quiet(comp_dir / entry["path"]) or [None])[0]
            if not patch:
                continue
            what = f"component {path}: {entry['path']} (target {entry['target']})"
            try:
                hits = patch_targets(entry, patch, objects)
            except Unsupported as e:
                skip(what, str(e))
                continue
            if not hits:
                fail(what, "matches no object here, so nothing gets the sidecar: label the Deployment "
                     "in its own manifest (see the component's kustomization.yaml)")
                continue
            pod = ((patch.get("spec") or {}).get("template") or {}).get("spec") or {}
            for hit in hits:
                hit_pod = ((hit.get("spec") or {}).get("template") or {}).get("spec") or {}
                absent = [f"{field} {item.get('name')}" for field in ("initContainers", "containers", "volumes")
                          for item in pod.get(field) or []
                          if item.get("name") not in {i.get("name") for i in hit_pod.get(field) or []}]
                if absent:
                    fail(f"{what} patched {name_of(hit)}", f"it has no {', '.join(absent)}: its label was "
                         "set after the component ran; set it in the Deployment's manifest")
                else:
                    added = "; ".join(f"{field}: {', '.join(i.get('name') for i in pod.get(field))}"
                                      for field in ("initContainers", "containers", "volumes") if pod.get(field))
                    ok(f"{what} patched {name_of(hit)} ({added})")


def check_component(directory, k, manifests):
    """Check 4 on a Component's own directory. It cannot be built on its own: its generators and
    patches are built (and checks 2-6 run) through the overlays that list it, and at least one
    must. Its sidecar must stay ../kubernetes/'s and its gateway.toml set what the base's does."""
    check_files(directory, k, manifests)
    users = []
    for other in sorted(directory.parent.glob("*/kustomization.yaml")):
        docs = load_quiet(other)
        if docs and any((other.parent / c).resolve() == directory for c in docs[0].get("components") or []):
            users.append(f"{other.parent.name}/")
    if users:
        ok(f"Component used by {', '.join(users)}: rendered and checked there")
    else:
        fail("Component used by an overlay", f"no {directory.parent.name}/*/kustomization.yaml lists it "
             "in components, so its patches are never rendered or checked")

    base_dir = directory.parent / "kubernetes"
    base, why = render(base_dir) if (base_dir / "kustomization.yaml").is_file() else (None, "SKIPPED:no ../kubernetes/")
    if base is None and (base_dir / "kustomization.yaml").is_file():
        base, _, why = compose(base_dir)
    if base is None:
        skip("Component compared with ../kubernetes/", str(why).split(":", 1)[-1])
        return

    def sidecar(pod):
        volumes = {v.get("name"): {x: y for x, y in v.items() if x != "name"} for v in pod.get("volumes") or []}
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            if "tim-gateway" in str(c.get("image", "")):
                c = copy.deepcopy(c)
                for m in c.get("volumeMounts") or []:  # a mount is known by its volume's source
                    m["name"] = volumes.get(m.get("name"))
                return c
        return None

    base_pods = [((d.get("spec") or {}).get("template") or {}).get("spec") or {}
                 for d in base if d.get("kind") in WORKLOADS]
    base_sidecar = next((s for s in map(sidecar, base_pods) if s), None)
    for patch_file in patch_files(k):
        for patch in load_quiet(directory / patch_file) or []:
            mine = sidecar(((patch.get("spec") or {}).get("template") or {}).get("spec") or {})
            if mine is None:
                continue
            if base_sidecar is None:
                skip(f"{patch_file} container {mine.get('name')} compared with ../kubernetes/'s", "no tim-gateway container there")
                continue
            what = f"{patch_file} container {mine.get('name')} is ../kubernetes/'s (volume names aside)"
            if json.dumps(mine, sort_keys=True) == json.dumps(base_sidecar, sort_keys=True):
                ok(what)
            else:
                fields = sorted(f for f in set(mine) | set(base_sidecar) if mine.get(f) != base_sidecar.get(f))
                fail(what, f"differs in {', '.join(fields)}; make the same change in both")
    base_toml = next(((d.get("data") or {}).get("gateway.toml") for d in base
                      if d.get("kind") == "ConfigMap" and "gateway.toml" in (d.get("data") or {})), None)
    for gen in k.get("configMapGenerator") or []:
        for entry in gen.get("files") or []:
            key, _, file = entry.rpartition("=")
            if (key or Path(file).name) != "gateway.toml" or base_toml is None or not (directory / file).is_file():
                continue
            what = f"{file} sets what ../kubernetes/'s gateway.toml sets (comments aside)"
            try:
                mine, theirs = tomllib.loads((directory / file).read_text()), tomllib.loads(base_toml)
            except tomllib.TOMLDecodeError as e:
                fail(what, f"does not parse: {e}")
                continue
            if mine == theirs:
                ok(what)
            else:
                mine, theirs = _flat(mine), _flat(theirs)
                differ = sorted(x for x in set(mine) | set(theirs) if mine.get(x) != theirs.get(x))
                fail(what, f"differs in {', '.join(differ)}; make the same change in both")


def _flat(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_overlay_configs(directory, k, objects):
    """An overlay's gateway.toml must be its base's, text unchanged, with tables appended."""
    for resource in k.get("resources") or []:
        base_dir = (directory / resource).resolve()
        if not (base_dir / "kustomization.yaml").is_file():
            continue
        base_objects, why = render(base_dir)
        if base_objects is None:
            base_objects, _, why = compose(base_dir)
        if base_objects is None:
            skip(f"configuration compared with the base {resource}", why)
            continue
        base_maps = {(d.get("metadata") or {}).get("name"): d for d in base_objects if d.get("kind") == "ConfigMap"}
        for cm in (d for d in objects if d.get("kind") == "ConfigMap"):
            base_cm = base_maps.get(cm["metadata"]["name"])
            if not base_cm:
                continue
            for key, text in (cm.get("data") or {}).items():
                base_text = (base_cm.get("data") or {}).get(key)
                if not key.endswith(".toml") or base_text is None or text == base_text:
                    continue
                what = f"{name_of(cm)} {key} is the base's ({resource}) with tables appended"
                body, base_body = strip_comment_header(text), strip_comment_header(base_text)
                if not body.startswith(base_body):
                    mine, theirs = body.splitlines(), base_body.splitlines()
                    line = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
                    base_line = theirs[line] if line < len(theirs) else "(end of the base's text)"
                    fail(what, f"differs from the base's text at its line {line + 1} ({base_line.strip()!r}); copy the base's change")
                    continue
                try:
                    added = tomllib.loads(body[len(base_body):])
                except tomllib.TOMLDecodeError as e:
                    fail(what, f"the appended part does not parse on its own: {e}")
                    continue
                loose = [name for name, value in added.items() if not isinstance(value, dict)]
                if loose:
                    fail(what, f"keys {loose} would land in the base's last table; append whole tables")
                else:
                    ok(f"{what}: [{'], ['.join(added)}]")


def strip_comment_header(text):
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
        i += 1
    return "".join(lines[i:])


# --- 5. cross-references --------------------------------------------------------------------------
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



def generated_from(name, generators):
    """The generator (configMapGenerator/secretGenerator name) that made `name`, if it is that
    name with kustomize's hash suffix."""
    return next((g for g in generators if re.fullmatch(re.escape(str(g)) + r"-[245-9bcdfghkmt]{10}", str(name))), None)


def cross_references(objects, where, generators=()):
    """Check 5 on the objects one kustomization renders (plus the example files); `where`
    names their directory in messages, `generators` the names its generators give (with a
    hash suffix). Returns the gateway configurations found, as (label, toml text, parsed),
    for check 6."""
    by_kind = {}
    for doc in objects:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", []) if d.get("metadata")}
    secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", []) if d.get("metadata")}

    gateway_configs = []  # (label, toml text, parsed) for check 6
    gateways = []  # (workload, label, parsed gateway.toml) for the fleet checks
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
                    gen = generated_from(ref, generators)
                    if missing:
                        fail(f"{label} volume {v['name']}", f"ConfigMap {ref} has no key(s) {missing}")
                    elif gen:
                        ok(f"{label} volume {v['name']} → ConfigMap {ref} (generated from {gen}; "
                           "the hash follows its content, so a change rolls the pods)")
                    else:
                        ok(f"{label} volume {v['name']} → ConfigMap {ref}")
                else:
                    fail(f"{label} volume {v['name']}", f"no ConfigMap {ref!r} in {where}")
            if "secret" in v:
                ref = v["secret"].get("secretName")
                if ref in secrets:
                    keys = set(secrets[ref].get("data") or {}) | set(secrets[ref].get("stringData") or {})
                    missing = [i["key"] for i in v["secret"].get("items") or [] if i.get("key") not in keys]
                    gen = generated_from(ref, generators)
                    if missing:
                        fail(f"{label} volume {v['name']}", f"Secret {ref} has no key(s) {missing}")
                    elif gen:
                        ok(f"{label} volume {v['name']} → Secret {ref} (generated from {gen}; "
                           "the hash follows its content, so a change rolls the pods)")
                    else:
                        ok(f"{label} volume {v['name']} → Secret {ref} (example in {where})")
                else:
                    fail(f"{label} volume {v['name']}", f"no Secret {ref!r} (not even an example) in {where}")

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
                if "exec" in probe:
                    continue  # a command in the container: no port to check
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
            gateways.append((wl, cname, conf))
            server = conf.get("server") or {}
            listen = server.get("listen", "127.0.0.1:18460")
            admin = server.get("admin_listen", "127.0.0.1:18461")
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
            fail(f"{label} selects a pod template", f"no workload in {where} has labels {sel}")
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

    services_and_policies(by_kind, workloads, where)
    fleet_references(by_kind, workloads, gateways, where)
    redis_servers(workloads)
    return gateway_configs


def pod_labels_of(wl):
    return ((wl["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}


def containers_of(wl):
    pod = (wl["spec"].get("template") or {}).get("spec") or {}
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])


def selects(match_labels, labels):
    return all(labels.get(k) == v for k, v in (match_labels or {}).items())


def container_port(wl, port, protocol="TCP"):
    """The containerPort number a Service targetPort or NetworkPolicy port (a number or a
    port name) stands for in wl's pods, or None if no container declares it."""
    for c in containers_of(wl):
        for p in c.get("ports") or []:
            if p.get("protocol", "TCP") != protocol:
                continue
            if port == p.get("containerPort") or (isinstance(port, str) and port == p.get("name")):
                return p.get("containerPort")
    return None


def services_and_policies(by_kind, workloads, where):
    """Services and NetworkPolicies select a pod template of the kustomization, and the
    ports they name are declared by its containers."""
    for svc in by_kind.get("Service", []):
        label = name_of(svc)
        sel = (svc.get("spec") or {}).get("selector") or {}
        if not sel:
            skip(f"{label} selects a pod template", "no selector (endpoints managed elsewhere)")
            continue
        targets = [wl for wl in workloads if selects(sel, pod_labels_of(wl))]
        if not targets:
            fail(f"{label} selects a pod template", f"no workload in {where} has labels {sel}")
            continue
        ok(f"{label} selects {', '.join(name_of(t) for t in targets)}")
        for port in (svc.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for t in targets:
                number = container_port(t, target, port.get("protocol", "TCP"))
                if number is None:
                    fail(f"{label} port {port.get('port')}", f"targetPort {target!r} is not a port of {name_of(t)}'s containers")
                else:
                    ok(f"{label} port {port.get('port')} → {name_of(t)} containerPort {number}")

    for np in by_kind.get("NetworkPolicy", []):
        label = name_of(np)
        spec = np.get("spec") or {}
        selector = spec.get("podSelector") or {}
        if selector.get("matchExpressions"):
            skip(f"{label} selects a pod template", "matchExpressions are not evaluated here")
            continue
        targets = [wl for wl in workloads if selects(selector.get("matchLabels"), pod_labels_of(wl))]
        if not targets:
            fail(f"{label} selects a pod template", f"no workload in {where} has labels {selector.get('matchLabels')}")
            continue
        ok(f"{label} applies to {', '.join(name_of(t) for t in targets)}")
        for i, rule in enumerate(spec.get("ingress") or []):
            for peer in rule.get("from") or []:
                if set(peer) != {"podSelector"} or (peer["podSelector"] or {}).get("matchExpressions"):
                    skip(f"{label} ingress[{i}] peer {peer}", "other namespaces or addresses: not checked")
                    continue
                ps = (peer["podSelector"] or {}).get("matchLabels") or {}
                admitted = [wl for wl in workloads if selects(ps, pod_labels_of(wl))]
                if admitted:
                    ok(f"{label} ingress[{i}] admits pods labelled {ps}: {', '.join(name_of(a) for a in admitted)}")
                else:
                    fail(f"{label} ingress[{i}] admits pods labelled {ps}", f"no workload in {where} carries them")
            for port in rule.get("ports") or []:
                for t in targets:
                    number = container_port(t, port.get("port"), port.get("protocol", "TCP"))
                    if number is None:
                        fail(f"{label} ingress[{i}] port {port.get('port')!r}", f"not a port of {name_of(t)}'s containers")
                    else:
                        ok(f"{label} ingress[{i}] port {port.get('port')!r} is {name_of(t)}'s containerPort {number}")


def admits(policy, client_labels, port_number, target):
    """Whether one of policy's ingress rules lets pods with client_labels (same namespace)
    reach port_number of target's pods."""
    for rule in (policy.get("spec") or {}).get("ingress") or []:
        peers = rule.get("from")
        peer_ok = not peers or any(
            set(p) == {"podSelector"} and selects(((p["podSelector"] or {}).get("matchLabels")), client_labels)
            for p in peers)
        ports = rule.get("ports")
        port_ok = not ports or any(
            container_port(target, p.get("port"), p.get("protocol", "TCP")) == port_number for p in ports)
        if peer_ok and port_ok:
            return True
    return False


def most_pods(wl, by_kind):
    """The most pods of wl that can run at once, terminating ones included, and why."""
    name, kind = wl["metadata"]["name"], wl.get("kind")
    replicas = wl["spec"].get("replicas", 1)
    how = f"replicas {replicas}"
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") == kind and ref.get("name") == name:
            replicas = (hpa.get("spec") or {}).get("maxReplicas", replicas)
            how = f"HPA maxReplicas {replicas}"
    if kind == "Deployment" and ((wl["spec"].get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"):
        # A rolling update never runs more than `replicas` new pods, but does not count the
        # old ones still terminating: all of them can be draining next to all the new ones.
        return 2 * replicas, f"2 x {how} (rolling update: new pods next to old ones still terminating)"
    return replicas, how


def fleet_references(by_kind, workloads, gateways, where):
    """In fleet mode: fleet.redis_url names a Service (and port) of the kustomization, that
    Service's NetworkPolicies admit the gateway's pods, and fleet.expected_replicas covers
    every gateway that shares the Redis and key prefix during a rollout."""
    services = {d["metadata"]["name"]: d for d in by_kind.get("Service", []) if d.get("metadata")}
    policies = [np for np in by_kind.get("NetworkPolicy", [])
                if "Ingress" in ((np.get("spec") or {}).get("policyTypes") or ["Ingress"])]
    sharing = {}  # (redis_url, key_prefix) -> [(wl, label, expected_replicas)]
    for wl, cname, conf in gateways:
        fleet = conf.get("fleet")
        if not isinstance(fleet, dict) or not fleet.get("redis_url"):
            continue
        url = urlsplit(str(fleet["redis_url"]))
        shared = f"{url.scheme}://{url.hostname or url.path}" + (f":{url.port or 6379}" if url.hostname else "")
        sharing.setdefault((shared, fleet.get("key_prefix", "tim")), []).append(
            (wl, cname, fleet.get("expected_replicas", 1)))
        what = f"{cname} fleet.redis_url"
        if url.scheme not in ("redis", "rediss"):
            skip(what, f"{url.scheme}:// is not checked against the Services")
            continue
        host, port = url.hostname or "", url.port or 6379
        parts = host.split(".")
        if (len(parts) > 2 and parts[2] != "svc") or re.fullmatch(r"[\d.]+|[\d:a-f]*:[\d:a-f]*", host):
            skip(what, f"{host} is not a Service's name (NAME, NAME.NAMESPACE or NAME.NAMESPACE.svc...): not checked")
            continue
        svc = services.get(parts[0])
        if svc is None:
            fail(what, f"{host}: no Service {parts[0]!r} in {where}")
            continue
        namespace = svc["metadata"].get("namespace")
        if len(parts) > 1 and namespace and parts[1] != namespace:
            fail(what, f"{host}: Service {parts[0]} is in namespace {namespace}, not {parts[1]}")
            continue
        svc_port = next((p for p in (svc.get("spec") or {}).get("ports") or [] if p.get("port") == port), None)
        if svc_port is None:
            fail(what, f"{host}:{port}: Service {parts[0]} has no port {port}")
            continue
        ok(f"{what} {host}:{port} is {name_of(svc)} port {port}")
        servers = [t for t in workloads if selects((svc.get("spec") or {}).get("selector"), pod_labels_of(t))]
        for server in servers:
            number = container_port(server, svc_port.get("targetPort", port), svc_port.get("protocol", "TCP"))
            if number is None:
                continue  # the Service's targetPort is wrong: reported with the Service
            guarding = [np for np in policies if selects(((np.get("spec") or {}).get("podSelector") or {}).get("matchLabels"),
                                                         pod_labels_of(server))]
            if not guarding:
                ok(f"{cname} may reach {name_of(server)}: no NetworkPolicy restricts it")
                continue
            letting = [np for np in guarding if admits(np, pod_labels_of(wl), number, server)]
            if letting:
                ok(f"{cname} may reach {name_of(server)} port {number}: {', '.join(name_of(np) for np in letting)} admits {name_of(wl)}'s pods")
            else:
                fail(f"{cname} may reach {name_of(server)} port {number}",
                     f"{', '.join(name_of(np) for np in guarding)} admit(s) no pod labelled like {name_of(wl)}'s")
    for (url, key_prefix), members in sharing.items():
        bounds = [(wl, *most_pods(wl, by_kind)) for wl, _, _ in {id(m[0]): m for m in members}.values()]
        total = sum(b for _, b, _ in bounds)
        why = "; ".join(f"{name_of(wl)}: {how}" for wl, _, how in bounds)
        for wl, cname, expected in members:
            what = f"{cname} fleet.expected_replicas {expected} covers the gateways sharing {url} (prefix {key_prefix!r})"
            if not isinstance(expected, int) or expected < total:
                fail(what, f"up to {total} can run at once ({why})")
            else:
                ok(f"{what}: at most {total} ({why})")


def redis_bytes(text):
    """Bytes in a Redis memory size ("128mb", "1gb", "1048576")."""
    m = re.fullmatch(r"(\d+)(k|kb|m|mb|g|gb)?", str(text).strip().lower())
    if not m:
        raise ValueError(f"cannot parse Redis size {text!r}")
    unit = {None: 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}[m.group(2)]
    return int(m.group(1)) * unit


def quantity_bytes(text):
    """Bytes in a Kubernetes memory quantity ("256Mi", "1G", "1048576")."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(text).strip())
    if not m:
        raise ValueError(f"cannot parse quantity {text!r}")
    unit = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * unit


def redis_servers(workloads):
    """A Redis holding the fleet's budgets: never evicts them, bounds its memory below the
    container's limit, and never runs twice (two Redis are two quotas)."""
    for wl in workloads:
        for c in containers_of(wl):
            image = str(c.get("image", "")).rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
            if image not in ("redis", "valkey", "redis-stack-server"):
                continue
            cname = f"{name_of(wl)} container {c.get('name')}"
            argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            options = {a: (argv[i + 1] if i + 1 < len(argv) else "") for i, a in enumerate(argv) if a.startswith("--")}
            policy = options.get("--maxmemory-policy", "noeviction")
            if policy != "noeviction":
                fail(f"{cname} --maxmemory-policy", f"{policy}: Redis would delete budget, pause or lockout keys "
                     "without an error when full (a burst over the quota); noeviction makes it refuse writes, "
                     "and the gateways fail closed")
            else:
                ok(f"{cname} --maxmemory-policy noeviction: a full Redis refuses writes, it never drops a budget")
            limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
            if "--maxmemory" not in options:
                fail(f"{cname} --maxmemory", "not set: Redis grows until the kernel kills it, and every budget with it")
            elif limit is None:
                fail(f"{cname} --maxmemory", "the container has no memory limit to keep it under")
            else:
                try:
                    maxmemory, cap = redis_bytes(options["--maxmemory"]), quantity_bytes(limit)
                except ValueError as e:
                    fail(f"{cname} --maxmemory", str(e))
                else:
                    if maxmemory > 0.75 * cap:
                        fail(f"{cname} --maxmemory {options['--maxmemory']}",
                             f"above 3/4 of the memory limit {limit}: no room for buffers, Lua and fragmentation")
                    else:
                        ok(f"{cname} --maxmemory {options['--maxmemory']} leaves a quarter or more of the memory limit {limit}")
            if wl.get("kind") == "Deployment":
                replicas = wl["spec"].get("replicas", 1)
                strategy = (wl["spec"].get("strategy") or {}).get("type", "RollingUpdate")
                if replicas != 1 or strategy != "Recreate":
                    fail(f"{name_of(wl)} runs one Redis at a time", f"replicas {replicas}, strategy {strategy}: "
                         "two Redis pods at once (replicas or a rolling update) split the fleet into two quotas; "
                         "use replicas: 1 and strategy Recreate")
                else:
                    ok(f"{name_of(wl)} runs one Redis at a time (replicas 1, strategy Recreate)")


# --- 6. the gateway's own config check -------------------------------------------------------------
def check_configs(gateway_configs):
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


def validate_dir(directory):
    """Checks 1-6 on one directory."""
    files = yaml_files(directory)
    if not files:
        fail(f"{directory}", "no *.yaml files")
    objects = []  # (file name, doc)
    for path in files:
        for doc in load_docs(path, path.name):
            objects.append((path.name, doc))
    kustomizations = [d for f, d in objects if d.get("kind") in ("Kustomization", "Component")]
    patches = set(patch_files(kustomizations[0])) if kustomizations else set()
    for fname, doc in objects:
        validate_object(doc, fname, patch=fname in patches)

    if kustomizations and kustomizations[0].get("kind") == "Component":
        manifests = {f for f, d in objects if d.get("kind") != "Component"}
        check_component(directory, kustomizations[0], manifests)
        return
    generators = []
    if kustomizations:
        manifests = {f for f, d in objects if d.get("kind") != "Kustomization"}
        rendered, visited = check_kustomization(directory, kustomizations[0], manifests)
        if rendered is None:  # neither kubectl nor the build here: the files as they are
            rendered = [d for f, d in objects if d.get("kind") != "Kustomization" and f not in patches]
        else:
            check_overlay_configs(directory, kustomizations[0], rendered)
            check_components(directory, kustomizations[0], rendered)
            for d in visited:
                k = (load_quiet(d / "kustomization.yaml") or [{}])[0]
                generators += [g.get("name") for field in ("configMapGenerator", "secretGenerator")
                               for g in k.get(field) or []]
            # The examples the kustomization leaves out on purpose (the Secret) still tell
            # which keys the real objects must have.
            for d in visited:
                for path in yaml_files(d):
                    if ".example." in path.name:
                        rendered += load_quiet(path) or []
    else:
        rendered, visited = [d for f, d in objects], [directory]
    where = ", ".join(f"{d.name}/" for d in visited)
    check_configs(cross_references(rendered, where, generators))


for number, directory in enumerate(directories):
    prefix = "" if number == 0 else f"{directory.name}: "
    print(f"==> {os.path.relpath(directory)}")
    validate_dir(directory)

print()
print(f"validate-kubernetes: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PYTHON
exit "$status"

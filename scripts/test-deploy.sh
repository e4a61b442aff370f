#!/usr/bin/env bash
# Checks deploy/: every Kubernetes manifest against the Kubernetes API schemas
# (kubernetes-validate from PyPI, strict: an unknown or misspelt field fails), then what the
# schemas cannot say: the readiness and liveness probes ask /healthz on the served port, the
# Service targets that port, the token file the server is told to read is where the Secret is
# mounted, and the ConfigMap's config.yaml is one this taskvault accepts. A manifest with a
# misspelt field must fail the checker (so the check itself is known to work).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/target/deploy-venv"
[ -x "$venv/bin/kubernetes-validate" ] ||
    { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==1.37.0"; }
cargo build --locked --quiet --manifest-path "$repo/Cargo.toml" -p taskvault-cli
bin="$(bash "$repo/scripts/target-dir.sh")/debug/taskvault"
k8s="$repo/deploy/kubernetes"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

manifests=()
for f in "$k8s"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
"$venv/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"

sed 's/readinessProbe:/readinesProbe:/' "$k8s/deployment.yaml" >"$work/misspelt.yaml"
if "$venv/bin/kubernetes-validate" --strict --quiet "$work/misspelt.yaml" >/dev/null 2>&1; then
    echo "test-deploy: the schema check accepted a misspelt field" >&2
    exit 1
fi

"$venv/bin/python" - "$k8s" "$work" "$bin" "$repo/deploy/Dockerfile" <<'PY'
import pathlib, subprocess, sys, yaml
k8s, work, binary, dockerfile = map(pathlib.Path, sys.argv[1:5])
docs = {}
for f in k8s.glob("*.yaml"):
    for d in yaml.safe_load_all(f.read_text()):
        docs[d["kind"]] = d
kustomized = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
assert sorted(kustomized) == sorted(f.name for f in k8s.glob("*.yaml") if f.name != "kustomization.yaml"), kustomized

dep = docs["Deployment"]["spec"]["template"]["spec"]
(c,) = dep["containers"]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
args = c["args"]
listen = args[args.index("--listen") + 1]
assert int(listen.rsplit(":", 1)[1]) == ports["http"], (listen, ports)
for probe in ("readinessProbe", "livenessProbe"):
    get = c[probe]["httpGet"]
    assert get["path"] == "/healthz" and get["port"] in ("http", ports["http"]), (probe, get)
svc = docs["Service"]["spec"]
assert svc["selector"].items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
assert svc["ports"][0]["targetPort"] in ("http", ports["http"])

mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
volumes = {v["name"]: v for v in dep["volumes"]}
tokens_file = args[args.index("--tokens-file") + 1]
(item,) = volumes["tokens"]["secret"]["items"]
assert tokens_file == f"{mounts['tokens']}/{item['path']}", tokens_file
secret = docs["Secret"]
assert volumes["tokens"]["secret"]["secretName"] == secret["metadata"]["name"]
assert item["key"] in secret["stringData"]
for e in c["env"]:
    ref = e["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], e
assert volumes["data"]["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]

# The image's entry point reads the config where the ConfigMap is mounted.
config_path = mounts["config"]
assert f'"--config", "{config_path}"' in dockerfile.read_text(), "Dockerfile and mount disagree"
config = docs["ConfigMap"]["data"]["config.yaml"]
cache_dir = yaml.safe_load(config)["cache_dir"]
assert cache_dir.startswith(mounts["data"] + "/"), (cache_dir, mounts["data"])
(work / "config.yaml").write_text(config)
out = subprocess.run([binary, "--config", work / "config.yaml", "--json", "config"],
                     capture_output=True, text=True)
assert out.returncode == 0, out.stderr
print("test-deploy: deploy/ manifests valid and consistent")
PY

#!/usr/bin/env python3
"""Validates deploy/kubernetes offline, for scripts/check_deploy.sh: renders what
kustomization.yaml names (its resources, plus the ConfigMap it generates from cluster.toml, with
its namespace) and validates every document, strictly (no unknown fields), against the bundled
Kubernetes schemas of kubernetes-validate for each version given. Then checks what the schemas
cannot: every workload uses the image kustomization.yaml names, mounts the generated ConfigMap,
and the StatefulSet's replicas and -n equal the number of dataflow.processes in cluster.toml.
With EMOSTREAM_BIN_DIR set, each container's command line (its $(VAR)s replaced by examples) is
also parsed by that folder's binary, with --help appended: an unknown flag or role fails.

    check_kubernetes.py DIR VERSION...
"""
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import kubernetes_validate
import yaml

folder, versions = pathlib.Path(sys.argv[1]), sys.argv[2:]
kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
documents = []
for resource in kustomization["resources"]:
    for doc in yaml.safe_load_all((folder / resource).read_text()):
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kustomization["namespace"]
        documents.append((resource, doc))
for generator in kustomization["configMapGenerator"]:
    data = {name: (folder / name).read_text() for name in generator["files"]}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
                  "metadata": {"name": generator["name"], "namespace": kustomization["namespace"]}}
    documents.append(("kustomization.yaml", config_map))

failures = []
for version in versions:
    for source, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{source}: {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {e.message} at {list(e.path)}")

images = {image["name"] for image in kustomization["images"]}
config_maps = {generator["name"] for generator in kustomization["configMapGenerator"]}
processes = tomllib.loads((folder / "cluster.toml").read_text())["dataflow"]["processes"]
for source, doc in documents:
    if doc["kind"] not in ("Deployment", "StatefulSet"):
        continue
    name, pod = doc["metadata"]["name"], doc["spec"]["template"]["spec"]
    for container in pod["containers"]:
        if container["image"] not in images:
            failures.append(f"{source}: {name} uses image {container['image']}, not one of {sorted(images)}")
    mounted = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    if not mounted & config_maps:
        failures.append(f"{source}: {name} mounts none of the ConfigMaps {sorted(config_maps)}")
    if doc["kind"] == "StatefulSet":
        args = pod["containers"][0]["args"]
        n = int(args[args.index("-n") + 1])
        if not doc["spec"]["replicas"] == n == len(processes):
            failures.append(f"{source}: {name}: replicas {doc['spec']['replicas']}, -n {n} and "
                            f"{len(processes)} dataflow.processes in cluster.toml must be equal")

bin_dir = os.environ.get("EMOSTREAM_BIN_DIR")
examples = {"POD_INDEX": "0", "POD_NAME": "emostream-c0-subscriber-0", "POD_IP": "10.0.0.1"}
for source, doc in documents if bin_dir else []:
    if doc["kind"] not in ("Deployment", "StatefulSet"):
        continue
    for container in doc["spec"]["template"]["spec"]["containers"]:
        line = container["command"] + container.get("args", []) + ["--help"]
        line = [re.sub(r"\$\((\w+)\)", lambda m: examples[m.group(1)], word) for word in line]
        line[0] = os.path.join(bin_dir, line[0])
        run = subprocess.run(line, capture_output=True, text=True)
        if run.returncode != 0:
            failures.append(f"{source}: {doc['metadata']['name']}: {' '.join(line)}: {run.stderr.strip()}")

for failure in failures:
    print(failure, file=sys.stderr)
print(f"{len(documents)} Kubernetes documents, {len(versions)} versions: "
      f"{'ok' if not failures else f'{len(failures)} failures'}")
sys.exit(1 if failures else 0)

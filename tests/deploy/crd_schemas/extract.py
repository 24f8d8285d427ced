"""Write the field schema of a custom resource, trimmed from its published CRD, for the manifest checks.

No Kubernetes schema bundle knows custom resources, so the CRDs' own OpenAPI schemas are what the
RayCluster and PodMonitor manifests are checked against. Kept: property names, types, enums, items,
maps, ``x-kubernetes-int-or-string`` and ``x-kubernetes-preserve-unknown-fields``; dropped:
descriptions and validations the checks do not use. Pod templates (``template``) are cut and marked:
they are core ``PodTemplateSpec``s, which the Kubernetes schemas check in full. Run it on a CRD file::

    python tests/deploy/crd_schemas/extract.py CRD.yaml VERSION SOURCE > OUT.json

``SOURCE`` says where the CRD came from (repository, path, commit); it is stored in the output.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

KEEP = ("type", "enum", "format", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")
POD_TEMPLATE = {"x-kubernetes-type": "io.k8s.api.core.v1.PodTemplateSpec"}


def trim(schema: dict[str, Any], name: str = "") -> dict[str, Any]:
    if name == "template" and "spec" in schema.get("properties", {}):
        return dict(POD_TEMPLATE)
    out = {k: schema[k] for k in KEEP if k in schema}
    if "properties" in schema:
        out["properties"] = {k: trim(v, k) for k, v in sorted(schema["properties"].items())}
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = trim(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = trim(schema["items"], name)
    return out


def main(argv: list[str]) -> int:
    path, version, source = argv
    with open(path, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    doc = {
        "source": source,
        "group": crd["spec"]["group"],
        "version": version,
        "kind": crd["spec"]["names"]["kind"],
        "schema": trim(found["schema"]["openAPIV3Schema"]),
    }
    json.dump(doc, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`kustomize build` for deploy/k8s, in a page of Python, for the tests.

No kustomize binary is installed by the project (kubectl's is not on every
machine, and the Debian one is years old), so the overlays are rendered
here: the subset of kustomize that deploy/k8s uses, namely `resources`
(files and directories), `namespace`, `images`, `patches` (strategic-merge
patch files; lists of named items, such as containers, merge by name) and a
`configMapGenerator` from files with `disableNameSuffixHash`. Anything else
in a kustomization.yaml is refused, so that a new feature there fails the
tests instead of being silently left out of what they check. (Checked to
render deploy/k8s exactly as `kubectl kustomize` 5.5 does when written.)
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "patches",
    "configMapGenerator",
    "generatorOptions",
}


class Unsupported(ValueError):
    """A kustomization uses something this renderer does not do."""


def load_documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def build(directory: Path) -> list[Manifest]:
    """The manifests `kustomize build directory` prints."""
    spec: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise Unsupported(f"{directory}: {sorted(unknown)}")
    manifests: list[Manifest] = []
    for entry in spec.get("resources", []):
        target = directory / entry
        manifests += build(target) if target.is_dir() else load_documents(target)
    manifests += _generated_config_maps(directory, spec)
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise Unsupported(f"{directory}: only `patches: - path:` is done, got {patch}")
        for document in load_documents(directory / patch["path"]):
            _apply_patch(manifests, document)
    for image in spec.get("images", []):
        _set_image(manifests, image)
    if "namespace" in spec:
        for manifest in manifests:
            manifest["metadata"]["namespace"] = spec["namespace"]
    return manifests


def _generated_config_maps(directory: Path, spec: dict[str, Any]) -> list[Manifest]:
    generators = spec.get("configMapGenerator", [])
    if generators and spec.get("generatorOptions") != {"disableNameSuffixHash": True}:
        raise Unsupported(f"{directory}: only generatorOptions.disableNameSuffixHash: true")
    made: list[Manifest] = []
    for generator in generators:
        if set(generator) != {"name", "files"}:
            raise Unsupported(f"{directory}: configMapGenerator takes name and files here")
        data: dict[str, str] = {}
        binary: dict[str, str] = {}
        for name in generator["files"]:
            content = (directory / name).read_bytes()
            try:
                data[Path(name).name] = content.decode()
            except UnicodeDecodeError:
                binary[Path(name).name] = base64.b64encode(content).decode()
        manifest: Manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"]},
        }
        if binary:
            manifest["binaryData"] = binary
        if data:
            manifest["data"] = data
        made.append(manifest)
    return made


def _apply_patch(manifests: list[Manifest], patch: Manifest) -> None:
    name = patch["metadata"]["name"]
    targets = [m for m in manifests if m["kind"] == patch["kind"] and m["metadata"]["name"] == name]
    if len(targets) != 1:
        raise Unsupported(f"a patch of {patch['kind']}/{name} matches {len(targets)} resources")
    _merge(targets[0], patch)


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, list) and _named(value) and _named(into.get(key)):
            by_name = {item["name"]: item for item in into[key]}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    into[key].append(copy.deepcopy(item))
        else:
            into[key] = copy.deepcopy(value)


def _named(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)


def _set_image(manifests: list[Manifest], image: dict[str, str]) -> None:
    if not set(image) <= {"name", "newName", "newTag"}:
        raise Unsupported(f"images: only name, newName and newTag, got {image}")
    for manifest in manifests:
        pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"

"""Reading declarative files (YAML or JSON; one or many documents) for plan, apply and policy test."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from control_plane.policy.documents import PolicyDocument

SUFFIXES = (".yaml", ".yml", ".json")
KINDS = ("Policy", "Connection", "ServiceIdentity", "PolicyTest")


class FileError(Exception):
    """A file cannot be used; the message names the file, the document and the field."""


@dataclass
class Bundle:
    """Every document found under the given paths, by kind (names unique within a kind)."""

    policies: dict[str, PolicyDocument] = field(default_factory=dict)
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    service_identities: dict[str, dict[str, Any]] = field(default_factory=dict)
    tests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (where, test case)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if path.is_file():
        return [path]
    raise FileError(f"{path}: no such file or directory")


def _documents(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise FileError(f"{path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            return data if isinstance(data, list) else [data]
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except (ValueError, yaml.YAMLError) as exc:
        raise FileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None


def _pointer(loc: tuple[int | str, ...]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def load(paths: list[Path]) -> Bundle:
    bundle = Bundle()
    for root in paths:
        for path in _files(root):
            for i, doc in enumerate(_documents(path)):
                where = f"{path} (document {i + 1})"
                if not isinstance(doc, dict):
                    raise FileError(f"{where}: a document must be a mapping with a `kind`")
                kind = doc.get("kind")
                name = doc.get("name")
                if kind not in KINDS:
                    raise FileError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
                if kind == "Policy":
                    try:
                        policy = PolicyDocument.model_validate(doc)
                    except ValidationError as exc:
                        problems = "; ".join(
                            f"{_pointer(tuple(e['loc']))}: {e['msg']}"
                            for e in exc.errors(include_input=False)
                        )
                        raise FileError(f"{where}: invalid policy: {problems}") from None
                    _unique(bundle.policies, policy.name, where, "policy")
                    bundle.policies[policy.name] = policy
                elif kind == "PolicyTest":
                    for j, case in enumerate(doc.get("tests") or []):
                        if not isinstance(case, dict):
                            raise FileError(f"{where}: tests[{j}] must be a mapping")
                        bundle.tests.append((f"{path}:{name or i + 1}:tests[{j}]", case))
                else:
                    if not isinstance(name, str) or not name:
                        raise FileError(f"{where}: a {kind} needs a name")
                    spec = {k: v for k, v in doc.items() if k != "kind"}
                    target = bundle.connections if kind == "Connection" else bundle.service_identities
                    _unique(target, name, where, kind)
                    target[name] = spec
    return bundle


def _unique(existing: dict[str, Any], name: str, where: str, what: str) -> None:
    if name in existing:
        raise FileError(f"{where}: {what} {name!r} is defined twice")

"""What the Dockerfile says about how the image runs (ENV, EXPOSE, VOLUME, ENTRYPOINT), read the way Docker reads it,
so tests can check the image's command and environment without a Docker daemon."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class ImageSpec:
    env: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[int] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, backslash continuations joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, arguments = (pending + line).partition(" ")
        found.append((instruction.upper(), arguments.strip()))
        pending = ""
    return found


def read_dockerfile(path: Path = DOCKERFILE) -> ImageSpec:
    spec = ImageSpec()
    for instruction, arguments in _instructions(path.read_text()):
        if instruction == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                spec.env[name] = value
        elif instruction == "EXPOSE":
            spec.exposed_ports += [int(port.split("/")[0]) for port in arguments.split()]
        elif instruction == "VOLUME":
            spec.volumes += json.loads(arguments) if arguments.startswith("[") else arguments.split()
        elif instruction == "ENTRYPOINT":
            spec.entrypoint = json.loads(arguments)  # the exec form: the image runs no shell
    return spec

"""Refuse a submitted app (FAB) whose code is not the code the node's operator installed.

Flower 1.42's SuperNode runs whatever app a run brings: ``--trusted-entities`` checks only
signatures of apps published through Flower's hub, and nothing pins an app by version or
hash. The node's operator did install the app, though (``pip install``), so the installed
distribution is the reference: every file of the FAB that Python could load (everything
but its ``pyproject.toml``, which ``flwr build`` rewrites, and Flower's ``.info/``
manifest) must be byte for byte the installed file at the same path.

The installed files come from the distribution's metadata, never from the FAB:

- a regular install: its ``RECORD`` (PEP 376/627), which lists every file with its
  SHA-256;
- an editable install (``pip install -e``): the source folder named in its
  ``direct_url.json`` (PEP 610), whose files are hashed.

The check runs in the node's warm launcher (:mod:`server.deployment.warm_executor`,
``--require-installed-app``), which the operator installed and the run cannot change:
a check inside the ClientApp would be code of the very FAB it is to judge. Standard
library only: the launcher imports this before it forks, and nothing of the app.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

# What a FAB holds besides the app's own files: rewritten or added by `flwr build`.
_NOT_CODE = ("pyproject.toml", ".info/")


class AppMismatch(RuntimeError):
    """The submitted app is not the installed one."""


def check_app(app_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`AppMismatch` unless ``app_dir``'s files are the installed app's.

    Parameters
    ----------
    app_dir : path
        The folder Flower unpacked the FAB into (the ``project_dir`` it loads the app
        from). Its ``pyproject.toml`` names the distribution (``[project].name``).
    """
    root = Path(app_dir)
    name = _project_name(root)
    installed = installed_digest(name)
    differing: list[str] = []
    for path in sorted(_app_files(root)):
        expected = installed(path)
        if expected != _sha256(root / path):
            differing.append(path if expected is not None else f"{path} (not installed)")
    if differing:
        shown = ", ".join(differing[:5])
        if len(differing) > 5:
            shown += f" and {len(differing) - 5} more"
        raise AppMismatch(
            f"refused: the submitted app differs from the {name!r} installed on this node "
            f"in {shown}; this node runs only the app its operator installed "
            "(warm launcher --require-installed-app)"
        )


def installed_digest(name: str) -> Callable[[str], str | None]:
    """Digest of the installed file at a relative path of distribution ``name``, or ``None``.

    Digests are urlsafe base64 of SHA-256 without padding, as in ``RECORD``.
    """
    # An `*.egg-info` left by a build in a folder on sys.path has neither RECORD hashes
    # nor direct_url.json: take the first installation that says what it installed.
    for dist in metadata.distributions(name=name):
        source = _editable_source(dist)
        if source is not None:  # hash only the paths asked for, not the whole source tree

            def from_source(path: str, source: Path = source) -> str | None:
                file = source / path
                return _sha256(file) if file.is_file() else None

            return from_source
        recorded = {
            file.as_posix(): file.hash.value
            for file in dist.files or []
            if file.hash is not None and file.hash.mode == "sha256"
        }
        if recorded:
            return recorded.get
    raise AppMismatch(f"refused: the submitted app {name!r} is not installed on this node")


def _editable_source(dist: metadata.Distribution) -> Path | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    info = json.loads(text)
    if not info.get("dir_info", {}).get("editable"):
        return None
    return Path(unquote(urlparse(info["url"]).path))


def _project_name(root: Path) -> str:
    try:
        config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
        return str(config["project"]["name"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
        raise AppMismatch(f"refused: {root} holds no pyproject.toml naming its project") from error


def _app_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files under ``root`` that are app content."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel_folder = Path(folder).relative_to(root).as_posix()
        for name in files:
            path = name if rel_folder == "." else f"{rel_folder}/{name}"
            if path.startswith(_NOT_CODE) or name.endswith(".pyc"):
                continue
            found.append(path)
    return found


def _sha256(path: Path) -> str:
    """The RECORD form of a digest: urlsafe base64 of SHA-256, no padding."""
    digest = hashlib.sha256(path.read_bytes()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

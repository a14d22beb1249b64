"""Install packages into the running interpreter's environment with uv, from the indexes, local
wheel folders and constraints that pip is configured with here (`pip config list`); with pip itself
where pip's configuration holds a setting uv would not honour the same way, or uv cannot be had or
fails.

uv unpacks and byte-compiles the wheels on every core: torch's CUDA build and its libraries (about
6 GB) install in well under a minute, against about three minutes for pip.

    python tools/install.py -e '.[dev]'
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

UV = "uv==0.13.9"
# pip's settings that say where packages come from -> uv's options
SOURCES = {
    "index-url": ["--index-url"],
    "extra-index-url": ["--extra-index-url"],
    "find-links": ["--find-links"],
    "constraint": ["--constraint", "--build-constraint"],  # pip applies it to build environments too
}
# pip's settings that change nothing uv installs
HARMLESS = {
    "cert",  # passed on as SSL_CERT_FILE or SSL_CERT_DIR
    "no-index",  # passed on as --no-index
    *("timeout", "default-timeout", "retries", "disable-pip-version-check", "no-input", "no-color"),
    *("progress-bar", "quiet", "verbose", "no-cache-dir", "cache-dir", "root-user-action"),
    "require-virtualenv",
}
TRUE = ("y", "yes", "t", "true", "on", "1")  # pip's strtobool
SECTIONS = (":env:", "install", "global")  # `pip config list`'s, first the one that wins


def pip(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], **kwargs)


def pip_settings(listing: str) -> dict[str, str]:
    """`pip config list`'s lines (`section.key=repr(value)`) as key -> value, as pip applies them:
    the environment's (`:env:`) over the files' `[install]` over `[global]`; empty ones ignored."""
    settings: dict[str, str] = {}
    by_rank: dict[str, int] = {}
    for line in listing.splitlines():
        name, sep, quoted = line.partition("=")
        section, _, key = name.rpartition(".")
        if not sep or section not in SECTIONS:
            continue
        value = " ".join(str(ast.literal_eval(quoted)).split())  # one line: several values, one space apart
        rank = SECTIONS.index(section)
        if value and rank <= by_rank.get(key, rank):
            settings[key], by_rank[key] = value, rank
    return settings


def uv_arguments(settings: dict[str, str]) -> list[str] | None:
    """uv's options for pip's `settings`, or None where one of them has no like in uv."""
    if set(settings) - set(SOURCES) - HARMLESS:
        return None
    arguments = []
    for key, options in SOURCES.items():
        for value in settings.get(key, "").split():
            value = os.path.expanduser(value) if key == "find-links" else value
            for option in options:
                arguments += [option, value]
    if settings.get("no-index", "").lower() in TRUE:
        arguments.append("--no-index")
    return arguments


def uv_environment(settings: dict[str, str]) -> dict[str, str]:
    """This environment without uv's own settings (pip would not read them), with pip's certificates."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("UV_")}
    if cert := settings.get("cert"):
        env["SSL_CERT_DIR" if Path(cert).is_dir() else "SSL_CERT_FILE"] = cert
    return env


def install_with_uv(packages: list[str]) -> bool:
    listing = pip("config", "list", capture_output=True, text=True)
    if listing.returncode != 0:
        return False
    try:
        settings = pip_settings(listing.stdout)
    except (ValueError, SyntaxError):
        return False
    arguments = uv_arguments(settings)
    if arguments is None:
        return False
    with tempfile.TemporaryDirectory() as folder:  # uv runs from here, not installed in the environment
        if pip("install", "--quiet", "--target", folder, UV).returncode != 0:
            return False
        command = [
            *(str(Path(folder, "bin", "uv")), "pip", "install", "--quiet", "--no-config"),
            *("--python", sys.executable),
            # like pip: the best version on any index, and .pyc files written now, not at each import
            *("--index-strategy", "unsafe-best-match", "--compile-bytecode"),
            *arguments,
            *packages,
        ]
        return subprocess.run(command, env=uv_environment(settings)).returncode == 0


def main(packages: list[str]) -> int:
    if install_with_uv(packages):
        return 0
    print("installing the packages with pip (uv could not be used here)", file=sys.stderr)
    return pip("install", "--quiet", *packages).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

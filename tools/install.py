"""Install packages into the running interpreter's environment with uv, from the indexes, local
wheel folders and constraints that pip is configured with here (`pip config list`); with pip itself
where uv cannot be had or fails.

uv unpacks and byte-compiles the wheels on every core: torch's CUDA build and its libraries (about
6 GB) install in well under a minute, against about three minutes for pip.

    python tools/install.py -e '.[dev]'
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

UV = "uv==0.13.9"
# pip's option -> uv's, for the options that say where packages come from
SOURCES = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def pip(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], **kwargs)


def pip_settings(listing: str) -> dict[str, str]:
    """`pip config list`'s lines (`section.key='value'`) as key -> value; the environment's
    (`:env:`) win over the files', as they do for pip."""
    settings: dict[str, str] = {}
    by_rank: dict[str, int] = {}
    for line in listing.splitlines():
        name, sep, quoted = line.partition("=")
        section, _, key = name.rpartition(".")
        if not sep or section not in (":env:", "global", "install"):
            continue
        rank = (":env:", "install", "global").index(section)
        if rank <= by_rank.get(key, rank):
            settings[key], by_rank[key] = " ".join(shlex.split(quoted)), rank
    return settings


def uv_arguments(settings: dict[str, str]) -> list[str]:
    """uv's options for the package sources and constraints in pip's `settings`."""
    arguments = []
    for key, option in SOURCES.items():
        for value in settings.get(key, "").split():
            arguments += [option, value]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        arguments.append("--no-index")
    return arguments


def install_with_uv(packages: list[str]) -> bool:
    if pip("install", "--quiet", UV).returncode != 0:
        return False
    listing = pip("config", "list", capture_output=True, text=True).stdout
    settings = pip_settings(listing)
    env = dict(os.environ)
    if "cert" in settings:
        env.setdefault("SSL_CERT_FILE", settings["cert"])
    command = [
        *(sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", sys.executable),
        # like pip: the best version on any index, and .pyc files written now, not at each import
        *("--index-strategy", "unsafe-best-match", "--compile-bytecode"),
        *uv_arguments(settings),
        *packages,
    ]
    return subprocess.run(command, env=env).returncode == 0


def main(packages: list[str]) -> int:
    if install_with_uv(packages):
        return 0
    print("uv could not install the packages; installing them with pip instead", file=sys.stderr)
    return pip("install", "--quiet", *packages).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

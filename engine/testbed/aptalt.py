"""Download Debian packages from newer suites without touching the system's apt state.

The machine's own apt sources name the mirror; we reuse the same URIs and keyring with
other suites (sid for the newest kernel, <codename>-backports) through a private
APT_CONFIG whose lists and archives live in the cache. Nothing is installed: packages are
only downloaded (`apt-get download`) and extracted by the caller.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vfio_scenario.errors import EnvironmentProblem
from vfio_scenario.testbed.paths import sub_dir

#: Suites the private configuration offers: newest kernel first.
EXTRA_SUITES = ("sid",)


@dataclass(frozen=True)
class AptSource:
    """One apt source of the system: mirror URI, suite and keyring ("" when none)."""

    uri: str
    suite: str
    keyring: str


def _deb822_sources(text: str) -> list[AptSource]:
    found: list[AptSource] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                found.append(AptSource(uri, suite, fields.get("signed-by", "")))
    return found


def _one_line_sources(text: str) -> list[AptSource]:
    found: list[AptSource] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
        if not match:
            continue
        signed = re.search(r"signed-by=(\S+)", match.group(1) or "")
        found.append(AptSource(match.group(2), match.group(3), signed.group(1) if signed else ""))
    return found


def system_sources() -> list[AptSource]:
    """Every `deb` source in /etc/apt (deb822 .sources files and one-line lists)."""
    found: list[AptSource] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        found += _deb822_sources(Path(path).read_text())
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if os.path.exists(path):
            found += _one_line_sources(Path(path).read_text())
    return found


def main_archive() -> AptSource:
    """The system's main archive: a source whose suite is the release codename itself."""
    sources = system_sources()
    for source in sources:
        if "-" not in source.suite and "/" not in source.suite:
            return source
    raise EnvironmentProblem("no Debian archive found in /etc/apt sources "
                             f"({len(sources)} sources read); cannot fetch Debian packages")


def _codename(archive: AptSource) -> str:
    return archive.suite


class PrivateApt:
    """apt-get with a private configuration under the cache (lists, archives, sources)."""

    def __init__(self) -> None:
        self.root = sub_dir("apt")
        archive = main_archive()
        suites = [*EXTRA_SUITES, f"{_codename(archive)}-backports"]
        options = f"[signed-by={archive.keyring}] " if archive.keyring else ""
        lines = [f"deb {options}{archive.uri} {suite} main" for suite in suites]
        self._write_if_changed(self.root / "sources.list", "\n".join(lines) + "\n")
        for name in ("lists/partial", "cache/archives/partial"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        config = "\n".join([
            f'Dir::Etc::SourceList "{self.root / "sources.list"}";',
            'Dir::Etc::SourceParts "/nonexistent";',
            f'Dir::State::Lists "{self.root / "lists"}";',
            f'Dir::Cache "{self.root / "cache"}";',
            'APT::Sandbox::User "root";' if os.geteuid() == 0 else "",
            'Acquire::Check-Valid-Until "false";',
            'Acquire::Languages "none";',
            "",
        ])
        self.config = self.root / "apt.conf"
        self._write_if_changed(self.config, config)

    @staticmethod
    def _write_if_changed(path: Path, text: str) -> None:
        if not path.exists() or path.read_text() != text:
            path.write_text(text)

    def _apt(self, *argv: str, cwd: Path | None = None) -> str:
        env = {**os.environ, "APT_CONFIG": str(self.config), "LC_ALL": "C"}
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise EnvironmentProblem(f"{' '.join(argv)} failed ({proc.returncode}): "
                                     f"{proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def update(self, max_age_s: float = 6 * 3600) -> None:
        """Refresh the private package lists when they are older than `max_age_s`."""
        import time
        lists = list((self.root / "lists").glob("*Packages*"))
        if lists and time.time() - min(p.stat().st_mtime for p in lists) < max_age_s:
            return
        self._apt("apt-get", "-q", "update")

    def package_names(self, pattern: str) -> list[str]:
        """Package names matching the regular expression `pattern` (apt-cache pkgnames)."""
        out = self._apt("apt-cache", "pkgnames")
        rx = re.compile(pattern)
        return sorted(name for name in out.split() if rx.fullmatch(name))

    def candidate(self, package: str) -> str:
        """The version apt would pick for `package` ("" when none)."""
        out = self._apt("apt-cache", "policy", package)
        match = re.search(r"Candidate:\s*(\S+)", out)
        return "" if not match or match.group(1) == "(none)" else match.group(1)

    def depends(self, package: str) -> list[str]:
        """Names in the Depends field of `package`'s candidate version."""
        out = self._apt("apt-cache", "show", "--no-all-versions", package)
        match = re.search(r"^Depends:(.*)$", out, re.MULTILINE)
        if not match:
            return []
        return [re.split(r"[\s(:]", alt.strip())[0]
                for dep in match.group(1).split(",") for alt in dep.split("|")[:1]]

    def download(self, package: str, dest: Path) -> Path:
        """Download `package`'s candidate .deb into `dest` (kept when already there)."""
        dest.mkdir(parents=True, exist_ok=True)
        version = self.candidate(package)
        if not version:
            raise EnvironmentProblem(f"no candidate for {package} in the private apt lists")
        pattern = f"{package}_{version.split(':')[-1]}_*.deb"
        existing = sorted(dest.glob(pattern))
        if existing:
            return existing[0]
        self._apt("apt-get", "-q", "download", f"{package}={version}", cwd=dest)
        got = sorted(dest.glob(pattern))
        if not got:
            raise EnvironmentProblem(f"apt-get download {package} left no {pattern} in {dest}")
        return got[0]


def extract_deb(deb: Path, dest: Path) -> None:
    """Unpack the data of `deb` into `dest` (dpkg-deb -x)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()}")

"""Artifact storage: one root directory, deterministic paths, atomic writes, content hashes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT_ENV = "CALIB_ASSETS_ROOT"
DEFAULT_ROOT = "artifacts"


def artifact_root() -> Path:
    """The directory holding every artifact (env CALIB_ASSETS_ROOT, default ./artifacts)."""
    return Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT)).resolve()


def temporary_prefix(name: str, kind: str = "tmp") -> str:
    """The name prefix of a temporary sibling of `name`: it names the process that owns it (pid@host), so
    that one left by a killed process is recognized and removed (`remove_stale_temporaries`)."""
    return f".{name}.{kind}-{os.getpid()}@{socket.gethostname()}."


# .NAME.tmp-PID@HOST.XXXXXXXX (a directory from mkdtemp) or .NAME.old-PID@HOST. (a replaced directory)
_TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)-(?P<pid>\d+)@(?P<host>[A-Za-z0-9.-]+?)\.[a-z0-9_]{0,8}$")
# before owners were named: .NAME.tmp-XXXXXXXX; removed only once older than any run can last
_LEGACY_TEMPORARY = re.compile(r"^\..+\.tmp-[a-z0-9_]{8}$")
LEGACY_TEMPORARY_AGE_S = 12 * 3600  # dagster.yaml's run_monitoring.max_runtime_seconds


LOCK_SUFFIX = ".lock"


class ArtifactBeingWritten(RuntimeError):
    """Another process is writing the same artifact."""


@contextlib.contextmanager
def sole_writer(final: Path) -> Iterator[None]:
    """Hold the right to write `final`, or raise ArtifactBeingWritten naming the process that holds it: two
    workers (on any nodes of a shared file system with locks: NFSv4, Lustre -o flock, CephFS, GPFS) never
    write one partition at once. The lock is the kernel's, so it ends with its process, however that ends.
    Its file, `.NAME.lock` beside the artifact, is removed on release; one left by a killed process is
    taken over by the next writer, or removed by `remove_stale_temporaries`."""
    path = final.parent / f".{final.name}{LOCK_SUFFIX}"
    handle = _locked(path)
    try:
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiter then finds its file gone and starts over
        handle.close()


def _locked(path: Path):
    """An open, flock-ed handle on `path` that is still the file at `path` (another writer may have removed
    the one this process opened, on release)."""
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            raise ArtifactBeingWritten(f"{path.parent / path.name[1:-len(LOCK_SUFFIX)]} is being written by another "
                                       f"process ({_describe(holder)}); a partition has one writer at a time: "
                                       "wait for that run to end") from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                handle.seek(0)
                return handle
        except FileNotFoundError:
            pass
        handle.close()


@contextlib.contextmanager
def atomic_dir(final: Path, *, sealed: bool = True, exclusive: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` in one rename.

    A killed or failed write leaves `final` as it was (old content or absent), never half written; the
    temporary it leaves behind names its process and is removed by the next run. `sealed`: the size and
    sha256 of every file written are recorded in CONTENTS_FILE (`seal`), so that a later change to any of
    them, the manifest included, is found (`verify_contents`). `exclusive`: one writer at a time
    (`sole_writer`); off for folders outside the artifact root, where no lock file should appear.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with sole_writer(final) if exclusive else contextlib.nullcontext():
        with _replacing(final, sealed) as tmp:
            yield tmp


@contextlib.contextmanager
def _replacing(final: Path, sealed: bool) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(final.name), dir=final.parent))
    try:
        yield tmp
        if sealed:
            seal(tmp)
        old = None
        if final.exists():
            old = final.with_name(temporary_prefix(final.name, "old"))
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


CONTENTS_FILE = "contents.json"


class CorruptArtifact(ValueError):
    """An artifact's files no longer match what was written."""


def _content_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CONTENTS_FILE)


def seal(directory: Path) -> dict[str, Any]:
    """Record the size and sha256 of every file under `directory` in its CONTENTS_FILE."""
    directory = Path(directory)
    files = {path.relative_to(directory).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_files([path])}
             for path in _content_files(directory)}
    contents = {"version": 1, "files": files}
    write_json(directory / CONTENTS_FILE, contents)
    return contents


def is_sealed(directory: Path) -> bool:
    return (Path(directory) / CONTENTS_FILE).is_file()


def verify_contents(directory: Path) -> list[str]:
    """What no longer matches the seal, one line per file (sizes first, so a truncation costs no hashing);
    [] when all files match. Files added after the seal (e.g. a set's descriptors) are not its business.
    An unsealed directory (written by an earlier version) gives one line saying so."""
    directory = Path(directory)
    try:
        recorded = read_json(directory / CONTENTS_FILE)["files"]
    except FileNotFoundError:
        return [f"{directory / CONTENTS_FILE} is missing (written by an earlier version, or removed)"]
    except (ValueError, KeyError, TypeError):
        return [f"{directory / CONTENTS_FILE} is not a valid contents record"]
    problems = []
    for name, expected in recorded.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, {expected['bytes']} were written")
    for name, expected in recorded.items():
        path = directory / name
        if path.is_file() and path.stat().st_size == expected["bytes"] and sha256_files([path]) != expected["sha256"]:
            problems.append(f"{path} was changed after it was written (sha256 differs)")
    return problems


def check_contents(directory: Path, what: str, *, rebuild_hint: str, allow_unsealed: bool = True) -> None:
    """Raise CorruptArtifact naming `what` (asset and partition), the files and how to rebuild, unless the
    directory matches its seal (or, with `allow_unsealed`, has none: an earlier version's artifact, which
    the caller checks its own way)."""
    if allow_unsealed and not is_sealed(directory):
        return
    problems = verify_contents(directory)
    if problems:
        raise CorruptArtifact(f"{what} is corrupt: {'; '.join(problems)}; {rebuild_hint}")


class UnsafeOutput(ValueError):
    """An export's output folder that cannot, or must not, be written."""


def check_output_folder(out: Path, *, protected: Iterable[Path] = (), replace: bool = False,
                        marker: str | None = None, flag: str = "--force") -> Path:
    """The resolved `out` of an export, checked before any work: not a file, not a protected folder (the
    artifact root, an export's own inputs), not one that holds or lies inside one, and writable (a
    temporary folder is made and removed beside it). With `marker`, the export replaces the whole folder,
    so an existing non-empty `out` is accepted only with `replace` and only if an earlier export wrote it:
    it holds `marker` and no file the marker's export did not write."""
    out = Path(out).expanduser().resolve()
    if out == out.parent:
        raise UnsafeOutput(f"--out {str(out)!r} is the file system's root; give a folder to write the export to")
    if out.exists() and not out.is_dir():
        raise UnsafeOutput(f"--out {str(out)!r} is a file; give a new or empty folder")
    for folder in (Path(p).resolve() for p in protected):
        if out == folder or folder.is_relative_to(out) or out.is_relative_to(folder):
            raise UnsafeOutput(f"--out {str(out)!r} is, holds or lies inside {str(folder)!r}, which calib-assets "
                               "keeps; give a folder outside it")
    if marker and Path.cwd().resolve().is_relative_to(out):
        raise UnsafeOutput(f"--out {str(out)!r} is or holds the current folder, which the export would replace "
                           "as a whole; give a new folder, e.g. --out ./exported")
    if marker and out.is_dir() and any(out.iterdir()):
        _check_replaceable(out, marker, replace, flag)
    _check_writable(out)
    return out


def _check_replaceable(out: Path, marker: str, replace: bool, flag: str) -> None:
    if not (out / marker).is_file():
        foreign = sorted(p.name for p in out.iterdir())[:3]
        raise UnsafeOutput(f"--out {str(out)!r} holds files calib-assets did not write ({', '.join(foreign)}); "
                           f"{flag} replaces only a folder of an earlier export: give a new or empty folder")
    if not is_sealed(out):
        raise UnsafeOutput(f"--out {str(out)!r} holds an export of an earlier version, which recorded no list of "
                           "its files: remove it yourself, or give another folder")
    written = set(read_json(out / CONTENTS_FILE)["files"]) | {CONTENTS_FILE}
    foreign = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                     if p.is_file() and str(p.relative_to(out)) not in written)
    if foreign:
        raise UnsafeOutput(f"--out {str(out)!r} is an earlier export with files added since "
                           f"({', '.join(foreign[:3])}); "
                           f"{flag} would delete them: move them out first, or give another folder")
    if not replace:
        raise UnsafeOutput(f"--out {str(out)!r} holds an earlier export; pass {flag} to replace it")


def _check_writable(out: Path) -> None:
    existing = next(p for p in [out, *out.parents] if p.exists())
    if not existing.is_dir():
        raise UnsafeOutput(f"--out {str(out)!r} cannot be created: {str(existing)!r} is a file")
    try:
        Path(tempfile.mkdtemp(prefix=temporary_prefix("write-check"), dir=existing)).rmdir()
    except OSError as error:
        raise UnsafeOutput(f"--out {str(out)!r} cannot be written: {error.strerror} in {str(existing)!r}") from None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def stale_temporaries(root: Path) -> list[Path]:
    """Temporaries under `root` whose process has ended (on this host), and those of an earlier version
    that are older than any run can last. A live process's, and another host's, are left alone."""
    stale, host, now = [], socket.gethostname(), time.time()
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = Path(directory) / name
            if match := _TEMPORARY.match(name):
                if match["host"] == host and not process_alive(int(match["pid"])):
                    stale.append(path)
            elif name.startswith(".") and name.endswith(LOCK_SUFFIX) and name != LOCK_FILE and _writer_gone(path, host):
                stale.append(path)
            elif _LEGACY_TEMPORARY.match(name) and now - path.lstat().st_mtime > LEGACY_TEMPORARY_AGE_S:
                stale.append(path)
        names[:] = [n for n in names if Path(directory) / n not in stale]
    return stale


def _writer_gone(lock: Path, host: str) -> bool:
    """Whether the `sole_writer` lock file names a process of this host that has ended."""
    try:
        holder = json.loads(lock.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return False
    return holder.get("host") == host and isinstance(holder.get("pid"), int) and not process_alive(holder["pid"])


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove what `stale_temporaries` finds; return it."""
    stale = stale_temporaries(root)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


class RootBusy(RuntimeError):
    pass


STUDY_FILE = "study.json"


class RootOfAnotherStudy(ValueError):
    pass


def check_root_study(root: Path, study: str, *, claim: bool) -> None:
    """One study per artifact root: its tasks, baselines, warehouse and report are the study's own. Raise
    RootOfAnotherStudy if `root` holds another study; with `claim`, record `study` in a root that holds
    none yet (a writer's first run)."""
    path = Path(root) / STUDY_FILE
    if path.is_file():
        holder = read_json(path).get("study")
        if holder != study:
            raise RootOfAnotherStudy(f"artifact root {root} holds study {holder!r}; give study {study!r} a root of "
                                     "its own (--root DIR, or CALIB_ASSETS_ROOT)")
    elif claim:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"study": study, "since": time.strftime("%Y-%m-%d %H:%M:%S")})


LOCK_FILE = ".calib-assets-run.lock"


@contextlib.contextmanager
def hold_root(root: Path, study: str) -> Iterator[None]:
    """Hold the artifact root for this process, or raise RootBusy naming the process that holds it. The
    lock is the kernel's (flock): it ends with its process, however that ends."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "{}"
            raise RootBusy(f"artifact root {root} is in use by another `calib-assets run` ({_describe(holder)}); "
                           "wait for it to finish or stop it, or give this run another --root") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "study": study,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder or "{}")
    except json.JSONDecodeError:
        return "unknown process"
    study = f", study {info['study']!r}" if "study" in info else ""
    return f"pid {info.get('pid')} on {info.get('host')}{study}, since {info.get('since')}"


def write_json(path: Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_bytes(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path], chunk_size: int = 1 << 20) -> str:
    """Hash the contents of files in the given order (names are not part of the hash)."""

    def chunks() -> Iterator[bytes]:
        for path in paths:
            with open(path, "rb") as handle:
                while block := handle.read(chunk_size):
                    yield block

    return sha256_bytes(chunks())


def sha256_json(obj: Any) -> str:
    return sha256_bytes([json.dumps(obj, sort_keys=True, default=str).encode()])


def short(fingerprint: str, n: int = 12) -> str:
    return fingerprint[:n]

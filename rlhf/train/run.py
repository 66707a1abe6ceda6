"""A run's output folder: what is in it, and the rules that keep finished work safe.

Layout of ``output_dir``::

    config.yaml          the resolved config (written before any work)
    metrics.jsonl        one JSON object per logged step
    checkpoint-<step>/   resumable state; complete iff it holds trainer_state.json
    final/               the trained model (from_pretrained-loadable, safetensors, tokenizer)
    summary.json         final metrics; its presence marks the run as finished

A finished run (summary.json present) is never overwritten: starting another run into the same
folder is an error. An unfinished one (checkpoints, no summary) is resumed with
``train.resume_from=auto`` (the default).

One run per folder: :func:`prepare_output_dir` takes an exclusive ``flock`` on the folder itself
(no lock file), held until the process ends or :func:`release_run_lock`; the kernel drops it
when the holder dies, even by ``kill -9``, so a lock can never be stale. A second run into the
folder is refused naming the holder's pid. A folder that is not empty and holds no run
(no config.yaml of one) is refused before anything is deleted or written in it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

__all__ = ["RunDirError", "prepare_output_dir", "acquire_run_lock", "release_run_lock", "release_all_run_locks",
           "check_run_folder",
           "check_pipeline_folder",
           "list_checkpoints", "latest_checkpoint",
           "as_os_error", "save_safetensors", "file_mode", "normalize_modes", "MetricsWriter",
           "write_json_atomic", "write_jsonl_atomic",
           "atomic_dir", "is_finished",
           "publish_model", "remove_debris", "fsync_tree", "append_jsonl_durable"]

_CKPT = re.compile(r"^checkpoint-(\d+)$")
# Temporary names this module, rlhf.models.load.save_model and the trainer write, and leave
# behind when the process is killed mid-write: ``final.tmp-<pid>``, ``.final.tmp-<pid>[.tmp-<pid>]``,
# ``.metrics.jsonl.tmp-<pid>``, ``final.old-<pid>``, ``checkpoint-<step>.tmp``, ``config.yaml.tmp``
# and DPO's ``reference_logps.safetensors.tmp``.
_DEBRIS = re.compile(r"^(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$"
                     r"|^(?:checkpoint-\d+|config\.yaml|reference_logps\.safetensors)\.tmp$")


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked (finished run, or unfinished without resume)."""

    #: False on the processes that did not decide (torchrun ranks > 0): the CLI prints nothing
    #: there, so a refused run says its one line once (rank 0's).
    echo: bool = True


# What rlhf writes into a run folder before its config.yaml: the notebook API's copies of
# in-memory models and data (rlhf/api.py).
_OWN = {"inputs"}


def check_run_folder(output_dir: str | Path) -> None:
    """Refuse a folder that is not empty and holds no run (this module's ``config.yaml`` with
    an ``output_dir`` key; or only what rlhf writes before it, ``inputs/``), before anything
    is deleted or written in it."""
    d = Path(output_dir)
    if not d.is_dir():
        return
    entries = sorted(p.name for p in d.iterdir())
    if _is_run_config(d / "config.yaml") or all(n in _OWN for n in entries):
        return
    shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
    raise RunDirError(f"{d} is not empty and holds no rlhf run (no run config.yaml; it holds {shown}): "
                      "choose a new or empty output_dir (nothing was deleted or written there)")


def check_pipeline_folder(output_dir: str | Path, stage_folders: list[str]) -> None:
    """:func:`check_run_folder` for a pipeline's folder: accepted when new, empty, holding
    ``pipeline.json``, or holding only its stage folders and temporary names."""
    d = Path(output_dir)
    if not d.is_dir() or (d / "pipeline.json").is_file():
        return
    entries = sorted(p.name for p in d.iterdir())
    odd = [n for n in entries if n not in stage_folders and not _DEBRIS.match(n)]
    if odd:
        shown = ", ".join(odd[:5]) + (f", ... ({len(odd)} entries)" if len(odd) > 5 else "")
        raise RunDirError(f"{d} is not empty and holds no rlhf pipeline (no pipeline.json; it holds {shown}): "
                          "choose a new or empty output folder (nothing was deleted or written there)")


def _is_run_config(path: Path) -> bool:
    if not path.is_file():
        return False
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return False
    return isinstance(data, dict) and "output_dir" in data


_LOCKS: dict[str, int] = {}  # resolved folder -> the open descriptor holding its flock


def acquire_run_lock(output_dir: str | Path) -> bool:
    """Take the folder's exclusive lock for this process (re-entrant within the process). Returns
    whether this call took it (False: this process held it already, or it cannot be taken here),
    so that a caller releases only a lock of its own.

    Raises :class:`RunDirError` naming the holder when another process has it. Where the file
    system has no ``flock`` (some network mounts), says so once and goes on unlocked."""
    d = Path(output_dir)
    key = str(d.resolve())
    if key in _LOCKS:
        return False
    try:
        import fcntl
    except ImportError:  # not POSIX
        return False
    fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _lock_holder(d)
        raise RunDirError(f"{d} is in use by another run ({holder or 'another process'} holds its lock): "
                          "wait for it to end, or choose another output_dir (the lock goes with that "
                          "process, even if it is killed)") from None
    except OSError as e:
        os.close(fd)
        import logging
        logging.getLogger("rlhf").warning("%s: no lock on the run folder (flock: %s): make sure no "
                                          "other run writes into it", d, e.strerror)
        return False
    _LOCKS[key] = fd
    return True


def release_run_lock(output_dir: str | Path) -> None:
    fd = _LOCKS.pop(str(Path(output_dir).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor drops the flock


def release_all_run_locks() -> None:
    """Drop every lock this process holds: a command run in-process ended (the CLI calls this
    after each stage or tool, whether it finished or failed), so its folders are free again."""
    for key in list(_LOCKS):
        os.close(_LOCKS.pop(key))


def _lock_holder(d: Path) -> str | None:
    """``pid N`` of the process holding the folder's flock, from /proc/locks (Linux), if found."""
    try:
        st = os.stat(d)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        f = line.split()
        if len(f) >= 6 and f[1] == "FLOCK" and f[5] == want:
            return f"pid {f[4]}"
    return None


def is_finished(output_dir: str | Path) -> bool:
    return (Path(output_dir) / "summary.json").is_file()


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Half-written ones (``*.tmp*``) are ignored."""
    out: list[tuple[int, Path]] = []
    d = Path(output_dir)
    if not d.is_dir():
        return out
    for p in d.iterdir():
        m = _CKPT.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def prepare_output_dir(output_dir: str | Path, resume_from: str) -> Path | None:
    """Check the folder and return the checkpoint to resume from (or None for a fresh start).

    Raises RunDirError for a finished run, an unfinished one when resume_from='none', a folder
    that holds something else (:func:`check_run_folder`) or one another run holds
    (:func:`acquire_run_lock`, taken here and kept). Nothing is deleted or written before these
    checks pass.
    """
    d = Path(output_dir)
    _refuse_finished(d)
    check_run_folder(d)
    ckpt: Path | None = None
    if resume_from not in ("auto", "none"):
        ckpt = Path(resume_from)
        if not (ckpt / "trainer_state.json").is_file():
            raise RunDirError(f"train.resume_from={resume_from}: not a complete checkpoint "
                              f"(no trainer_state.json in it)")
    latest = latest_checkpoint(d)
    if latest is not None and resume_from == "none":
        raise RunDirError(
            f"{d} holds an unfinished run ({latest.name}). Pass train.resume_from=auto to continue "
            f"it, or choose another output_dir.")
    d.mkdir(parents=True, exist_ok=True)
    acquire_run_lock(d)
    try:  # again under the lock: the run that held it may have just finished
        _refuse_finished(d)
    except RunDirError:
        release_run_lock(d)
        raise
    if ckpt is not None:
        return ckpt
    latest = latest_checkpoint(d)
    remove_debris(d)
    if latest is None and (d / "metrics.jsonl").exists():
        # A run that died before its first checkpoint: nothing to resume, restart cleanly.
        (d / "metrics.jsonl").unlink()
    return latest if resume_from == "auto" else None


def _refuse_finished(d: Path) -> None:
    if is_finished(d):
        raise RunDirError(
            f"{d} already holds a finished run (summary.json exists). Finished outputs are never "
            f"overwritten: choose another output_dir, or delete this one yourself.")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes nothing in the folder yet: its own names are stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours to signal
        return True
    return True


def remove_debris(folder: str | Path) -> list[str]:
    """Remove what a killed run of this folder left behind (the temporary names above), unless
    the process that named it is still alive. Called when a run starts or resumes. Returns the
    removed names."""
    d = Path(folder)
    if not d.is_dir():
        return []
    removed = []
    for p in d.iterdir():
        m = _DEBRIS.match(p.name)
        if not m or (m.group("pid") and _pid_alive(int(m.group("pid")))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return sorted(removed)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """Flush every file under ``path`` and every folder (``path`` included) to disk, so that a
    rename that publishes it cannot survive a power loss while the contents do not."""
    root = Path(path)
    if root.is_dir():
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                _fsync_path(Path(dirpath) / f)
            _fsync_path(Path(dirpath))
    elif root.exists():
        _fsync_path(root)


def _fsync_parent(path: Path) -> None:
    """Persist a rename: the parent folder's entry must reach the disk too."""
    try:
        _fsync_path(path.parent if str(path.parent) else Path("."))
    except OSError as e:
        if e.errno not in (22, 95):  # EINVAL / EOPNOTSUPP: a file system without directory fsync
            raise


_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter failed", "file write failed")


def as_os_error(e: BaseException, path: str | Path) -> OSError | None:
    """An I/O failure reported by safetensors' Rust writer (``SafetensorError: Error while
    serializing: I/O error: No space left on device (os error 28)``, not an OSError) as the
    OSError it is, naming ``path``; None for any other error. The CLI prints an OSError as one
    line with its errno (ENOSPC, EFBIG, EDQUOT, EACCES...)."""
    if isinstance(e, OSError):
        return _name_path(e, Path(path))
    if isinstance(e, RuntimeError) and any(k in str(e) for k in _TORCH_WRITE_FAILED):
        # torch.save's C++ writer reports a failed write without its errno ("unexpected pos
        # 704 vs 598"): a full disk when the disk is (nearly) full, else an I/O error, which
        # covers a file-size limit or quota.
        import errno as errno_mod
        try:
            full = shutil.disk_usage(Path(path) if Path(path).is_dir() else Path(path).parent).free < 1 << 20
        except OSError:
            full = False
        code = errno_mod.ENOSPC if full else errno_mod.EIO
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        return OSError(code, f"{os.strerror(code)} while torch.save wrote it (disk full, quota or file-size "
                             f"limit? torch says: {first})", str(path))
    m = _OS_ERROR.search(str(e)) if type(e).__name__ == "SafetensorError" else None
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code), str(path))


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o644 with the usual 022;
    0o600 with 077). Every file a run writes gets it: safetensors' writer alone would create its
    files 0600 while config and tokenizer files are 0644."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def normalize_modes(folder: str | Path) -> None:
    """Give every ``*.safetensors`` file under ``folder`` :func:`file_mode` (see there)."""
    mode = file_mode()
    for f in Path(folder).rglob("*.safetensors"):
        if f.is_file() and not f.is_symlink() and (f.stat().st_mode & 0o777) != mode:
            os.chmod(f, mode)


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` whose I/O failures (a full disk, a file-size limit) are
    raised as OSErrors naming the file (:func:`as_os_error`), and whose file gets the mode of
    every other output file (:func:`file_mode`)."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as e:
        err = as_os_error(e, path)
        if err is None:
            raise
        raise err from None
    os.chmod(path, file_mode())


def _name_path(e: OSError, path: Path) -> OSError:
    """OSErrors from write()/fsync() carry no file name: attach the one being written."""
    if e.filename is None:
        e.filename = str(path)
    return e


def append_jsonl_durable(path: str | Path, obj: Any) -> None:
    """Append one JSON line and flush it to disk (a small record that must not be lost)."""
    path = Path(path)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj, default=_clean) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _name_path(e, path) from None


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _write_atomic(path: Path, write: Any, encoding: str | None = None) -> None:
    """``write(f)`` into ``.<name>.tmp-<pid>``, fsync it, rename it over ``path``, fsync the
    folder. On failure the temporary file is removed and the OSError names ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_parent(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _name_path(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    def write(f: Any) -> None:
        json.dump(obj, f, indent=2, default=_clean)
        f.write("\n")
    _write_atomic(Path(path), write)


def write_jsonl_atomic(path: str | Path, rows: Any) -> Path:
    """One JSON object per line (UTF-8), written to a temporary file and renamed into place,
    so a reader never sees half a file. Creates the parent folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f: Any) -> None:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    _write_atomic(path, write, encoding="utf-8")
    return path


class atomic_dir:
    """Write a folder under a temporary name, then rename it into place.

    ``with atomic_dir(final_path) as tmp: ...write into tmp...``. If the block raises (or the
    process dies), ``final_path`` is untouched and the temporary folder is removed (or ignored
    by :func:`list_checkpoints` and removed by :func:`remove_debris` after a crash). Every file
    and folder is flushed to disk before the rename, and the parent folder after it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                _name_path(exc, self.path)
            return
        try:
            fsync_tree(self.tmp)
            if self.path.exists():
                # Same step written again (e.g. a resumed run re-saving): replace the old copy.
                old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
                self.path.rename(old)
                self.tmp.rename(self.path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                self.tmp.rename(self.path)
            _fsync_parent(self.path)
        except OSError as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise _name_path(e, self.path) from None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def check_folder_weights(folder: str | Path) -> None:
    """Every tensor of every ``*.safetensors`` file in a model folder (and its ``adapter/``)
    finite, read one tensor at a time; else NonFiniteError naming the file and tensor."""
    from safetensors import safe_open

    from rlhf.train.finite import check_finite

    d = Path(folder)
    for f in sorted(d.glob("*.safetensors")) + sorted(d.glob("adapter/*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                check_finite(st.get_tensor(name), f"{f}: tensor {name}")


def publish_model(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` (e.g. a multi-round run's ``final/``) a loadable copy of the model folder
    ``src`` (an inner run's ``final/``), atomically. Files are hard-linked where the file system
    allows (no extra disk; deleting ``src`` later leaves ``dst`` whole), copied otherwise;
    checkpoints and temporary files are left out. A folder whose weights hold a NaN or inf is
    refused (:class:`~rlhf.train.guards.NonFiniteError`) before anything is written."""
    check_folder_weights(src)
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns("checkpoint-*", "*.tmp-*"))
    return Path(dst)


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl (main process only).

    On resume, lines logged after the checkpoint's step are dropped first, so the file shows
    each step once, as the resumed run computes it.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed process
                if rec.get("step", 0) <= resume_step:
                    keep.append(line)
            # Rewritten atomically: a kill here must not lose the steps before the checkpoint.
            _write_atomic(self.path, lambda f: f.write("".join(k + "\n" for k in keep)))
        self._f = open(self.path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

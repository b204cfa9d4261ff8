"""Ray Tune state that `raysearch resume` unpickles only when this user's driver wrote it.

`Tuner.restore` unpickles `tuner.pkl`, the hex-encoded pickles inside the newest `experiment_state-*.json`,
the searcher state (`search_gen_state-*.json` and `searcher-state-*.pkl` are both pickles), callback states
and each trial's `error.pkl` (read when the results are collected), so a study folder from someone else
could run any code. raysearch keeps a copy of each of those files, as written by its own driver, in the
study's `signed/` folder: content-addressed blobs plus a manifest of their SHA-256 digests, authenticated
with HMAC-SHA256 under a per-user key (`$RAYSEARCH_KEY_FILE`, default `~/.config/raysearch/signing.key`,
created with mode 0600).

Signing happens in the driver loop, right after each experiment snapshot (`SignSnapshots.get_state`, which
Tune calls as the last step of writing a snapshot to the driver's staging folder), from those freshly
written files rather than from the study folder, which Tune's syncer copies to in the background. Blobs are
written before the manifest that names them and the manifest is replaced atomically, so a driver killed at
any moment leaves the previous complete, signed snapshot. Before `resume` loads anything it checks the
manifest and the blobs, then puts the signed content back into the experiment folder: a file that differs
(written after the last signature, or changed by someone else) is replaced, and a state file the manifest
does not name is removed, so Ray restores from the last signed snapshot, at most one snapshot interval old.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from ray.tune import Callback

from raysearch.core.files import write_bytes_atomic
from raysearch.core.layout import StudyFolder, study_dir_of
from raysearch.errors import ConfigError

KEY_VARIABLE = "RAYSEARCH_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/raysearch/signing.key")
MANIFEST_FILE = "manifest.json"
BLOBS_DIR = "blobs"
TOP_LEVEL_STATE = ("experiment_state-*.json", "search_gen_state-*.json", "*.pkl")
TRIAL_STATE = ("*.pkl",)
TUNER_FILE = "tuner.pkl"


class UntrustedState(ConfigError):
    """A study's Ray Tune state that this user's key did not sign."""


def key_path() -> Path:
    """Where this user's signing key is kept."""
    return Path(os.environ.get(KEY_VARIABLE) or DEFAULT_KEY_FILE).expanduser()


def load_key() -> bytes:
    """This user's signing key, created (mode 0600) on first use; ConfigError if others may read it."""
    path = key_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another driver created it at the same moment: read theirs
        else:
            with os.fdopen(descriptor, "w") as key_file:
                key_file.write(secrets.token_hex(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path}: the raysearch signing key is readable by others; run `chmod 600 {path}`")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"{path}: not a raysearch signing key (64 hex digits)") from None
    if len(key) < 32:
        raise ConfigError(f"{path}: not a raysearch signing key (64 hex digits)")
    return key


def state_files(experiment: Path) -> list[Path]:
    """The files of a Ray Tune experiment folder that Tune unpickles on restore, relative to it."""
    found = {p for pattern in TOP_LEVEL_STATE for p in experiment.glob(pattern)}
    found |= {p for trial in experiment.iterdir() if trial.is_dir() for pattern in TRIAL_STATE
              for p in trial.glob(pattern)}
    return sorted(p.relative_to(experiment) for p in found if p.is_file() and not p.name.startswith("tmp-"))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()




def _seal(key: bytes, files: dict[str, str]) -> dict[str, Any]:
    """The manifest of `files` (path in the experiment folder -> SHA-256 of its content) with its HMAC."""
    body = dict(sorted(files.items()))
    mac = hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()
    return {"files": body, "hmac": mac}


class SignedStore:
    """The `signed/` folder of a study: blobs named by their digest and the HMAC'd manifest that lists them."""

    def __init__(self, study_dir: Path) -> None:
        self.root = StudyFolder(study_dir).signed_dir
        self.manifest = self.root / MANIFEST_FILE
        self.blobs = self.root / BLOBS_DIR

    def read(self, key: bytes) -> dict[str, str]:
        """The signed files; UntrustedState when the manifest is missing, altered or not signed with `key`,
        or a blob it names is missing or altered."""
        if not self.manifest.is_file():
            raise UntrustedState(f"{self.root}: no {MANIFEST_FILE}, so its Ray Tune state was not written by a "
                                 "raysearch driver of yours")
        try:
            sealed = json.loads(self.manifest.read_text())
            files = {str(name): str(sha256) for name, sha256 in sealed["files"].items()}
            mac = str(sealed["hmac"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UntrustedState(f"{self.manifest}: not a raysearch signature manifest") from None
        if not hmac.compare_digest(_seal(key, files)["hmac"], mac):
            raise UntrustedState(f"{self.manifest}: not signed with your raysearch key ({key_path()})")
        for name, sha256 in files.items():
            blob = self.blobs / sha256
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise UntrustedState(f"{self.manifest}: {name}: not a path inside the experiment folder")
            if not blob.is_file() or _digest(blob.read_bytes()) != sha256:
                raise UntrustedState(f"{blob}: missing or altered copy of {name}")
        return files

    def write(self, key: bytes, files: dict[str, str], contents: dict[str, bytes]) -> None:
        """Store the blobs of `contents` (digest -> bytes), then the manifest of `files`, then drop unused blobs."""
        for sha256, data in contents.items():
            if not (self.blobs / sha256).is_file():
                write_bytes_atomic(data, self.blobs / sha256)
        write_bytes_atomic(json.dumps(_seal(key, files), indent=1).encode(), self.manifest)
        used = set(files.values())
        for blob in self.blobs.iterdir():
            if blob.name not in used and not blob.name.startswith("."):
                blob.unlink(missing_ok=True)


def verify_signed_state(study_dir: Path) -> dict[str, str]:
    """The study's signed state files (path -> SHA-256); UntrustedState (one line) when the signature does not
    hold for this user's key. Reads only."""
    return SignedStore(study_dir).read(load_key())


def restore_signed_state(study_dir: Path, experiment: Path) -> int:
    """Check the study's signed state, then make the experiment folder hold exactly it: altered or missing
    files are written back from the signed copies, unsigned state files removed. Returns how many files were
    replaced or removed. UntrustedState (one line) when the signature does not hold."""
    store = SignedStore(study_dir)
    files = verify_signed_state(study_dir)
    changed = 0
    for name, sha256 in files.items():
        path = experiment / name
        if not (path.is_file() and _digest(path.read_bytes()) == sha256):
            write_bytes_atomic((store.blobs / sha256).read_bytes(), path)
            changed += 1
    for name in state_files(experiment):
        if str(name) not in files:
            (experiment / name).unlink()
            changed += 1
    return changed


class SignSnapshots(Callback):
    """Tune callback that signs the experiment state right after Tune writes each snapshot.

    Tune calls `get_state` of every callback at the end of writing a snapshot to the driver's staging folder;
    this one signs those files there (plus `tuner.pkl`, which Tune writes straight to the experiment folder)
    and returns None, so that Tune saves no callback state of its own. Paths come from the running trials'
    storage, never from when the Tuner was pickled, so a study folder that was moved signs where it is now."""

    def __init__(self) -> None:
        self._storage: Any = None
        self._signed: dict[str, str] = {}
        self._seen: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Learn where the experiment lives from the first trial's storage."""
        if self._storage is None and trials:
            self._storage = trials[0].storage

    def get_state(self) -> None:
        """Sign the snapshot Tune has just written (see the class docstring)."""
        if self._storage is not None:
            self.sign(Path(self._storage.experiment_driver_staging_path), Path(self._storage.experiment_fs_path))

    def sign(self, staging: Path | None, experiment: Path) -> None:
        """Sign the state files of `staging` (as the experiment folder will hold them) and `experiment`'s
        tuner.pkl. The signatures of earlier sessions' files, still in the experiment folder, are kept when
        the manifest is this user's (a study resumed with --trust starts a new manifest)."""

        store = SignedStore(study_dir_of(experiment))
        key = load_key()
        if not self._signed and store.manifest.is_file():
            try:
                self._signed = store.read(key)
            except UntrustedState:
                self._signed = {}
        contents: dict[str, bytes] = {}
        sources = [(experiment, Path(TUNER_FILE))]
        if staging is not None and staging.is_dir():
            sources += [(staging, name) for name in state_files(staging) if name != Path(TUNER_FILE)]
        for folder, name in sources:
            path = folder / name
            if not path.is_file():
                continue
            stat = path.stat()
            if self._seen.get(str(name)) == (stat.st_size, stat.st_mtime_ns):
                continue
            data = path.read_bytes()
            self._seen[str(name)] = (stat.st_size, stat.st_mtime_ns)
            self._signed[str(name)] = _digest(data)
            contents[_digest(data)] = data
        if contents or not store.manifest.is_file():
            store.write(key, self._signed, contents)


def sign_tuner(experiment: Path) -> None:
    """Sign a new study's tuner.pkl, which Tune writes when the Tuner is built, before its first snapshot."""
    SignSnapshots().sign(None, experiment)

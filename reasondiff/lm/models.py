"""Loading models from the hub or a local directory, checking a base/tuned pair, naming hook points.

Every stage loads models through `load_model`, so dtype/attention/device come from the hardware
profile in one place and a wrong path fails in seconds with the config key to change.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reasondiff.config import HardwareConfig
from reasondiff.core import distributed
from reasondiff.core.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HOOK_KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post)$")


def resolve_device(hardware: HardwareConfig) -> torch.device:
    """hardware.device; under torchrun `cuda` (or `auto` on a GPU machine) is this rank's own GPU,
    cuda:LOCAL_RANK."""
    device = hardware.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"hardware.device={hardware.device} but no CUDA GPU is visible: use hardware=cpu")
    if device == "cuda" and distributed.is_distributed():
        return torch.device("cuda", distributed.local_rank())
    return torch.device(device)


def looks_local(path: str) -> bool:
    """A hub id is `org/name`; anything else (or anything that exists on disk) is a local path."""
    return Path(path).expanduser().exists() or path.startswith(("/", ".", "~")) or path.count("/") != 1


def check_local_path(path: str, config_key: str) -> None:
    """Fail fast on a local model path that does not exist (hub ids are checked when loaded)."""
    if looks_local(path):
        _check_path(path, config_key)


def _check_path(path: str, config_key: str) -> str:
    if looks_local(path):
        local = Path(path).expanduser()
        if not local.exists():
            raise UserError(f"{config_key}={path}: no such local directory (set {config_key} to a hub id or an HF model dir)")
        if not (local / "config.json").is_file():
            raise UserError(f"{config_key}={path}: not a Hugging Face model directory (no config.json)")
        return str(local)
    from reasondiff.lm.hub import prepare_hub

    prepare_hub()
    return path


def load_tokenizer(path: str, *, config_key: str = "model.path", revision: str | None = None):
    from transformers import AutoTokenizer

    path = _check_path(path, config_key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as err:
        raise UserError(f"{config_key}={path}: could not load the tokenizer ({_first_line(err)}); "
                        f"offline? set {config_key} to a local directory") from err
    # transformers records how it was loaded (HF_HUB_OFFLINE forces local_files_only=True) in the
    # kwargs that save_pretrained writes: the same run would write other bytes online and offline
    tokenizer.init_kwargs.pop("local_files_only", None)
    return tokenizer


def load_model(path: str, hardware: HardwareConfig, *, config_key: str = "model.path",
               revision: str | None = None, device: torch.device | None = None,
               trust_remote_code: bool = False):
    """(model, tokenizer) from a hub id or local dir, in the hardware profile's dtype/attention."""
    from transformers import AutoModelForCausalLM

    path = _check_path(path, config_key)
    tokenizer = load_tokenizer(path, config_key=config_key, revision=revision)
    device = device or resolve_device(hardware)
    warn_if_slow_dtype(hardware.dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=revision, dtype=DTYPES[hardware.dtype],
            attn_implementation=hardware.attn_implementation, trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, RuntimeError) as err:
        mismatch = weights_mismatch(path, config_key) if looks_local(path) else None
        if mismatch is not None:
            raise UserError(mismatch) from err
        if isinstance(err, RuntimeError):
            raise
        raise UserError(f"{config_key}={path}: could not load the model ({_first_line(err)}); "
                        f"offline? set {config_key} to a local directory") from err
    model.to(device).eval()
    return model, tokenizer


SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size")
"""The config.json entries that set weight shapes, named in a mismatch so the edited one shows."""


def weights_mismatch(path: str | Path, config_key: str = "model.path") -> str | None:
    """One line when a local model's config.json disagrees with the shapes in its safetensors files
    (an edited hidden_size, weights copied from another model), else None. Compares the header shapes
    with the model that config.json builds on the meta device: no weights are read, nothing is
    allocated. transformers itself only prints a table and raises "ignore_mismatched_sizes"."""
    directory = Path(path).expanduser()
    files = sorted(directory.glob("*.safetensors"))
    config_file = directory / "config.json"
    if not files or not config_file.is_file():
        return None
    from safetensors import safe_open

    found: dict[str, tuple[tuple[int, ...], Path]] = {}
    try:
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                    found[name] = (tuple(handle.get_slice(name).get_shape()), file)
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(directory))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 (unreadable files are the loader's to report)
        return None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    differ = [(name, expected[name], *found[name]) for name in found if name in expected and expected[name] != found[name][0]]
    if not differ:
        return None
    name, want, got, file = differ[0]
    text = getattr(config, "text_config", None) or config
    settings = ", ".join(f"{k}={getattr(text, k)}" for k in SHAPE_KEYS if getattr(text, k, None) is not None)
    more = f" (and {len(differ) - 1} more tensors)" if len(differ) > 1 else ""
    return (f"{config_key}={directory}: config.json disagrees with the weights: {file.name} holds {name} of shape "
            f"{list(got)}, config.json ({settings}) expects {list(want)}{more}; restore the config.json that came "
            f"with these weights")


def warn_if_slow_dtype(dtype: str, device: torch.device) -> None:
    from reasondiff.config.common import cpu_has_native_bf16

    if dtype == "bfloat16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("hardware.dtype=bfloat16 on a CPU without native bf16 (no avx512_bf16/AMX): matmuls are "
                    "emulated, ~100x slower than float32 here; use hardware.dtype=float32 or auto")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass(frozen=True)
class ModelShape:
    d_model: int
    n_layers: int
    vocab_size: int

    @classmethod
    def of(cls, model) -> ModelShape:
        cfg = model.config
        return cls(d_model=cfg.hidden_size, n_layers=cfg.num_hidden_layers, vocab_size=cfg.vocab_size)


PROBE_TEXT = ("Natalia sold 48 clips in April, and half as many in May: 48 + 24 = 72.\n"
              "Let $f(x) = \\frac{7}{2}x^2$; then f'(3) = 21. Wait, is that right? Yes.\n"
              "Größe, naïve café, 数学, математика, 🙂")
"""Text both tokenizers of a pair must split into the same ids (digits, LaTeX, prose, non-ASCII)."""


@dataclass(frozen=True)
class TokenizerDifferences:
    """How two tokenizers of a pair differ (`tokenizer_differences`)."""

    vocabulary: tuple[str, ...] = ()
    """Regular (non-added) tokens whose id differs or that only one has, and probe text split
    differently: the same text becomes different ids, so activations cannot be paired."""
    added: tuple[str, ...] = ()
    """Added / special tokens (id: base vs tuned) that differ: the text's ids are the same, but
    those ids mean something else to each model (R1-Distill renames Qwen's <|im_start|> etc.)."""
    chat_template: bool = False
    """The chat templates differ (each model is prompted in its own)."""

    @property
    def compatible(self) -> bool:
        return not self.vocabulary

    def notice(self) -> str:
        """One line naming the differences of a compatible pair ("" when there are none)."""
        parts = []
        if self.added:
            shown = ", ".join(self.added[:4]) + (f", ... ({len(self.added)} in all)" if len(self.added) > 4 else "")
            parts.append(f"added special tokens differ ({shown})")
        if self.chat_template:
            parts.append("chat templates differ (each model is prompted in its own)")
        if not parts:
            return ""
        return ("base and tuned tokenizers (model.path vs tuned_model) share the vocabulary, so text maps to the "
                "same ids; " + "; ".join(parts))


def _added(tokenizer) -> dict[int, str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(i): str(getattr(t, "content", t)) for i, t in decoder.items()}


def tokenizer_differences(base_tokenizer, tuned_tokenizer, *, probe: str = PROBE_TEXT) -> TokenizerDifferences:
    """Compare two tokenizers: their regular vocabularies and how they split `probe` (must match),
    their added tokens and chat templates (may differ, as between a base and its distillation)."""
    base_added, tuned_added = _added(base_tokenizer), _added(tuned_tokenizer)
    added_names = set(base_added.values()) | set(tuned_added.values())
    base_vocab = {t: i for t, i in base_tokenizer.get_vocab().items() if t not in added_names}
    tuned_vocab = {t: i for t, i in tuned_tokenizer.get_vocab().items() if t not in added_names}
    vocabulary = [f"{t!r} ({base_vocab.get(t)} vs {tuned_vocab.get(t)})"
                  for t in sorted(set(base_vocab) | set(tuned_vocab)) if base_vocab.get(t) != tuned_vocab.get(t)]
    base_ids = base_tokenizer(probe, add_special_tokens=False)["input_ids"]
    tuned_ids = tuned_tokenizer(probe, add_special_tokens=False)["input_ids"]
    if base_ids != tuned_ids:
        vocabulary.append("the probe text is split into different ids")
    added = [f"{i}: {base_added.get(i)!r} vs {tuned_added.get(i)!r}"
             for i in sorted(set(base_added) | set(tuned_added)) if base_added.get(i) != tuned_added.get(i)]
    template = (getattr(base_tokenizer, "chat_template", None) or "") != (getattr(tuned_tokenizer, "chat_template", None) or "")
    return TokenizerDifferences(tuple(vocabulary), tuple(added), template)


def check_compatible(base_model, tuned_model, base_tokenizer, tuned_tokenizer) -> ModelShape:
    """A crosscoder pairs activations token by token: same vocabulary and same residual stream
    needed. Tokenizers that differ only in added special tokens or chat template (a base and its
    distillation) are accepted with a one-line notice; any other difference is refused in one
    line, before any forward."""
    problems = []
    base, tuned = ModelShape.of(base_model), ModelShape.of(tuned_model)
    for name in ("d_model", "n_layers", "vocab_size"):
        if getattr(base, name) != getattr(tuned, name):
            problems.append(f"{name} {getattr(base, name)} vs {getattr(tuned, name)}")
    differences = tokenizer_differences(base_tokenizer, tuned_tokenizer)
    if differences.vocabulary:
        shown = ", ".join(differences.vocabulary[:3])
        more = f" and {len(differences.vocabulary) - 3} more" if len(differences.vocabulary) > 3 else ""
        problems.append(f"tokenizer vocabularies differ in tokens text uses ({shown}{more}): the same text "
                        "would become different ids")
    if problems:
        raise UserError("base and tuned models are not a compatible pair (model.path vs tuned_model): "
                        + "; ".join(problems))
    if differences.notice():
        log.warning("%s", differences.notice())
    return base


@dataclass(frozen=True)
class HookPoint:
    """A TransformerLens residual hook name resolved to the HF decoder layer it touches."""

    name: str
    layer: int
    kind: str

    @property
    def last_layer_needed(self) -> int:
        """Layers after this one never need to run (resid_pre of L is the input of layer L)."""
        return self.layer - 1 if self.kind == "hook_resid_pre" else self.layer


def valid_hook_names(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in HOOK_KINDS]


def parse_hook(name: str, n_layers: int) -> HookPoint:
    match = _HOOK_RE.match(name)
    if not match or int(match.group(1)) >= n_layers:
        why = "unknown hook name" if not match else f"layer {match.group(1)} is past the last layer ({n_layers - 1})"
        raise UserError(f"harvest.hook={name!r}: {why}; valid: blocks.L.{{{','.join(HOOK_KINDS)}}} "
                        f"for L in 0..{n_layers - 1} (e.g. blocks.{n_layers // 2}.hook_resid_pre)")
    return HookPoint(name=name, layer=int(match.group(1)), kind=match.group(2))


def hooked(model, tokenizer, name: str | None = None) -> Any:
    """Wrap an already-loaded HF model for TransformerLens hooks (no download: hf_model is given)."""
    from transformer_lens.model_bridge import TransformerBridge

    name = name or getattr(model.config, "_name_or_path", None) or model.config.model_type
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    return TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer, device=device, dtype=dtype)

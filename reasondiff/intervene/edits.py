"""The interventions at the crosscoder's hook, as pure functions of activations and latents.

Notation (reasondiff/crosscoder/model.py): the pair of raw activations x = (x_base, x_tuned) at one
position is normalised per model (x_m · s_m), encoded JOINTLY into latents f, and decoded per model,
x̂_m = Σ_i f_i W_dec[i, m] + b_dec[m], in the normalised space. In a model's own RAW units (the units
spliced back into it) latent i contributes

    c_i,m = f_i · W_dec[i, m] / s_m            (the scaling factor undone, as in every splice)

and a set S contributes C_S,m = Σ_{i∈S} c_i,m.

- `patch_set` (tuned → base), in the base model: x_base − C_S,base + C_S,tuned. The latents come from
  the PAIRED activations (both models' forwards on the same text), so the base model receives along
  S what the tuned model carries there, in the tuned model's raw units, and keeps its own residual
  elsewhere (its reconstruction error and the rest of its latents). With S = every latent and a
  crosscoder that reconstructs perfectly, x_base − x̂_base + x̂_tuned is x_tuned up to the decoder
  biases, b_dec[tuned]/s_tuned − b_dec[base]/s_base: the biases belong to no latent, so no set patches
  them (tests/test_intervene_edits.py shows both).
- `ablate_set`, in the tuned model: x_tuned − C_S,tuned.
- `restore_set`, its inverse: x + C_S,tuned ("patching back" what an ablation removed).
- `steer`: x + v, v = α × the direction's typical norm × the unit direction. Its null (`random_direction`):
  an isotropic Gaussian direction, drawn per (seed, direction, index), added with the SAME α and typical
  norm, so a direction is read against what an arbitrary push of the same size does.
- `patch_residual`: x_tuned itself (the whole residual stream patched: the ceiling of every patch_set).

Every edit touches only the positions `where` [B, T] (the positions the crosscoder stands in for: no
padding, no sink position it never saw, no massive-activation token), works in float32 and returns the
activation's own dtype. An empty set returns None, which the hooks read as "leave the activation as it is":
patching nothing changes nothing, bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from reasondiff.crosscoder.geometry import BASE, TUNED

MODEL_INDEX = {"base": BASE, "tuned": TUNED}
Edit = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class Intervention:
    """One intervention of the stage: what it does, in which model, with which latents or vector."""

    kind: str
    """patch_set | ablate_set | steer | patch_residual."""
    model: str
    """The model whose forward is intervened on: base (patch_set, steer, patch_residual) or tuned (ablate_set)."""
    selection: str = ""
    """The rule that chose the latents (tuned_r, ..., random), or the steering direction (random: a random
    direction matched to `matched_to`)."""
    size: int = 0
    """Latents in the set (0 for steer and patch_residual)."""
    set_index: int = 0
    """0 = the selected set (or direction); 1.. = the random control sets (or directions) matched to it."""
    latents: tuple[int, ...] = ()
    alpha: float = 0.0
    """steer: multiple of the direction's typical norm."""
    matched_to: str = ""
    """A random set: the selection it is matched to; a random direction: the steering direction it controls."""
    label: str = field(default="", compare=False)

    @property
    def direction(self) -> str:
        """steer: the key of its vector in the `directions` mapping (a random direction's: `random_key`)."""
        if self.selection == "random":
            return random_key(self.matched_to, self.set_index)
        return self.selection

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.kind == "steer":
            if self.selection == "random":
                return f"steer:random/{self.matched_to}:{self.alpha:g}:{self.set_index}"
            return f"steer:{self.selection}:{self.alpha:g}"
        if self.kind == "patch_residual":
            return "patch_residual"
        matched = f"/{self.matched_to}" if self.matched_to else ""
        return f"{self.kind}:{self.selection}{matched}:{self.size}:{self.set_index}"


@torch.no_grad()
def latents_of(crosscoder, x_raw: torch.Tensor) -> torch.Tensor:
    """Latents f [..., F] of the raw activation pair x_raw [..., 2, d] (joint code, float32)."""
    return crosscoder.encode(crosscoder.normalise(x_raw.float()))


@torch.no_grad()
def set_contribution(crosscoder, f: torch.Tensor, latents: torch.Tensor, model: int) -> torch.Tensor:
    """C_S,m = Σ_{i∈S} f_i W_dec[i, m] / s_m: the set's part of model m's reconstruction in its raw units."""
    latents = latents.to(f.device)
    W = crosscoder.W_dec[latents, model].float()  # [|S|, d]
    return (f[..., latents].float() @ W) / crosscoder.scaling_factors[model].float()


def _at(acts: torch.Tensor, new: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    """`new` at the positions `where` [B, T] (all when None), `acts` elsewhere, in acts' dtype."""
    new = new.to(device=acts.device, dtype=acts.dtype)
    if where is None:
        return new
    return torch.where(where.to(acts.device).unsqueeze(-1), new, acts)


def replace_contribution(acts: torch.Tensor, crosscoder, f: torch.Tensor, latents: torch.Tensor, *,
                         remove: int | None, add: int | None, where: torch.Tensor | None = None) -> torch.Tensor | None:
    """acts − C_S,remove + C_S,add (either term may be absent) at `where`; None for an empty set."""
    if len(latents) == 0:
        return None
    new = acts.float()
    if remove is not None:
        new = new - set_contribution(crosscoder, f, latents, remove)
    if add is not None:
        new = new + set_contribution(crosscoder, f, latents, add)
    return _at(acts, new, where)


def patch_set(acts_base, crosscoder, f, latents, where=None):
    """In the base model: its own contribution of S replaced by the tuned model's (both from the paired latents)."""
    return replace_contribution(acts_base, crosscoder, f, latents, remove=BASE, add=TUNED, where=where)


def ablate_set(acts_tuned, crosscoder, f, latents, where=None):
    """In the tuned model: its contribution of S removed."""
    return replace_contribution(acts_tuned, crosscoder, f, latents, remove=TUNED, add=None, where=where)


def restore_set(acts_tuned, crosscoder, f, latents, where=None):
    """The inverse of `ablate_set`: the tuned model's contribution of S added back."""
    return replace_contribution(acts_tuned, crosscoder, f, latents, remove=None, add=TUNED, where=where)


def steer(acts: torch.Tensor, vector: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor | None:
    """acts + vector [d] at `where`; None when the vector is zero (α = 0 is the identity)."""
    if not bool(vector.any()):
        return None
    return _at(acts, acts.float() + vector.to(acts.device).float(), where)


def patch_residual(acts_base: torch.Tensor, acts_tuned: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """The tuned model's whole residual stream in place of the base model's (scan's tuned_into_base patch)."""
    return _at(acts_base, acts_tuned.float(), where)


def steering_vector(direction: torch.Tensor, typical_norm: float, alpha: float) -> torch.Tensor:
    """α × typical_norm × direction / ‖direction‖ (zero for α = 0 or a zero direction)."""
    norm = float(direction.float().norm())
    if alpha == 0 or norm == 0:
        return torch.zeros_like(direction, dtype=torch.float32)
    return direction.float() * (alpha * typical_norm / norm)


@dataclass(frozen=True)
class Direction:
    """A steering direction [d] in the intervened model's raw units, and its typical norm there."""

    direction: torch.Tensor
    typical_norm: float
    """ADL: the mean difference's own norm (α = 1 adds the mean difference itself); a latent: its mean
    activation where it fires × its decoder vector's norm (α = 1 adds its typical contribution)."""

    seed: str = ""
    """A random direction: the seed it was drawn from ('' for a measured direction); fingerprinted."""

    def vector(self, alpha: float) -> torch.Tensor:
        return steering_vector(self.direction, self.typical_norm, alpha)


def random_key(direction: str, index: int) -> str:
    """The name of random direction `index` (1..) matched to `direction` in a `directions` mapping."""
    return f"random/{direction}/{index}"


def random_direction(d: int, seed: str) -> torch.Tensor:
    """A unit vector [d] uniform on the sphere (an isotropic Gaussian draw, normalised), drawn in float64 from
    a generator seeded by sha256(seed), then cast to float32: the same seed gives the same vector on any
    machine, and one direction's controls never depend on which other directions are drawn."""
    generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    draw = torch.randn(d, dtype=torch.float64, generator=generator)
    return (draw / draw.norm()).float()


def random_directions(directions: dict[str, Direction], names: list[str], n: int, seed: int | str) -> dict[str, Direction]:
    """The null of steering: for each of `names` (in `directions`), `n` random unit directions (seeded by
    (seed, name, index)) with that direction's typical norm, so at the same α each adds a vector of exactly
    the norm the direction adds. Keys: `random_key(name, index)`, index 1..n."""
    out = {}
    for name in names:
        if name not in directions:
            continue
        own = directions[name]
        for index in range(1, n + 1):
            drawn_from = f"{seed}:{name}:{index}"
            out[random_key(name, index)] = Direction(random_direction(own.direction.shape[-1], drawn_from),
                                                     own.typical_norm, seed=drawn_from)
    return out


def edit_for(intervention: Intervention, crosscoder, *, f: torch.Tensor | None, partner: torch.Tensor | None,
             where: torch.Tensor | None, directions: dict[str, Direction] | None = None) -> Edit:
    """The edit of one intervention on one batch: a function of the intervened model's activation at the
    hook. `f`: the paired latents [B, T, F]; `partner`: the other model's activation (patch_residual);
    `directions`: the steering directions by name (steer)."""
    latents = torch.tensor(intervention.latents, dtype=torch.long)
    kind = intervention.kind
    if kind == "patch_set":
        return lambda acts: patch_set(acts, crosscoder, f, latents, where)
    if kind == "ablate_set":
        return lambda acts: ablate_set(acts, crosscoder, f, latents, where)
    if kind == "restore_set":
        return lambda acts: restore_set(acts, crosscoder, f, latents, where)
    if kind == "steer":
        vector = directions[intervention.direction].vector(intervention.alpha)
        return lambda acts: steer(acts, vector, where)
    if kind == "patch_residual":
        return lambda acts: patch_residual(acts, partner, where)
    raise ValueError(f"unknown intervention kind {kind!r}")

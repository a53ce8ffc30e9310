"""EMA codebook with dead-code reset: the "ema_reset" vector quantizer of T2M-GPT.

Each latent vector maps to its nearest code by squared L2 distance. During training the
codebook gets no gradients. Each code follows an exponential moving average (EMA) of the
encoder outputs assigned to it. A code whose EMA count drops below a threshold is replaced
by a random encoder output of the current batch.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    """Result of one quantizer pass over N latent vectors of width D.

    quantized: (N, D) codebook vectors, straight-through to the latents in training mode.
    indices: (N,) int64 code per vector.
    commitment_loss: scalar, MSE(latents, stop-grad(quantized)).
    perplexity: scalar, exp of the entropy of code usage in this batch.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


def code_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """Return exp(entropy) of a code-usage histogram counts (K,): K if uniform, 1 if one code.

    Unused codes contribute nothing. T2M-GPT adds 1e-7 inside the log instead, which changes
    the result by a relative 1e-7 per used code, about 5e-5 at most for K = 512.
    """
    probabilities = counts.double() / counts.sum().clamp_min(1)
    used = probabilities[probabilities > 0]
    return torch.exp(-(used * used.log()).sum()).to(torch.float32)


class EMAQuantizer(nn.Module):
    """Vector quantizer whose codebook (K, D) follows an EMA of its assigned encoder outputs.

    `codebook` is the only persistent buffer, so state dicts match the T2M-GPT release. The
    training state (`ema_sum` (K, D), `ema_count` (K,), `initialised`) is non-persistent:
    `ema_state()` and `load_ema_state()` carry it across a resumed training run, and loading
    a state dict that has a codebook restarts the EMA from that codebook with counts of 1.
    """

    def __init__(self, nb_code: int, code_dim: int, decay: float = 0.99, reset_threshold: float = 1.0):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} is invalid; use a value in (0, 1), e.g. 0.99")
        self.nb_code = nb_code
        self.code_dim = code_dim
        self.decay = decay
        self.reset_threshold = reset_threshold
        self.register_buffer("codebook", torch.zeros(nb_code, code_dim))
        self.register_buffer("ema_sum", torch.zeros(nb_code, code_dim), persistent=False)
        self.register_buffer("ema_count", torch.zeros(nb_code), persistent=False)
        self.register_buffer("initialised", torch.tensor(False), persistent=False)

    def nearest(self, latents: torch.Tensor) -> torch.Tensor:
        """Return the index (N,) of the nearest code for each latent vector in latents (N, D)."""
        codes = self.codebook
        distances = (
            latents.pow(2).sum(dim=1, keepdim=True)
            - 2.0 * latents @ codes.t()
            + codes.pow(2).sum(dim=1)[None, :]
        )
        return distances.argmin(dim=1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Return the code vectors (..., D) of indices (...)."""
        return F.embedding(indices, self.codebook)

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantize latents (N, D); in training mode also update the codebook.

        The codes are chosen and looked up before the update, as in T2M-GPT. Only training
        mode uses the straight-through form latents + (quantized - latents).detach(), so in
        eval mode `quantized` equals `lookup(indices)` bit for bit.
        """
        if latents.dim() != 2 or latents.shape[1] != self.code_dim:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; expected (N, {self.code_dim})")

        detached = latents.detach()
        if self.training and not bool(self.initialised):
            self._initialise(detached)

        indices = self.nearest(detached)
        quantized = self.lookup(indices)
        counts = torch.bincount(indices, minlength=self.nb_code)
        if self.training:
            self._update(detached, indices)

        commitment_loss = F.mse_loss(latents, quantized.detach())
        if self.training:
            quantized = latents + (quantized - latents).detach()
        return QuantizerOutput(quantized, indices, commitment_loss, code_perplexity(counts))

    def ema_state(self) -> dict[str, torch.Tensor]:
        """Return copies of the training-only buffers, for saving beside the weights."""
        return {
            "ema_sum": self.ema_sum.detach().clone(),
            "ema_count": self.ema_count.detach().clone(),
            "initialised": self.initialised.detach().clone(),
        }

    def load_ema_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the buffers saved by `ema_state()`."""
        for name in ("ema_sum", "ema_count", "initialised"):
            buffer = getattr(self, name)
            if name not in state or state[name].shape != buffer.shape:
                raise ValueError(
                    f"EMA state entry {name!r} is missing or has the wrong shape; "
                    f"expected {tuple(buffer.shape)} for a codebook of {self.nb_code} x {self.code_dim}"
                )
            buffer.copy_(state[name])

    @torch.no_grad()
    def _sample_rows(self, latents: torch.Tensor) -> torch.Tensor:
        """Return K random rows (K, D) of latents (N, D), tiled with small noise when N < K."""
        rows = latents
        if rows.shape[0] < self.nb_code:
            repeats = math.ceil(self.nb_code / rows.shape[0])
            rows = rows.repeat(repeats, 1)
            # T2M-GPT's noise scale: copies of one vector become distinct codes.
            rows = rows + torch.randn_like(rows) * (0.01 / math.sqrt(self.code_dim))
        order = torch.randperm(rows.shape[0], device=rows.device)[: self.nb_code]
        return rows[order]

    @torch.no_grad()
    def _initialise(self, latents: torch.Tensor) -> None:
        codes = self._sample_rows(latents)
        self.codebook.copy_(codes)
        self.ema_sum.copy_(codes)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, latents: torch.Tensor, indices: torch.Tensor) -> None:
        # A one-hot product rather than index_add_, because it is deterministic on GPUs too.
        assignment = F.one_hot(indices, self.nb_code).to(latents.dtype)  # (N, K)
        batch_sum = assignment.t() @ latents
        batch_count = assignment.sum(dim=0)

        self.ema_sum.mul_(self.decay).add_(batch_sum, alpha=1.0 - self.decay)
        self.ema_count.mul_(self.decay).add_(batch_count, alpha=1.0 - self.decay)

        alive = self.ema_count >= self.reset_threshold
        codes = self.ema_sum / self.ema_count.clamp_min(1e-12)[:, None]
        if not bool(alive.all()):
            codes = torch.where(alive[:, None], codes, self._sample_rows(latents))
        self.codebook.copy_(codes)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "codebook" in state_dict:
            # A loaded codebook counts as initialised, so fine-tuning keeps it instead of
            # overwriting it with the first batch. EMA restarts as in a fresh initialisation.
            with torch.no_grad():
                self.ema_sum.copy_(self.codebook)
                self.ema_count.fill_(1.0)
                self.initialised.fill_(True)

"""Per-token log-probabilities of the tokens that were actually there.

``log p(x_t | x_<t) = logit[x_t] - logsumexp(logits)``: gathering one logit and subtracting the
log-partition avoids materialising a full (B, T, V) ``log_softmax`` (a second vocab-sized
tensor, and its gradient) only to read one entry per position. The logsumexp is taken in
float32 even for bf16 logits, since bf16 has ~3 significant digits and log-probs of long
sequences are sums of many terms.
"""

from __future__ import annotations

import torch

__all__ = ["token_logps", "shifted_token_logps", "entropy_from_logits", "forward_logps"]


def token_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of ``targets`` under ``softmax(logits / temperature)``.

    logits: (..., V); targets: (...) long. Returns (...) float32.
    Rows are processed one at a time along the batch when the batch is large, to bound the
    float32 copy of the logits to one row.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if logits.dim() == 3 and logits.shape[0] > 1 and logits.dtype != torch.float32:
        # (B, T, V) in bf16: upcast one row at a time instead of the whole tensor.
        return torch.stack([token_logps(row, tgt) for row, tgt in zip(logits, targets)])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def shifted_token_logps(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each token given the ones before it, aligned with ``input_ids``.

    logits: (B, T, V) from a causal LM on input_ids (B, T). Position 0 has no prediction, so
    the returned (B, T) tensor holds 0 there; combine it with a completion mask whose
    position 0 is always 0 (the project's convention), so alignment is never off by one.
    """
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=logits.device)
    out[:, 1:] = token_logps(logits[:, :-1], input_ids[:, 1:], temperature)
    return out


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` over the last axis, float32. (..., V) -> (...)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    p = torch.exp(logp)
    # Masked-out vocabulary entries (logit -inf, e.g. after top-k) have p = 0 and contribute 0,
    # not 0 * -inf = NaN.
    return -torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)


def forward_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                  return_logits: bool = False):
    """Run ``model`` on a collated batch and return per-token log-probs (B, T), aligned with input_ids.

    Only the model-input keys are passed (rlhf.data.collate.model_inputs); packed batches carry
    restarting position_ids (and an explicit block mask for architectures that need one).
    """
    from rlhf.data.collate import model_inputs

    logits = model(**model_inputs(batch)).logits  # (B, T, V)
    logps = shifted_token_logps(logits, batch["input_ids"], temperature)
    return (logps, logits) if return_logits else logps

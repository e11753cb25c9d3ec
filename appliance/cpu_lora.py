"""Faster LoRA for vLLM on a CPU, loaded into the server by ``appliance up`` as a vLLM plugin.

vLLM's CPU LoRA ops (``vllm.lora.ops.torch_ops``) gather a copy of the adapter matrices for
every token (``weights[token_indices]``) and multiply token by token. With one or a few
adapters in a batch that is thousands of copies per layer: on a 2-core CPU, serving the
135M model with an adapter decoded at 44 tokens/s against 115 without, and a 512-token
prefill spent ~30 ms per LoRA module instead of ~1 ms. :class:`GroupedPunicaWrapperCPU`
groups the tokens of each adapter once per step and does one matrix multiply per adapter
and slice, in the same dtypes as vLLM's ops (shrink in float32, expand in the model's dtype).

Registered through the ``vllm.general_plugins`` entry point ``appliance_cpu_lora``, which
``appliance up`` allows in ``VLLM_PLUGINS``; it does nothing on other platforms, or when
``APPLIANCE_CPU_LORA=vllm`` asks for vLLM's own ops (to compare them).
"""

from __future__ import annotations

import os

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

PLUGIN = "appliance_cpu_lora"  # the entry point's name, as VLLM_PLUGINS must list it
ENV = "APPLIANCE_CPU_LORA"  # "vllm": keep vLLM's per-token ops
QUALNAME = f"{__name__}.GroupedPunicaWrapperCPU"

Groups = list[tuple[int, "torch.Tensor | None"]]  # (adapter slot, its token rows, or None for all rows)


def register() -> None:
    """vLLM plugin entry point: use the grouped wrapper on the CPU platform."""
    from vllm.platforms import current_platform

    if os.environ.get(ENV, "").lower() == "vllm" or not current_platform.is_cpu():
        return
    type(current_platform).get_punica_wrapper = classmethod(lambda cls: QUALNAME)


def token_groups(indices: torch.Tensor) -> Groups:
    """The adapter slots used in a batch and, for each, the rows of its tokens.

    A slot of -1 means no adapter: those tokens are left alone. ``None`` rows stand for
    every token (the common case, one adapter for the whole batch), which needs no gather.
    """
    if indices.numel() == 0:
        return []
    slots = torch.unique(indices).tolist()
    if len(slots) == 1:
        return [] if slots[0] < 0 else [(slots[0], None)]
    return [(s, (indices == s).nonzero().squeeze(1)) for s in slots if s >= 0]


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """vLLM's CPU punica wrapper with the linear-layer LoRA ops done per adapter, not per token.

    The output head's and the embedding's LoRA (vLLM applies both to every batch of a model
    whose lm_head / embed_tokens are supported modules, whether an adapter targets them or not)
    are grouped the same way.
    """

    _groups: Groups | None = None
    _groups_len = -1
    _sample_groups: Groups | None = None
    _sample_len = -1

    def update_metadata(self, *args, **kwargs) -> None:
        super().update_metadata(*args, **kwargs)
        indices = self.token_lora_indices
        self._groups, self._groups_len = token_groups(indices), indices.numel()
        self._sample_groups, self._sample_len = token_groups(self.sampler_indices), self.sampler_indices.numel()

    def add_lora_embedding(self, y: torch.Tensor, x: torch.Tensor, lora_b_stacked: torch.Tensor,
                           add_inputs: bool = True, **kwargs) -> None:
        """The embedding's LoRA expand, per adapter like the linear layers' (vLLM gathers B per token)."""
        if self._grouped(x.size(0)) is None:
            return super().add_lora_embedding(y, x, lora_b_stacked, add_inputs, **kwargs)
        y2 = y.view(-1, y.shape[-1])
        self._apply_expand(y2, x, lora_b_stacked, 0, y2.size(-1), add_inputs)

    def add_lora_logits(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor,
                        lora_b_stacked: torch.Tensor, scale, *, buffer: torch.Tensor | None = None, **kwargs) -> None:
        """The output head's LoRA per adapter: ``y += (scale * x @ A[slot].T) @ B[slot].T``.

        vLLM wraps the output head of every LoRA-enabled model (SmolLM2's lm_head is a supported
        module) and its CPU op gathers B, [vocab x rank], once per sampled sequence: 200 MB of
        copies per decode step at 64 sequences, also for base-model rows (slot -1 reads the last
        slot's zeros). Here rows without an adapter are skipped and each adapter's B is read once.
        """
        y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        groups = self._sample_groups if self._sample_groups is not None and x2.size(0) == self._sample_len else None
        if groups is None:
            return super().add_lora_logits(y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)
        for slot, rows in groups:
            xs = x2 if rows is None else x2.index_select(0, rows)
            a = lora_a_stacked[slot].reshape(-1, x2.size(-1))  # [rank, hidden]
            b = lora_b_stacked[slot].reshape(-1, a.size(0))  # [vocab (padded), rank]
            # the dtypes of vLLM's bgmv ops: shrink in float32 (its buffer's), expand in y's
            mid = (xs.float() @ a.float().t()).mul_(scale)
            delta = mid.to(y2.dtype) @ b.to(y2.dtype).t()
            n = min(delta.size(1), y2.size(1))  # the head and its LoRA may pad the vocabulary differently
            _put(y2[:, :n], rows, delta[:, :n])

    def _grouped(self, rows: int) -> Groups | None:
        # a batch whose row count differs from the mapping (padding) goes to vLLM's ops
        return self._groups if self._groups is not None and rows == self._groups_len else None

    def _apply_shrink(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        """``y = scale * x @ A[slot].T`` per adapter (``y`` is the float32 buffer)."""
        groups = self._grouped(x.size(0))
        if groups is None:
            return super()._apply_shrink(y, x, w_t_all, scale)
        y2 = y.view(-1, y.shape[-1])
        for slot, rows in groups:
            a = w_t_all[slot].reshape(-1, x.size(-1)).to(y2.dtype)  # [rank, in]
            if rows is None:
                y2[:, : a.size(0)] = (x.to(y2.dtype) @ a.t()).mul_(scale)
            else:
                part = (x.index_select(0, rows).to(y2.dtype) @ a.t()).mul_(scale)
                y2[:, : a.size(0)].index_copy_(0, rows, part)

    def _apply_expand(self, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, y_offset: int,
                      y_slice_size: int, add_inputs: bool = True) -> None:
        """``y[:, offset:offset+size] (+)= x @ B[slot].T`` per adapter, in ``y``'s dtype."""
        groups = self._grouped(x.size(0))
        if groups is None:
            return super()._apply_expand(y, x, w_t_all, y_offset, y_slice_size, add_inputs)
        out = y[:, y_offset: y_offset + y_slice_size]
        for slot, rows in groups:
            b = w_t_all[slot].reshape(-1, x.size(-1)).to(y.dtype)  # [out, rank]
            xs = x if rows is None else x.index_select(0, rows)
            _put(out, rows, xs.to(y.dtype) @ b.t(), add_inputs)


def _put(out: torch.Tensor, rows: "torch.Tensor | None", delta: torch.Tensor, add_inputs: bool = True) -> None:
    """``out (+)= delta`` on one adapter's rows (None: every row), in place."""
    if rows is None:
        out.add_(delta) if add_inputs else out.copy_(delta)
    elif add_inputs:
        out.index_add_(0, rows, delta)
    else:
        out.index_copy_(0, rows, delta)

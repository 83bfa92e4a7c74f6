"""Per-request voices served from merged weights, optionally int8.

peft's mixed-batch path (`adapter_names`) adds the LoRA product to every targeted layer on every
token: SmolLM2-135M with a rank-8 voice on 16 of its 30 layers decoded at 7.0 tokens/s against
10.4 with no adapter (2 AMD EPYC cores, fp32). peft's own merge would serve one voice to every
request. Instead each LoRA layer keeps, for every loaded adapter, its base weight with that
adapter merged in, and each call uses the one its thread chose (`AdapterRegistry.using`): one
matmul per layer whatever the voice, as exact as peft's merge. The price is memory: a copy of the
targeted weights per voice (216 MB each on SmolLM2 in fp32, 57 MB in int8).

With `quantize="int8"` every linear layer (the LM head too) decodes from int8 weights, one scale
per output channel, with activations in bf16: decoding a token reads every weight once, so on a
small CPU its speed is the memory's (SmolLM2 in fp32: 538 MB per token). The prompt's prefill
keeps the float weights. (torch's dynamic quantization, int8 activations too, was tried first:
own answers fell from 0.975 to 0.45 on the shipped questions.)

peft's own forward still runs outside `using()` (training) and for adapters that cannot be merged
this way (DoRA, LoRA on embeddings): those take the mixed-batch path.
"""

from __future__ import annotations

import types
from typing import Callable

BASE = "__base__"  # peft's name for "no adapter" in adapter_names
QUANTIZE = ("none", "int8")


class Int8Linear:
    """A linear layer that decodes from int8 weights (one per output channel scale).

    Decoding a token is a matrix-vector product bounded by the bytes of weights read, a quarter
    of fp32's in int8 (torch's `_weight_int8pack_mm`, activations in bf16); so is checking a
    prompt-lookup draft of a few tokens. A prompt's prefill is a matrix product, where that
    kernel is slower than the float one: it uses the float weight.
    """

    MAX_ROWS = 16  # tokens at once up to which int8 is faster (2 AMD EPYC cores; 32: twice slower)

    def __init__(self, weight, bias, dense: Callable | None = None):
        """`weight` is quantized; `dense` computes the float result for a prefill (default: with
        `weight`, which is then kept; a voice passes base + its LoRA, so no merged copy stays)."""
        import torch

        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        self.q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scales = scales.to(torch.bfloat16)
        self.bias = bias
        self.dense = dense or _Dense(weight, bias)

    def __call__(self, x):
        import torch

        rows = x.numel() // x.shape[-1]
        if rows > self.MAX_ROWS:
            return self.dense(x)
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, -1).to(torch.bfloat16), self.q, self.scales)
        y = y.to(x.dtype).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scales.numel() * 2 + getattr(self.dense, "nbytes", 0)


class WeightRouter:
    """Routes each linear layer of `model` to the weights of the adapter `current()` names.

    `current()` returns None outside a request (peft's forward runs), BASE for no adapter, or
    an adapter's internal peft name. Every change (`refresh`, `forget`) must happen while no
    request runs: the registry holds its write lock.
    """

    def __init__(self, model, current: Callable[[], str | None], merge: bool = True, quantize: str = "none"):
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, not {quantize!r}")
        self.model, self.current, self.merge, self.quantize = model, current, merge, quantize

    def refresh(self) -> None:
        """Route layers not yet routed and bake adapters not yet baked (after peft loaded one)."""
        import torch
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora import Linear as LoraLinear

        inside_lora = {id(m.base_layer) for m in self.model.modules() if isinstance(m, LoraLayer)}
        for module in self.model.modules():
            base = module.get_base_layer() if isinstance(module, LoraLayer) else None
            if isinstance(module, LoraLinear) and type(base) is torch.nn.Linear:  # not Conv1D (fan_in_fan_out)
                routes = self._routes(module, lora=True)
                if BASE not in routes:  # an int8 copy made before peft wrapped this layer is reused
                    routes[BASE] = getattr(base, "_supportbot_routes", {}).get(BASE) or self._serve(base.weight,
                                                                                                   base.bias)
                if not self.merge:
                    continue
                for name in module.lora_A:
                    if name not in routes and name not in module.lora_variant:  # DoRA & co: peft's path
                        with torch.no_grad():
                            merged = base.weight + module.get_delta_weight(name).to(base.weight.dtype)
                        if self.quantize == "int8":  # the prefill adds the LoRA: no float copy kept
                            lora = _Lora(base.weight, base.bias, module.lora_A[name].weight,
                                         module.lora_B[name].weight, module.scaling[name])
                            routes[name] = Int8Linear(merged, base.bias, dense=lora)
                        else:
                            routes[name] = _Dense(merged, base.bias, owned=True)
            elif isinstance(module, LoraLayer):
                self._routes(module, lora=True)  # embeddings, Conv1D: peft's mixed-batch path
            elif (type(module) is torch.nn.Linear and self.quantize == "int8" and id(module) not in inside_lora
                  and not hasattr(module, "_supportbot_routes")):
                self._routes(module, lora=False)[BASE] = Int8Linear(module.weight, module.bias)

    def forget(self, name: str) -> None:
        for module in self.model.modules():
            getattr(module, "_supportbot_routes", {}).pop(name, None)

    def bytes(self) -> int:
        """Memory the served copies take: merged weights (the base's own are shared) and int8 copies."""
        return sum(fn.nbytes for m in self.model.modules() for fn in getattr(m, "_supportbot_routes", {}).values())

    # --- internals ------------------------------------------------------------------------
    def _serve(self, weight, bias):
        return Int8Linear(weight, bias) if self.quantize == "int8" else _Dense(weight, bias)

    def _routes(self, module, lora: bool) -> dict:
        routes = getattr(module, "_supportbot_routes", None)
        if routes is not None:
            return routes
        routes = module._supportbot_routes = {}
        original = module.forward  # the bound method of the module's class (peft's or nn.Linear's)
        current = self.current

        def forward(self, x, *args, **kwargs):
            name = current()
            if name is None:
                return original(x, *args, **kwargs)
            served = routes.get(name) or (routes.get(BASE) if not lora else None)
            if served is not None:
                return served(x)
            # not merged (merge off, DoRA, embeddings): peft's mixed-batch path
            return original(x, *args, adapter_names=[name] * x.shape[0], **kwargs)

        module.forward = types.MethodType(forward, module)
        return routes


class _Dense:
    def __init__(self, weight, bias, owned: bool = False):
        self.weight, self.bias = weight, bias
        self.nbytes = weight.numel() * weight.element_size() if owned else 0  # merged: a copy of its own

    def __call__(self, x):
        import torch.nn.functional as F

        return F.linear(x, self.weight, self.bias)


class _Lora:
    """Base weight plus an unmerged LoRA: the float path of an int8 voice (prefills only)."""

    def __init__(self, weight, bias, a, b, scaling: float):
        self.weight, self.bias, self.a, self.b, self.scaling = weight, bias, a, b, scaling
        self.nbytes = 0  # the LoRA's own tensors, shared with peft

    def __call__(self, x):
        import torch.nn.functional as F

        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.a), self.b) * self.scaling

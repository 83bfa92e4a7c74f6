"""Per-request voices served from merged weights, optionally int8.

peft's mixed-batch path (`adapter_names`) adds the LoRA product to every targeted layer on every
token: SmolLM2-135M with a rank-8 voice on 16 of its 30 layers decoded at 7.0 tokens/s against
10.4 with no adapter (2 AMD EPYC cores, fp32). peft's own merge would serve one voice to every
request. Instead each LoRA layer keeps, for every loaded adapter, its base weight with that
adapter merged in, and each call uses the one its thread chose (`AdapterRegistry.using`): one
matmul per layer whatever the voice, as exact as peft's merge. The price is memory: a copy of the
targeted weights per voice (226 MB each on SmolLM2 in fp32, 57 MB in int8).

With `quantize="int8"` every linear layer (the LM head too) serves from a copy with int8 weights
per output channel and activations quantized per call (torch's dynamic quantization, CPU only):
fewer bytes to read per token, the cost that bounds decoding on a small CPU.

peft's own forward still runs outside `using()` (training) and for adapters that cannot be merged
this way (DoRA, LoRA on embeddings): those take the mixed-batch path.
"""

from __future__ import annotations

import types
import warnings
from typing import Callable

BASE = "__base__"  # peft's name for "no adapter" in adapter_names
QUANTIZE = ("none", "int8")


def _int8(weight, bias):
    """A dynamically quantized linear layer (int8 weights per output channel) for this weight."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    dense = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        dense.weight.copy_(weight.float())
        if bias is not None:
            dense.bias.copy_(bias.float())
    dense.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated; the pinned torch has them
        warnings.simplefilter("ignore")
        return DynamicLinear.from_float(dense)


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
                        routes[name] = self._serve(merged, base.bias)
            elif isinstance(module, LoraLayer):
                self._routes(module, lora=True)  # embeddings, Conv1D: peft's mixed-batch path
            elif (type(module) is torch.nn.Linear and self.quantize == "int8" and id(module) not in inside_lora
                  and not hasattr(module, "_supportbot_routes")):
                self._routes(module, lora=False)[BASE] = _int8(module.weight, module.bias)

    def forget(self, name: str) -> None:
        for module in self.model.modules():
            getattr(module, "_supportbot_routes", {}).pop(name, None)

    def bytes(self) -> int:
        """Memory the served copies take (fp32 merges share nothing with the base weights)."""
        total = 0
        for module in self.model.modules():
            for name, fn in getattr(module, "_supportbot_routes", {}).items():
                if hasattr(fn, "_packed_params"):
                    w, b = fn._weight_bias()
                    total += w.numel() + (b.numel() * 4 if b is not None else 0)
                elif name != BASE or self.quantize == "int8":
                    total += sum(t.numel() * t.element_size() for t in getattr(fn, "_tensors", ()))
        return total

    # --- internals ------------------------------------------------------------------------
    def _serve(self, weight, bias):
        if self.quantize == "int8":
            return _int8(weight, bias)
        import torch.nn.functional as F

        def dense(x, w=weight, b=bias):
            return F.linear(x, w, b)
        dense._tensors = (weight,)
        return dense

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

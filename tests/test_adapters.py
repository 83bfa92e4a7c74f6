"""The adapter registry: load, choose per request (also from two threads at once), refuse what does
not fit, rescan. Adapters are real LoRAs trained in the test session on a tiny Llama."""

import json
import re
import shutil
import threading

import pytest

from bot.adapters import AdapterError, AdapterRegistry
from bot.config import ModelSettings
from bot.generation import Generator
from bot.merged import BASE, Int8Linear
from conftest import VOICES, load_tiny, save_tiny_model, train_voice

ASK = [{"role": "user", "content": "Do you ship to Canada?"}]


def registry(base, folder):
    reg = AdapterRegistry(load_tiny(base), folder)
    reg.scan()
    return reg


def reply(reg, adapter, tokens=16):
    return "".join(Generator(reg.loaded, reg, ModelSettings()).stream(ASK, adapter, max_new_tokens=tokens))


@pytest.fixture(scope="module")
def solo(tiny_base, voices_dir, tmp_path_factory):
    """Each voice's output from a model that holds that adapter alone (and the bare base)."""
    out = {"none": reply(registry(tiny_base, tmp_path_factory.mktemp("empty")), "none")}
    for name in VOICES:
        only = tmp_path_factory.mktemp(f"only-{name}")
        shutil.copytree(voices_dir / name, only / name)
        out[name] = reply(registry(tiny_base, only), name)
    return out


def test_all_adapters_load_into_one_model_with_their_cards(tiny_base, voices_dir):
    reg = registry(tiny_base, voices_dir)
    assert reg.names() == ["none", "formal", "sunny"]
    sunny = reg.adapters["sunny"]
    assert sunny.status == "loaded" and sunny.voice == "warm and upbeat" and sunny.base == str(tiny_base)
    assert {"base_model", "base_fingerprint", "hyperparameters", "train_loss_last"} <= set(sunny.card)


def test_per_request_choice_matches_each_adapters_solo_output(tiny_base, voices_dir, solo):
    reg = registry(tiny_base, voices_dir)
    assert solo["sunny"].startswith("Hey there") and solo["formal"].startswith("Dear customer")
    assert len({solo["none"], solo["sunny"], solo["formal"]}) == 3
    for name in ["sunny", "none", "formal", "sunny", "none"]:  # switching back and forth: no reload
        assert reply(reg, name) == solo[name]


def test_two_threads_with_two_adapters_each_get_their_own(tiny_base, voices_dir, solo):
    reg = registry(tiny_base, voices_dir)
    results, start = {}, threading.Barrier(3)

    def chat(name):
        start.wait()
        results[name] = [reply(reg, name, tokens=24) for _ in range(4)]

    threads = [threading.Thread(target=chat, args=(n,)) for n in ("sunny", "formal", "none")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name, outs in results.items():
        assert all(o.startswith(solo[name][:12]) for o in outs), (name, outs)
    assert len(results) == 3


def test_unknown_adapter_is_a_clear_error(tiny_base, voices_dir):
    reg = registry(tiny_base, voices_dir)
    with pytest.raises(AdapterError, match="'grumpy' is not available") as err:
        reg.check("grumpy")
    assert "none, formal, sunny" in err.value.hint


def _copy(voices_dir, tmp_path, *names):
    root = tmp_path / "adapters"
    for n in names:
        shutil.copytree(voices_dir / n, root / n)
    return root


def test_adapter_for_another_base_is_refused_naming_both(tiny_base, voices_dir, tmp_path):
    root = _copy(voices_dir, tmp_path, "sunny")
    wide = save_tiny_model(tmp_path / "wide-llama", hidden=96)
    train_voice(wide, root / "wide", "Hi!", steps=2)  # trained on a model of another shape
    same_shape = root / "renamed"
    shutil.copytree(voices_dir / "formal", same_shape)  # same shapes, but the card names another base
    for f in ("adapter_card.json", "adapter_config.json"):
        data = json.loads((same_shape / f).read_text())
        data["base_model" if f.startswith("adapter_card") else "base_model_name_or_path"] = "Org/other-model"
        (same_shape / f).write_text(json.dumps(data))
    reg = registry(tiny_base, root)
    wide_a, renamed = reg.adapters["wide"], reg.adapters["renamed"]
    assert wide_a.status == "refused" and str(wide) in wide_a.reason and str(tiny_base) in wide_a.reason
    assert renamed.status == "refused" and "Org/other-model" in renamed.reason and str(tiny_base) in renamed.reason
    assert reg.names() == ["none", "sunny"]
    assert list(reg._peft.peft_config) == [reg.adapters["sunny"].internal]  # nothing half-registered


def test_same_name_but_other_architecture_is_refused_by_shape(tiny_base, voices_dir, tmp_path):
    root = tmp_path / "adapters"
    wide = save_tiny_model(tmp_path / "wide" / tiny_base.name, hidden=96)  # same folder name, other sizes
    train_voice(wide, root / "wide", "Hi!", steps=2)
    for f in ("adapter_card.json",):  # a card without fingerprint: only the shapes can tell
        data = json.loads((root / "wide" / f).read_text())
        data.pop("base_fingerprint")
        (root / "wide" / f).write_text(json.dumps(data))
    a = registry(tiny_base, root).adapters["wide"]
    assert a.status == "refused" and re.search(r"does not fit .* has shape \[8, \d+\], the model.s .* needs \d+", a.reason)


def test_pickled_and_corrupt_adapters_are_refused_and_the_rest_runs(tiny_base, voices_dir, tmp_path, solo, caplog):
    root = _copy(voices_dir, tmp_path, "sunny", "formal")
    shutil.copytree(root / "formal", root / "pickled")
    (root / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    shutil.copytree(root / "formal", root / "truncated")
    w = root / "truncated" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    shutil.copytree(root / "formal", root / "badjson")
    (root / "badjson" / "adapter_config.json").write_text("{not json")
    (root / "notes").mkdir()
    reg = registry(tiny_base, root)
    status = {n: (a.status, a.reason) for n, a in reg.adapters.items()}
    assert status["pickled"][0] == "refused" and "pickle" in status["pickled"][1]
    assert status["truncated"][0] == "skipped" and "corrupt adapter_model.safetensors" in status["truncated"][1]
    assert status["badjson"][0] == "skipped" and "corrupt" in status["badjson"][1]
    assert status["notes"][0] == "skipped"
    assert any("pickled" in r.message and r.levelname == "WARNING" for r in caplog.records)
    assert reply(reg, "sunny") == solo["sunny"]


def test_rescan_picks_up_new_replaced_and_removed_adapters(tiny_base, voices_dir, tmp_path, solo):
    root = _copy(voices_dir, tmp_path, "sunny")
    reg = registry(tiny_base, root)
    shutil.copytree(voices_dir / "formal", root / "formal")
    reg.scan()
    assert reg.names() == ["none", "formal", "sunny"] and reply(reg, "formal") == solo["formal"]
    train_voice(tiny_base, tmp_path / "new-sunny", "Yo! Totally on it.", steps=30)
    shutil.rmtree(root / "sunny")
    shutil.copytree(tmp_path / "new-sunny", root / "sunny")  # retrained under the same name
    old_internal = reg.adapters["sunny"].internal
    reg.scan()
    assert reply(reg, "sunny").startswith("Yo!")
    assert old_internal not in reg._peft.peft_config
    shutil.rmtree(root / "formal")
    reg.scan()
    assert reg.names() == ["none", "sunny"]
    assert reply(reg, "none") == solo["none"]
    assert _served_names(reg) == {BASE, reg.adapters["sunny"].internal}  # merged copies of the others freed


def _served_names(reg) -> set:
    return {name for m in reg.loaded.model.modules() for name in getattr(m, "_supportbot_routes", {})}


def _hostile_config(key, value):
    def make(folder, tmp_path):
        config = json.loads((folder / "adapter_config.json").read_text())
        config[key] = value
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return make


def _weights_outside(folder, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / "adapter_model.safetensors", outside)
    (folder / "adapter_model.safetensors").symlink_to(outside)


@pytest.mark.parametrize("make, reason", [
    (_hostile_config("init_lora_weights", "pissa"), "rewrites the shared base model's weights"),
    (_hostile_config("init_lora_weights", "olora"), "rewrites the shared base model's weights"),
    (_hostile_config("init_lora_weights", "loftq"), "rewrites the shared base model's weights"),
    (_hostile_config("megatron_config", {"x": 1}), "import a module"),
    (_weights_outside, "adapter_model.safetensors points outside the adapter folder"),
], ids=["pissa", "olora", "loftq", "megatron", "symlink-out"])
def test_hostile_adapter_configs_are_refused_and_the_base_is_untouched(tiny_base, voices_dir, tmp_path, solo, make, reason):
    """peft derives PiSSA/OLoRA adapters from the base weights and rewrites them in place on load (21
    of 30 tensors of the demo model, measured): one hostile folder would change every voice."""
    import torch

    root = _copy(voices_dir, tmp_path, "sunny")
    shutil.copytree(voices_dir / "formal", root / "hostile")
    make(root / "hostile", tmp_path)
    reg = registry(tiny_base, root)
    assert reg.adapters["hostile"].status == "refused" and reason in reg.adapters["hostile"].reason
    fresh = load_tiny(tiny_base).model.state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in reg.loaded.model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(fresh[k], base[k]) for k in fresh)
    assert reply(reg, "none") == solo["none"] and reply(reg, "sunny") == solo["sunny"]


def _logits(model, ids):
    """The logits of a prefill of all but the last token, and of one decoding step for the last
    (one token at a time is where int8 weights are used)."""
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache()
        prefill = model(input_ids=torch.tensor([ids[:-1]]), cache=cache).logits[0]
        step = model(input_ids=torch.tensor([ids[-1:]]), cache=cache).logits[0]
        return torch.cat([prefill, step])


@pytest.mark.parametrize("merge, quantize, tolerance", [
    (True, "none", 1e-4),   # merged weights: peft's own sum, in another order
    (False, "none", 1e-4),  # peft's mixed-batch path
    (True, "int8", 0.05),   # steps of a few tokens from int8 weights, bf16 activations: close (share of range)
])
def test_served_weights_give_each_voice_what_peft_gives_it_alone(tiny_base, voices_dir, merge, quantize, tolerance):
    from peft import PeftModel

    reg = AdapterRegistry(load_tiny(tiny_base), voices_dir, merge=merge, quantize=quantize)
    reg.scan()
    ids = reg.loaded.encode(ASK)
    for name in ["none", *VOICES]:
        reference = load_tiny(tiny_base).model
        if name != "none":
            reference = PeftModel.from_pretrained(reference, str(voices_dir / name)).eval()
        want = _logits(reference, ids)
        with reg.using(name):
            got = _logits(reg.loaded.model, ids)
        span = float(want.max() - want.min())
        assert float((got - want).abs().max()) <= tolerance * (span if quantize == "int8" else 1), name
        assert int(got[-1].argmax()) == int(want[-1].argmax()), name
    with reg.using("none"):  # outside a request the layers are peft's own, untouched
        pass
    assert float((_logits(reg.loaded.model, ids) - _logits(reg._peft, ids)).abs().max()) == 0.0
    served = [r for m in reg.loaded.model.modules() for r in getattr(m, "_supportbot_routes", {}).values()]
    assert served and all(isinstance(r, Int8Linear) == (quantize == "int8") for r in served)
    assert (reg.router.bytes() > 0) == (merge or quantize == "int8")
    assert _served_names(reg) == ({BASE} | ({a.internal for a in reg.adapters.values()} if merge else set()))


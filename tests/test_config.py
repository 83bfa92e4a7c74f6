from pathlib import Path

import pytest

from bot.config import Settings, env_name, example_toml, iter_fields, load_settings
from bot.errors import ConfigError


def test_layers_defaults_toml_env_flags(tmp_path):
    cfg = tmp_path / "supportbot.toml"
    cfg.write_text('kb = "docs"\n[retrieval]\nk = 6\nthreshold = 0.4\n[knowledge]\nchunk_chars = 700\n')
    env = {"SUPPORTBOT_RETRIEVAL_K": "7", "SUPPORTBOT_KNOWLEDGE_AUTO_SYNC": "no"}
    s = load_settings({"retrieval.threshold": 0.5, "retrieval.k": None}, config_file=cfg, environ=env)
    assert s.kb == Path("docs")  # toml over default
    assert s.knowledge.chunk_chars == 700
    assert s.retrieval.k == 7  # env over toml; a None flag does not override
    assert s.retrieval.threshold == 0.5  # flag over toml
    assert s.knowledge.auto_sync is False
    assert s.retrieval.candidates == Settings().retrieval.candidates  # untouched default


@pytest.mark.parametrize(
    "toml, env, message",
    [
        ("[retrieval]\nkk = 3\n", {}, "unknown setting 'retrieval.kk'"),
        ("[retrieval]\nk = 'many'\n", {}, "cannot read 'many' as int"),
        ("kb = [", {}, "not valid TOML"),
        ("", {"SUPPORTBOT_RETRIEVAL_THRESHOLD": "2"}, "within 0..1"),
        ("", {"SUPPORTBOT_KNOWLEDGE_AUTO_SYNC": "maybe"}, "as bool"),
        ('kb = "kb"\ndata_dir = "kb/index"\n', {}, "inside the knowledge base"),
    ],
)
def test_bad_settings_say_what_is_wrong(tmp_path, toml, env, message):
    cfg = tmp_path / "supportbot.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=cfg, environ=env)


def test_every_field_documents_itself_and_has_an_env_name():
    names = [name for name, f, _ in iter_fields()]
    assert {"kb", "data_dir", "retrieval.k", "retrieval.threshold", "knowledge.chunk_chars"} <= set(names)
    for name, f, _ in iter_fields():
        assert f.metadata.get("help"), f"{name} has no help text"
    assert env_name("retrieval.k") == "SUPPORTBOT_RETRIEVAL_K"


def test_shipped_example_config_loads():
    example = Path(__file__).resolve().parents[1] / "supportbot.example.toml"
    s = load_settings(config_file=example, environ={})
    assert s == Settings().validate()  # the example documents the defaults, nothing else
    assert example.read_text(encoding="utf-8") == example_toml(), "regenerate: python -c 'from bot.config import example_toml; print(example_toml(), end=\"\")' > supportbot.example.toml"

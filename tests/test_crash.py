"""A real sync process killed with SIGKILL at several points; the next sync converges to a clean build."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import clean_build, index_content, write

pytestmark = pytest.mark.slow

SYNC = """
import sys
from pathlib import Path
from bot.app import build_knowledge_base
from bot.config import Settings
kb = build_knowledge_base(Settings(kb=Path(sys.argv[1]), data_dir=Path(sys.argv[2])).validate())
print("ready", flush=True)
kb.sync()
print("done", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.6, 1.5, 3.0])
def test_sigkill_during_sync_then_converge(make_kb, embeddings, tmp_path, delay):
    kb = make_kb({f"doc{i}.md": f"# Topic {i}\n\nAnswer number {i} is {i * 7} days." for i in range(10)})
    kb.sync()
    folder, live_before = kb.settings.kb, kb.store.current()
    for i in range(10, 150):  # enough work that the kill lands mid-sync
        write(folder / f"more/doc{i}.md", f"# Topic {i}\n\n" + " ".join(f"Fact {j} of page {i}." for j in range(40)))
    (folder / "doc3.md").unlink()
    write(folder / "doc4.md", "# Topic 4\n\nAnswer number 4 changed to 99 days.")
    proc = subprocess.Popen([sys.executable, "-c", SYNC, str(folder), str(kb.settings.data_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    assert proc.returncode == -signal.SIGKILL and proc.stdout.read() == ""  # killed before "done"
    assert kb.store.current() == live_before  # the kill landed mid-sync: the old generation is still live
    kb._view = None
    assert len(index_content(kb)) == 10  # and it loads whole
    kb.sync()
    assert index_content(kb) == clean_build(folder, tmp_path / "clean", embeddings)
    assert not list(kb.store.root.glob("tmp-*"))

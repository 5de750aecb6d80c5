"""The result types live in a leaf module that any module can import without a cycle."""

from __future__ import annotations

import subprocess
import sys


def test_attention_module_imports_nothing_of_attnviz():
    code = "import sys, attnviz.attention\nprint(sorted(m for m in sys.modules if m.startswith('attnviz')))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['attnviz', 'attnviz.attention']", out.stdout


def test_old_and_new_homes_are_the_same_types():
    import attnviz
    from attnviz import attention, extraction

    assert extraction.Attention is attention.Attention is attnviz.Attention
    assert extraction.QKV is attention.QKV is attnviz.QKV
    assert extraction.Encoded is attention.Encoded is attnviz.Encoded

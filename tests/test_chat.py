"""Chat templates, `LLM.chat`, conversations and `pyrt generate -cnv`.

Rendering is compared with llama-cpp-python's Jinja2ChatFormatter and with llama.cpp's built-in
gemma formatter (llama_chat_apply_template); the CLI is driven through a pipe with a synthetic model.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

import synthetic

import pyrt
from pyrt.errors import InvalidArgumentError, PyrtError, TokenizerError
from pyrt.runtime.chat import (CHATML_TEMPLATE, GEMMA_TEMPLATE, ChatTemplate, ChatTemplateError, Conversation,
                               chat_ids, resolve_template)

ROOT = Path(__file__).resolve().parents[1]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "  Wie geht's? 😀  "}, {"role": "assistant", "content": "Gut, danke.\n"},
     {"role": "user", "content": "Und dir?"}],
    [{"role": "system", "content": "Rules:\n1. be kind"}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("chat") / "llama-q8_0.gguf"
    synthetic.write_model(p, "llama", "Q8_0")
    return str(p)


@pytest.fixture(scope="module")
def llm(model_path):
    return pyrt.load(model_path, n_ctx=256, n_threads=1)


# -- rendering -------------------------------------------------------------------------------------

@pytest.mark.parametrize("add_gen", [True, False])
@pytest.mark.parametrize("source", [GEMMA_TEMPLATE, CHATML_TEMPLATE], ids=["gemma", "chatml"])
def test_render_matches_llama_cpp_python_jinja(source, add_gen):
    fmt_mod = pytest.importorskip("llama_cpp.llama_chat_format")
    mine = ChatTemplate(source, bos_token="<bos>", eos_token="<eos>")
    ref = fmt_mod.Jinja2ChatFormatter(source, eos_token="<eos>", bos_token="<bos>", add_generation_prompt=add_gen)
    for msgs in CONVERSATIONS:
        assert mine.render(msgs, add_generation_prompt=add_gen) == ref(messages=msgs).prompt


def _llama_builtin(name: str, msgs: list[dict], add_ass: bool) -> str:
    import llama_cpp
    arr = (llama_cpp.llama_chat_message * len(msgs))()
    keep = []
    for i, m in enumerate(msgs):
        r, c = m["role"].encode(), m["content"].encode()
        keep += [r, c]
        arr[i].role, arr[i].content = r, c
    buf = ctypes.create_string_buffer(8192)
    n = llama_cpp.llama_chat_apply_template(name.encode(), arr, len(msgs), add_ass, buf, 8192)
    assert 0 < n < 8192
    return buf.raw[:n].decode("utf-8")


def test_gemma_template_matches_llama_cpp_builtin():
    pytest.importorskip("llama_cpp")
    t = ChatTemplate(GEMMA_TEMPLATE, bos_token="<bos>")
    for msgs in CONVERSATIONS:
        text = t.render(msgs)
        assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<start_of_turn>model\n")
        assert text[len("<bos>"):] == _llama_builtin("gemma", msgs, True)


def test_chatml_literal():
    t = ChatTemplate(CHATML_TEMPLATE)
    assert t.render(CONVERSATIONS[1]) == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n"
                                          "Name a colour.<|im_end|>\n<|im_start|>assistant\n")


def test_template_helpers_and_errors():
    t = ChatTemplate("{{ messages | tojson }}|{{ strftime_now('%Y') | length }}|{{ bos_token }}{{ eos_token }}",
                     bos_token="<s>", eos_token="</s>")
    out = t.render([{"role": "user", "content": "é😀"}])
    assert out == '[{"role": "user", "content": "é😀"}]|4|<s></s>'
    with pytest.raises(ChatTemplateError, match="alternate"):
        ChatTemplate(GEMMA_TEMPLATE).render([{"role": "assistant", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="compile"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError):  # the sandbox refuses attribute escapes
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render([{"role": "u", "content": ""}])
    with pytest.raises(InvalidArgumentError):
        ChatTemplate(CHATML_TEMPLATE).render([])
    with pytest.raises(InvalidArgumentError):
        ChatTemplate(CHATML_TEMPLATE).render([{"content": "no role"}])
    assert issubclass(ChatTemplateError, PyrtError)


def test_resolve_template(tmp_path):
    assert resolve_template("chatml") == CHATML_TEMPLATE
    assert resolve_template("gemma") == GEMMA_TEMPLATE
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages[0].content }}", encoding="utf-8")
    assert resolve_template(str(f)) == "{{ messages[0].content }}"
    assert resolve_template("{{ 'x' }}") == "{{ 'x' }}"
    with pytest.raises(InvalidArgumentError):
        resolve_template("no-such-template")


# -- tokenization and generation ------------------------------------------------------------------

def test_chat_ids_single_bos(llm):
    tok = llm.tokenizer
    bos_text = tok.token_to_piece(tok.bos_id, special=True).decode()
    t = ChatTemplate.for_tokenizer("{{ bos_token }}{{ messages[0]['content'] }}", tok)
    assert t.bos_token == bos_text
    ids = chat_ids(tok, t.render([{"role": "user", "content": "the world"}]), t.bos_token)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert ids == tok.tokenize("the world", add_special=True, parse_special=True)
    # a template without BOS gets the vocabulary's BOS
    t2 = ChatTemplate.for_tokenizer("{{ messages[0]['content'] }}", tok)
    assert chat_ids(tok, t2.render([{"role": "user", "content": "the world"}]), t2.bos_token) == ids


def test_llm_chat_without_template_is_a_clear_error(llm):
    with pytest.raises(TokenizerError, match="no tokenizer.chat_template"):
        list(llm.chat([{"role": "user", "content": "hi"}]))


def test_gemma_file_without_template_falls_back_to_the_builtin_gemma_template(tmp_path):
    from test_swa_cache import write_gemma3

    from pyrt.runtime.chat import template_for

    path = tmp_path / "gemma3-tiny.gguf"
    write_gemma3(path)
    g = pyrt.load(path, n_ctx=128, n_threads=1, warmup=False)
    assert "tokenizer.chat_template" not in g.file.metadata
    t = template_for(g)
    assert t.origin == "built-in gemma" and t.source == GEMMA_TEMPLATE
    msgs = [{"role": "user", "content": "the world"}]
    out = "".join(g.chat(msgs, max_tokens=8, temperature=0.0, ignore_eos=True))
    assert len(out) > 0
    assert out == "".join(g.chat(msgs, max_tokens=8, temperature=0.0, ignore_eos=True, chat_template="gemma"))
    assert not Conversation(g, raw_if_no_template=True).raw


def test_llm_chat_greedy_equals_generate_ids(llm, monkeypatch):
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "the world"}]
    out = "".join(llm.chat(msgs, max_tokens=10, chat_template="chatml", temperature=0.0))
    text = ChatTemplate(CHATML_TEMPLATE).render(msgs)
    ref = "".join(llm.generate(text, max_tokens=10, temperature=0.0))  # special tokens parsed, vocab's BOS
    assert out == ref and len(out) > 0
    # the file's own template is used when present
    monkeypatch.setitem(llm.file.metadata, "tokenizer.chat_template", CHATML_TEMPLATE)
    monkeypatch.setattr(llm, "_chat_template_cache", None, raising=False)
    assert "".join(llm.chat(msgs, max_tokens=10, temperature=0.0)) == out


def test_conversation_keeps_history_and_reuses_cache(llm):
    conv = Conversation(llm, system_prompt="sys", chat_template="chatml")
    r1 = "".join(conv.send("hello", max_tokens=6, temperature=0.0))
    n_after_1 = len(llm._tokens)
    r2 = "".join(conv.send("again", max_tokens=6, temperature=0.0))
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conv.messages[2]["content"] == r1 and conv.messages[4]["content"] == r2
    assert len(llm._tokens) > n_after_1
    raw = Conversation(llm, system_prompt="Once", raw_if_no_template=True)
    assert raw.raw
    r = "".join(raw.send(" upon", max_tokens=4, temperature=0.0))
    assert raw.raw_text == "Once upon" + r
    with pytest.raises(TokenizerError):
        Conversation(llm)


# -- CLI -cnv through a pipe --------------------------------------------------------------------------

def _cnv(model_path, stdin: str, *extra) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("NUMBA_NUM_THREADS", "2")
    return subprocess.run([sys.executable, "-m", "pyrt.cli", "generate", "-m", model_path, "-c", "256", "-t", "1",
                           "--temp", "0", "-n", "6", "--no-warmup", "-cnv", *extra],
                          input=stdin, capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))


def test_cli_conversation_piped(model_path, llm):
    """llama-cli's display: `> ` and the turn (echoed: a pipe does not echo), the reply, a blank line; the
    header (model, KV, template) and the timings on stderr; empty lines are no turns."""
    r = _cnv(model_path, "hello\n\nagain\n", "--chat-template", "chatml", "-sys", "sys")
    assert r.returncode == 0, r.stderr
    conv = Conversation(llm, system_prompt="sys", chat_template="chatml")
    expect = ["".join(conv.send(u, max_tokens=6, temperature=0.0)) for u in ("hello", "again")]
    assert r.stdout == f"> hello\n{expect[0]}\n\n> again\n{expect[1]}\n\n", (r.stdout, expect)
    err = r.stderr
    assert "pyrt: model " in err and "KV self size" in err and "chat template: built-in chatml" in err
    assert "eval time" in err and "total time" in err and "Traceback" not in err
    # -p is the first turn
    r = _cnv(model_path, "again\n", "--chat-template", "chatml", "-sys", "sys", "-p", "hello")
    assert r.returncode == 0 and r.stdout == f"> hello\n{expect[0]}\n\n> again\n{expect[1]}\n\n"
    # no template in the file and none given: a warning, then plain completion
    r = _cnv(model_path, "the world\n")
    assert r.returncode == 0 and "no chat template" in r.stderr
    # a broken template is one error line before the model loads (a command-line error: exit 2)
    r = _cnv(model_path, "x\n", "--chat-template", "{% for %}")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: --chat-template '{% for %}': does not compile")
    assert "Traceback" not in r.stderr


def test_cli_conversation_on_a_terminal(model_path, llm):
    """stdin a terminal (a pty): `> ` before each turn (the terminal echoes what is typed, not stdout),
    the reply, a blank line; Ctrl-D ends with a newline."""
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.setdefault("NUMBA_NUM_THREADS", "2")
    p = subprocess.Popen([sys.executable, "-m", "pyrt.cli", "generate", "-m", model_path, "-c", "256", "-t", "1",
                          "--temp", "0", "-n", "6", "--no-warmup", "-cnv", "--chat-template", "chatml"],
                         stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=str(ROOT))
    os.close(slave)
    os.write(master, b"hello\n\x04")
    try:
        out, err = p.communicate(timeout=300)
    finally:
        os.close(master)
    assert p.returncode == 0, err
    conv = Conversation(llm, chat_template="chatml")
    reply = "".join(conv.send("hello", max_tokens=6, temperature=0.0))
    assert out == f"> {reply}\n\n> \n", (out, reply)


def test_cli_conversation_drops_a_turn_that_does_not_fit_and_goes_on(model_path, llm):
    long = " ".join(["the world"] * 40)  # ~320 tokens (toy vocabulary), n_ctx = 256
    r = _cnv(model_path, f"hello\n{long}\nagain\n", "--chat-template", "chatml")
    assert r.returncode == 0, r.stderr
    dropped = [ln for ln in r.stderr.splitlines() if "turn dropped" in ln]
    assert len(dropped) == 1 and "n_ctx = 256" in dropped[0], r.stderr
    conv = Conversation(llm, chat_template="chatml")
    expect = ["".join(conv.send(u, max_tokens=6, temperature=0.0)) for u in ("hello", "again")]
    assert r.stdout == f"> hello\n{expect[0]}\n\n> {long}\n\n> again\n{expect[1]}\n\n"
    assert "Traceback" not in r.stderr


def test_conversation_drops_the_oldest_exchanges_to_fit(llm):
    from pyrt.errors import ContextOverflowError

    conv = Conversation(llm, system_prompt="sys", chat_template="chatml")
    turn = " ".join(["the world"] * 6)  # ~50 tokens a turn (toy vocabulary); n_ctx = 256
    for _ in range(6):
        "".join(conv.send(turn, max_tokens=4, temperature=0.0, ignore_eos=True))
    assert conv.n_trimmed > 0 and conv.messages[0] == {"role": "system", "content": "sys"}
    roles = [m["role"] for m in conv.messages]
    assert roles[1:] == ["user", "assistant"] * ((len(roles) - 1) // 2) and len(roles) < 13
    before = list(conv.messages)
    with pytest.raises(ContextOverflowError, match="n_ctx = 256"):
        conv.send(" ".join(["the world"] * 40))
    assert conv.messages == before  # a turn that cannot fit changes nothing


# -- the real vocabulary ---------------------------------------------------------------------------

@pytest.mark.slow
def test_gemma_chat_ids_match_llama_cpp(gemma_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from pyrt.io.gguf_file import GGUFFile
    from pyrt.runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_metadata(GGUFFile(gemma_path).metadata)
    t = ChatTemplate.for_tokenizer(GEMMA_TEMPLATE, tok)
    assert t.bos_token == "<bos>" and t.eos_token == "<eos>"
    ref = llama_cpp.Llama(gemma_path, vocab_only=True, verbose=False)
    end_of_turn = tok.tokenize("<end_of_turn>", add_special=False, parse_special=True)
    assert len(end_of_turn) == 1 and tok.is_eog(end_of_turn[0])
    for msgs in CONVERSATIONS:
        text = t.render(msgs)
        ids = chat_ids(tok, text, t.bos_token)
        # llama.cpp: common_chat_templates_apply drops the leading BOS text, then tokenizes with add_special
        want = ref.tokenize(text[len("<bos>"):].encode(), add_bos=True, special=True)
        assert ids == want
        assert ids.count(tok.bos_id) == 1 and end_of_turn[0] in ids

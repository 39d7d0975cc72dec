"""Chat templates (Jinja, as llama.cpp's --jinja path and Hugging Face render them) and conversations.

`ChatTemplate` renders `tokenizer.chat_template` (or an override: Jinja text, a file, a built-in name) in a
sandboxed jinja2 environment; `chat_ids` turns the rendered text into prompt ids without a doubled BOS;
`Conversation` keeps a message history whose common prefix stays in the KV cache between turns.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Iterator

from ..errors import ContextOverflowError, InvalidArgumentError, PyrtError, TokenizerError

# llama.cpp's fallback (common/chat.cpp CHATML_TEMPLATE_SRC)
CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)

# Gemma 3 instruction-tuned models' template (the system message is folded into the first user turn)
GEMMA_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE, "gemma": GEMMA_TEMPLATE}

# The built-in template an architecture falls back to when its file has no tokenizer.chat_template (base
# models such as the default Gemma 3 270M): the turn format its vocabulary's special tokens were made for.
# Other architectures without a template raise TokenizerError (the library) or run as plain completion (-cnv).
ARCH_TEMPLATES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}


class ChatTemplateError(PyrtError):
    """The chat template cannot be compiled or rendered (or raised an exception itself)."""


def _tojson(x, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    # Hugging Face's tojson: no HTML escaping, non-ASCII kept
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    raise ChatTemplateError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def resolve_template(spec: str) -> str:
    """Template source from a --chat-template value: a built-in name, a file path, or Jinja text."""
    if spec in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[spec]
    if "{" not in spec and os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as fh:
                return fh.read()
        except OSError as e:
            raise InvalidArgumentError(f"cannot read chat template file {spec}: {e.strerror}") from None
    if "{%" in spec or "{{" in spec:
        return spec
    raise InvalidArgumentError(
        f"chat template {spec!r} is not a built-in name ({', '.join(BUILTIN_TEMPLATES)}), a file, or Jinja text")


class ChatTemplate:
    """A compiled Jinja chat template with the tokenizer's BOS/EOS texts."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", origin: str = "given"):
        try:
            import jinja2
            import jinja2.ext
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise PyrtError("chat templates need jinja2: pip install jinja2 (or pip install pyrt[chat])") from None
        self.source = source
        self.origin = origin  # where the template came from, for messages: "given", "file", "built-in gemma"
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        try:
            self._tmpl = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"chat template does not compile: {e}") from None
        self._jinja_error = jinja2.TemplateError

    @classmethod
    def for_tokenizer(cls, source: str, tokenizer, origin: str = "given") -> "ChatTemplate":
        def text(t):
            return "" if t is None else tokenizer.token_to_piece(t, special=True).decode("utf-8", "replace")
        return cls(source, text(tokenizer.bos_id), text(tokenizer.eos_id), origin=origin)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
        _check_messages(messages)
        try:
            return self._tmpl.render(messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
                                     add_generation_prompt=add_generation_prompt, **extra)
        except ChatTemplateError:
            raise
        except (self._jinja_error, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ChatTemplateError(f"chat template failed to render: {type(e).__name__}: {e}") from None


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidArgumentError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidArgumentError(f"messages[{i}] must be a dict with 'role' and 'content'")


def template_for(llm, chat_template: str | None = None) -> ChatTemplate:
    """The LLM's template: `chat_template` (name, file or Jinja text), else the file's tokenizer.chat_template,
    else the built-in template of the file's architecture (ARCH_TEMPLATES)."""
    if chat_template is not None:
        origin = f"built-in {chat_template}" if chat_template in BUILTIN_TEMPLATES else "given"
        return ChatTemplate.for_tokenizer(resolve_template(chat_template), llm.tokenizer, origin=origin)
    cached = getattr(llm, "_chat_template_cache", None)
    if cached is not None:
        return cached
    src = llm.file.metadata.get("tokenizer.chat_template")
    if src:
        tmpl = ChatTemplate.for_tokenizer(str(src), llm.tokenizer, origin="file")
    else:
        arch = str(llm.file.metadata.get("general.architecture", ""))
        name = ARCH_TEMPLATES.get(arch)
        if name is None:
            raise TokenizerError(
                f"{llm.file.path}: the file has no tokenizer.chat_template; pass a template (chat_template= or "
                f"--chat-template: Jinja text, a file, or one of {', '.join(BUILTIN_TEMPLATES)}) or use plain "
                f"completion")
        tmpl = ChatTemplate.for_tokenizer(BUILTIN_TEMPLATES[name], llm.tokenizer, origin=f"built-in {name}")
    llm._chat_template_cache = tmpl
    return tmpl


def chat_ids(tokenizer, text: str, bos_token: str = "") -> list[int]:
    """Prompt ids of a rendered chat, as llama.cpp: a leading BOS text is dropped when the vocabulary adds
    BOS itself, then the text is tokenized with special tokens parsed."""
    if tokenizer.add_bos and bos_token and text.startswith(bos_token):
        text = text[len(bos_token):]
    return tokenizer.tokenize(text, add_special=True, parse_special=True)


def chat(llm, messages: list[dict], max_tokens: int = -1, chat_template: str | None = None,
         add_generation_prompt: bool = True, **sampling) -> Iterator[str]:
    """Renders `messages`, generates the assistant's reply and yields its text pieces (stops at EOG)."""
    tmpl = template_for(llm, chat_template)
    text = tmpl.render(list(messages), add_generation_prompt=add_generation_prompt)
    ids = chat_ids(llm.tokenizer, text, tmpl.bos_token)
    return _stream(llm, ids, max_tokens, sampling)


def _stream(llm, ids: list[int], max_tokens: int, sampling: dict) -> Iterator[str]:
    return llm.stream_text(ids, max_tokens=max_tokens, **sampling)


class Conversation:
    """A multi-turn chat on one LLM (sequence 0). Without a template it is a running raw completion."""

    def __init__(self, llm, system_prompt: str | None = None, chat_template: str | None = None,
                 raw_if_no_template: bool = False):
        self.llm = llm
        self.messages: list[dict] = []
        self.raw_text = ""
        self.n_trimmed = 0  # user/assistant exchanges dropped to fit the context
        try:
            self.template: ChatTemplate | None = template_for(llm, chat_template)
        except TokenizerError:
            if not raw_if_no_template:
                raise
            self.template = None
        if system_prompt:
            if self.template is None:
                self.raw_text = system_prompt
            else:
                self.messages.append({"role": "system", "content": system_prompt})

    @property
    def raw(self) -> bool:
        return self.template is None

    def send(self, user_text: str, max_tokens: int = -1, **sampling) -> Iterator[str]:
        """Adds a user turn and returns an iterator over the reply's text pieces; the reply joins the history
        when the iterator ends. If the history and the turn do not fit the context, the oldest user/assistant
        exchanges are dropped first (counted in `n_trimmed`; the system message stays); a turn that does not
        fit even alone raises ContextOverflowError here, before anything is generated, and the history is
        unchanged."""
        msgs, prompt, ids = self._fit(user_text)
        return self._reply(msgs, prompt, ids, max_tokens, sampling)

    def _render(self, msgs: list[dict], user_text: str) -> tuple[str, list[int]]:
        if self.template is None:
            prompt = self.raw_text + user_text
            return prompt, self.llm.tokenize(prompt)
        text = self.template.render(msgs, add_generation_prompt=True)
        return "", chat_ids(self.llm.tokenizer, text, self.template.bos_token)

    def _fit(self, user_text: str):
        limit = self.llm.n_ctx - 4  # LLM.check_prompt's limit
        history = list(self.messages)
        first = 1 if history and history[0]["role"] == "system" else 0
        dropped = 0
        while True:
            msgs = history + [{"role": "user", "content": user_text}]
            prompt, ids = self._render(msgs, user_text)
            if len(ids) <= limit:
                break
            if self.template is None or len(history) - first < 2:
                what = ("the text so far with this turn" if self.template is None else
                        "the turn" if first == 0 else "the turn with the system message")
                raise ContextOverflowError(
                    f"{what} is {len(ids)} tokens; the context holds {limit} (n_ctx = {self.llm.n_ctx}, -c)")
            del history[first:first + 2]  # the oldest user turn and its reply
            dropped += 1
        if dropped:
            self.messages = history
            self.n_trimmed += dropped
        return msgs, prompt, ids

    def _reply(self, msgs, prompt, ids, max_tokens, sampling) -> Iterator[str]:
        reply = []
        for piece in _stream(self.llm, ids, max_tokens, sampling):
            reply.append(piece)
            yield piece
        reply_text = "".join(reply)
        if self.template is None:
            self.raw_text = prompt + reply_text
        else:
            self.messages = msgs + [{"role": "assistant", "content": reply_text}]

"""Chat templates (Jinja, as llama.cpp's --jinja path and Hugging Face render them) and conversations.

`ChatTemplate` renders `tokenizer.chat_template` (or an override: Jinja text, a file, a built-in name) in a
sandboxed jinja2 environment. A template is code from a model file, so rendering is bounded: strings and
lists it builds (MAX_LEN), the values it prints and the output (MAX_OUTPUT), integer arguments, macro /
recursive-loop depth (MAX_DEPTH) and time (MAX_SECONDS); any failure is one ChatTemplateError line naming
the template. `chat_ids` turns the rendered text into prompt ids without a doubled BOS;
`Conversation` keeps a message history whose common prefix stays in the KV cache between turns.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
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
    raise ChatTemplateError(f"raise_exception: {message}")


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


# bounds of one render (a real template renders a long conversation in milliseconds, far below them)
MAX_LEN = 1 << 20      # characters of a string, items of a list, value of an integer argument
MAX_OUTPUT = 4 << 20   # characters of the rendered text, and the size of any value printed or converted
MAX_DEPTH = 64         # nested macro / recursive-loop calls
MAX_SECONDS = 2.0      # render time
_BIG_WIDTH = re.compile(r"[%:{][^%{}]*?\d{7,}")  # a format width/precision of a million or more


class _TooBig(Exception):
    pass


def _size(x, limit: int = MAX_OUTPUT) -> int:
    """Characters + items of a value, counted through nested containers up to `limit` (then _TooBig)."""
    total, stack = 0, [x]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += len(v)
            if total <= limit:
                stack.extend(v)
        elif isinstance(v, dict):
            total += 2 * len(v)
            if total <= limit:
                stack.extend(v.keys())
                stack.extend(v.values())
        else:
            total += 1
        if total > limit:
            raise _TooBig(f"a value larger than {limit} characters/items")
    return total


def _make_environment():
    import jinja2
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.runtime import LoopContext, Macro
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+", "%", "/", "//"])

        def __init__(self, **kw):
            super().__init__(**kw)
            self._render = threading.local()  # deadline and depth of the render in this thread
            self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs; no chat template needs it
            self.globals.update(_pyrt_iter=self._iter, _pyrt_concat=self._concat)
            for name, f in list(self.filters.items()):
                self.filters[name] = self._bounded_filter(name, f)

        # -- time and depth ----------------------------------------------------------------------
        def begin(self) -> None:
            self._render.deadline = time.monotonic() + MAX_SECONDS
            self._render.depth = 0

        def tick(self) -> None:
            deadline = getattr(self._render, "deadline", None)
            if deadline is not None and time.monotonic() > deadline:
                raise _TooBig(f"rendering took more than {MAX_SECONDS:g} s")

        def _iter(self, it):
            self.tick()
            for i, x in enumerate(it):
                if i & 255 == 255:
                    self.tick()
                yield x

        # -- sizes -------------------------------------------------------------------------------
        @staticmethod
        def _check_args(args, kwargs) -> None:
            for v in (*args, *kwargs.values()):
                if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_LEN:
                    raise _TooBig(f"an integer argument of {v} (more than {MAX_LEN})")

        @staticmethod
        def _check_format(fmt) -> None:
            if isinstance(fmt, str) and _BIG_WIDTH.search(fmt):
                raise _TooBig("a format width or precision of a million or more")

        def _concat(self, parts):
            self.tick()
            for p in parts:
                _size(p)
            out = "".join(str(p) for p in parts)
            if len(out) > MAX_LEN:
                raise _TooBig(f"a string longer than {MAX_LEN} characters")
            return out

        def call_binop(self, context, operator, left, right):
            self.tick()
            num = (int, float)
            if operator == "*":
                seq, k = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(seq, (str, list, tuple)) and isinstance(k, int) and len(seq) * max(k, 0) > MAX_LEN:
                    raise _TooBig(f"repeating {len(seq)} items {k} times (more than {MAX_LEN})")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and \
                        right * abs(left).bit_length() > 4096:
                    raise _TooBig(f"{left} ** {right} (more than 4096 bits)")
            elif operator == "+":
                if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) and \
                        len(left) + len(right) > MAX_LEN:
                    raise _TooBig(f"a string or list longer than {MAX_LEN}")
            elif operator == "%" and isinstance(left, str):
                self._check_format(left)
                self._check_args(right if isinstance(right, tuple) else (right,), {})
            elif operator in ("/", "//") and not (isinstance(left, num) and isinstance(right, num)):
                pass  # the operator raises its own TypeError
            return super().call_binop(context, operator, left, right)

        def wrap_str_format(self, value):
            f = super().wrap_str_format(value)
            if f is not None:
                self._check_format(value.__self__)
            return f

        def _amplifies(self, obj, name: str, args, kwargs) -> None:
            """Checks for the calls whose result can be much larger than their arguments."""
            if name in ("replace",) and isinstance(obj, str) and len(args) >= 2:
                old, new = args[0], args[1]
                if isinstance(old, str) and isinstance(new, str):
                    n = len(obj) + 1 if old == "" else obj.count(old)
                    if len(obj) + n * len(new) > MAX_LEN:
                        raise _TooBig(f"a replace() result longer than {MAX_LEN} characters")
            elif name == "join" and isinstance(obj, str) and args:  # str.join(items)
                items = args[0]
                if isinstance(items, (list, tuple)) and _size(items) + len(items) * len(obj) > MAX_LEN:
                    raise _TooBig(f"a join() result longer than {MAX_LEN} characters")
            elif name == "expandtabs" and isinstance(obj, str):
                tab = args[0] if args else kwargs.get("tabsize", 8)
                if isinstance(tab, int) and obj.count("\t") * tab > MAX_LEN:
                    raise _TooBig(f"an expandtabs() result longer than {MAX_LEN} characters")

        def call(__self, __context, __obj, *args, **kwargs):
            __self.tick()
            __self._check_args(args, kwargs)
            name = getattr(__obj, "__name__", "")
            __self._amplifies(getattr(__obj, "__self__", None), name, args, kwargs)
            deep = isinstance(__obj, (Macro, LoopContext))
            if deep:
                __self._render.depth = getattr(__self._render, "depth", 0) + 1
                if __self._render.depth > MAX_DEPTH:
                    raise _TooBig(f"macros or recursive loops nested more than {MAX_DEPTH} deep")
            try:
                out = super().call(__context, __obj, *args, **kwargs)
            finally:
                if deep:
                    __self._render.depth -= 1
            if isinstance(out, (str, list, tuple)) and len(out) > MAX_LEN:
                raise _TooBig(f"a call result longer than {MAX_LEN}")
            return out

        def _bounded_filter(self, name, f):
            import functools

            @functools.wraps(f)  # keeps jinja's pass_context / pass_environment marks
            def bounded(*args, **kwargs):
                self.tick()
                self._check_args(args, kwargs)
                values = [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.Environment,
                                                               jinja2.nodes.EvalContext))]
                if values:
                    _size(values[0])  # the filtered value: what string/tojson/join would convert
                    if name == "join" and len(values) >= 2 and isinstance(values[1], str) and \
                            isinstance(values[0], (list, tuple)) and \
                            _size(values[0]) + len(values[0]) * len(values[1]) > MAX_LEN:
                        raise _TooBig(f"a join result longer than {MAX_LEN} characters")
                    if name == "replace" and len(values) >= 3:
                        self._amplifies(str(values[0]), "replace", values[1:], {})
                    if name == "indent" and isinstance(values[0], str) and len(values) >= 2 and \
                            isinstance(values[1], str) and (values[0].count("\n") + 1) * len(values[1]) > MAX_LEN:
                        raise _TooBig(f"an indent result longer than {MAX_LEN} characters")
                    if name == "format":
                        self._check_format(values[0])
                out = f(*args, **kwargs)
                if isinstance(out, (str, list, tuple)) and len(out) > MAX_LEN:
                    raise _TooBig(f"a filter result longer than {MAX_LEN}")
                return out
            return bounded

        def _generate(self, source, name, filename, defer_init=False):
            # every for-loop's iterable through _pyrt_iter (time checks inside loops that call nothing),
            # every `~` through _pyrt_concat (its size)
            for node in source.find_all(nodes.For):
                node.iter = nodes.Call(nodes.Name("_pyrt_iter", "load"), [node.iter], [], None, None)
            for node in list(source.find_all(nodes.Concat)):
                parts = node.nodes
                node.nodes = [nodes.Call(nodes.Name("_pyrt_concat", "load"), [nodes.List(parts)], [], None, None)]
            return super()._generate(source, name, filename, defer_init)

    def finalize(value):
        _size(value)  # what {{ ... }} prints
        return value

    env = BoundedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                             extensions=[jinja2.ext.loopcontrols], finalize=finalize)
    env.optimized = False  # no constant folding: nothing of the template runs at compile time
    return env


class ChatTemplate:
    """A compiled Jinja chat template with the tokenizer's BOS/EOS texts; `name` says where it came from."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str = "chat template",
                 origin: str = "given"):
        try:
            import jinja2
        except ImportError:
            raise PyrtError("chat templates need jinja2: pip install jinja2 (or pip install pyrt[chat])") from None
        self.source = source
        self.origin = origin  # where the template came from, for messages: "given", "file", "built-in gemma"
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = _make_environment()
        env.filters["tojson"] = env._bounded_filter("tojson", _tojson)
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        self._env = env
        try:
            self._tmpl = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"{name}: does not compile: {_one_line(e)}") from None
        except Exception as e:  # a parser or compiler failure on a hostile source
            raise ChatTemplateError(f"{name}: does not compile: {type(e).__name__}: {_one_line(e)}") from None

    @classmethod
    def for_tokenizer(cls, source: str, tokenizer, origin: str = "given",
                      name: str = "chat template") -> "ChatTemplate":
        def text(t):
            return "" if t is None else tokenizer.token_to_piece(t, special=True).decode("utf-8", "replace")
        return cls(source, text(tokenizer.bos_id), text(tokenizer.eos_id), origin=origin, name=name)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
        _check_messages(messages)
        env = self._env
        env.begin()
        try:
            out, n = [], 0
            for piece in self._tmpl.generate(messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
                                             add_generation_prompt=add_generation_prompt, **extra):
                n += len(piece)
                if n > MAX_OUTPUT:
                    raise _TooBig(f"the output is longer than {MAX_OUTPUT} characters")
                env.tick()
                out.append(piece)
            return "".join(out)
        except ChatTemplateError as e:
            raise ChatTemplateError(f"{self.name}: {e}") from None
        except _TooBig as e:
            raise ChatTemplateError(f"{self.name}: refused to render: {e}") from None
        except Exception as e:  # whatever the template's code raised (ZeroDivisionError, RecursionError ...)
            raise ChatTemplateError(f"{self.name}: failed to render: {type(e).__name__}: {_one_line(e)}") from None
        finally:
            env._render.deadline = None


def _one_line(e) -> str:
    return " ".join(str(e).split())


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
        return ChatTemplate.for_tokenizer(resolve_template(chat_template), llm.tokenizer, origin=origin,
                                          name=f"chat template {chat_template[:40]!r}")
    cached = getattr(llm, "_chat_template_cache", None)
    if cached is not None:
        return cached
    src = llm.file.metadata.get("tokenizer.chat_template")
    if src:
        tmpl = ChatTemplate.for_tokenizer(str(src), llm.tokenizer, origin="file",
                                         name=f"tokenizer.chat_template of {llm.file.path}")
    else:
        arch = str(llm.file.metadata.get("general.architecture", ""))
        name = ARCH_TEMPLATES.get(arch)
        if name is None:
            raise TokenizerError(
                f"{llm.file.path}: the file has no tokenizer.chat_template; pass a template (chat_template= or "
                f"--chat-template: Jinja text, a file, or one of {', '.join(BUILTIN_TEMPLATES)}) or use plain "
                f"completion")
        tmpl = ChatTemplate.for_tokenizer(BUILTIN_TEMPLATES[name], llm.tokenizer, origin=f"built-in {name}",
                                         name=f"built-in {name} chat template")
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

"""Turning chat messages into the prompt text the model was trained on.

The template is the Jinja ``tokenizer.chat_template`` stored in the GGUF, rendered in a
sandbox (the template is data from a file, not trusted code). A model without one gets
ChatML, the most widely used format, and ``<|im_end|>`` as an extra stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from haven.contracts.openai import ChatMessage

TEMPLATE_METADATA_KEY = "tokenizer.chat_template"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_STOP = "<|im_end|>"


class ChatTemplateError(ValueError):
    """The messages cannot be rendered by the model's template (e.g. roles out of order)."""


def _raise_exception(message: str) -> NoReturn:
    # Templates call raise_exception(...) to refuse conversations they do not support.
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now(UTC).strftime(fmt)


def _role(message: ChatMessage) -> str:
    # OpenAI's newer name for the system role; model templates only know "system".
    return "system" if message.role == "developer" else message.role


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    origin: Literal["gguf", "fallback"]
    bos_token: str
    eos_token: str
    extra_stops: tuple[str, ...] = ()
    _compiled: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_metadata(
        cls, metadata: dict[str, str], bos_token: str, eos_token: str
    ) -> ChatTemplate:
        source = metadata.get(TEMPLATE_METADATA_KEY)
        if source:
            return cls._compile(source, "gguf", bos_token, eos_token, ())
        return cls._compile(CHATML_TEMPLATE, "fallback", bos_token, eos_token, (CHATML_STOP,))

    @classmethod
    def _compile(
        cls,
        source: str,
        origin: Literal["gguf", "fallback"],
        bos_token: str,
        eos_token: str,
        extra_stops: tuple[str, ...],
    ) -> ChatTemplate:
        # trim_blocks / lstrip_blocks: the settings Hugging Face renders these templates with.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        return cls(source, origin, bos_token, eos_token, extra_stops, env.from_string(source))

    def render(self, messages: Sequence[ChatMessage]) -> str:
        try:
            return str(
                self._compiled.render(
                    messages=[{"role": _role(m), "content": m.text()} for m in messages],
                    add_generation_prompt=True,
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                )
            )
        except ChatTemplateError:
            raise
        except TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc

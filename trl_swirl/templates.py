"""How transitions become prompts (for the policy) and scoring contexts (for the partner).

Both directions are plain Python format strings over the fields ``{state}``, ``{action}``, ``{next_state}`` and,
optionally, ``{history}`` (earlier states of a multi-turn row, one per line):

* the **FWM template** renders (x, z): it is the FWM's prompt in phase ``fwm`` and the FWM's scoring context in phase
  ``idm`` (where ``{action}`` is the IDM's generated action);
* the **IDM template** renders (x, y): it is the IDM's prompt in phase ``idm`` and the IDM's scoring context in phase
  ``fwm`` (where ``{next_state}`` is the FWM's generated next state).

A model therefore always sees the same layout, whether it is being trained or used as the frozen partner, and the
layout matches what the warm-start SFT teaches (prompt = template, completion = target).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

DEFAULT_FWM_TEMPLATE = "State:\n{state}\nAction:\n{action}\nNext state:\n"
DEFAULT_IDM_TEMPLATE = "State:\n{state}\nNext state:\n{next_state}\nAction:\n"

PHASES = ("fwm", "idm")
ALLOWED_FIELDS = {"state", "action", "next_state", "history"}
# fields each template must use, and the field it must never use (the quantity its model predicts)
_REQUIRED = {"fwm": {"state", "action"}, "idm": {"state", "next_state"}}
_FORBIDDEN = {"fwm": "next_state", "idm": "action"}


def template_fields(template: str) -> list[str]:
    """Names of the replacement fields of a format string, in order, without duplicates
    (``"{state} {action}"`` -> ``["state", "action"]``); nested fields of format specs count too. A positional
    field (``{}``, ``{0}``) is a `ValueError`: templates use named fields."""
    names: list[str] = []
    for _, field_name, format_spec, _ in string.Formatter().parse(template):
        if field_name is None:
            continue
        base = re.split(r"[.\[]", field_name, maxsplit=1)[0]
        if base == "" or base.isdigit():
            raise ValueError(
                f"Template {template!r} has a positional field {{{field_name}}}; use named fields such as {{state}}."
            )
        if base not in names:
            names.append(base)
        if format_spec:  # nested fields, e.g. "{state:>{width}}"
            names.extend(n for n in template_fields(format_spec) if n not in names)
    return names


def validate_template(template: str, direction: str, option_name: str | None = None) -> None:
    """Check a template for the ``fwm`` or ``idm`` direction; raise a `ValueError` naming the option and the fix."""
    option_name = option_name or f"{direction}_template"
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"`{option_name}` must be a non-empty format string, got {template!r}.")
    try:
        fields = set(template_fields(template))
    except ValueError as err:
        raise ValueError(f"`{option_name}` is not a valid format string ({err}): {template!r}") from err
    unknown = fields - ALLOWED_FIELDS
    if unknown:
        raise ValueError(
            f"`{option_name}` uses unknown field(s) {sorted(unknown)}; the allowed fields are "
            f"{sorted(ALLOWED_FIELDS)} (write literal braces as '{{{{' and '}}}}')."
        )
    missing = _REQUIRED[direction] - fields
    if missing:
        raise ValueError(
            f"`{option_name}` must contain the field(s) {sorted('{' + m + '}' for m in missing)}: "
            f"{'P(y | x, z) needs the state and the action' if direction == 'fwm' else 'Q(z | x, y) needs both states'}."
        )
    forbidden = _FORBIDDEN[direction]
    if forbidden in fields:
        raise ValueError(
            f"`{option_name}` must not contain '{{{forbidden}}}': that is what the {direction.upper()} predicts, and "
            "putting it in the prompt would leak the answer."
        )


def format_history(history: Sequence[str] | str | None) -> str:
    if history is None:
        return ""
    if isinstance(history, str):
        return history
    return "\n".join(str(h) for h in history)


def render(template: str, **values: Any) -> str:
    """Fill ``template`` with the fields it uses; ``history`` lists are joined one state per line."""
    fields = template_fields(template)
    kwargs = {}
    for name in fields:
        if name == "history":
            kwargs[name] = format_history(values.get("history"))
        elif values.get(name) is None:
            raise ValueError(f"The template {template!r} needs the field '{name}', which was not given.")
        else:
            kwargs[name] = values[name]
    return template.format(**kwargs)


def as_messages(text: str) -> list[dict[str, str]]:
    """The conversational form of a rendered template: one user turn."""
    return [{"role": "user", "content": text}]


def completion_text(completion: Any) -> str:
    """Text of a TRL completion: a string (standard format) or a list of messages (conversational format)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal content blocks
            content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        return content
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(f"Unsupported completion type {type(completion).__name__}: expected a string or a list of messages.")


class SwirlTemplates:
    """The pair of templates, plus the rules that turn a dataset row into each phase's prompt, context and target."""

    def __init__(
        self,
        fwm_template: str = DEFAULT_FWM_TEMPLATE,
        idm_template: str = DEFAULT_IDM_TEMPLATE,
        prompt_format: str = "text",
    ):
        validate_template(fwm_template, "fwm")
        validate_template(idm_template, "idm")
        if prompt_format not in ("text", "conversational"):
            raise ValueError(f"`prompt_format` must be 'text' or 'conversational', got {prompt_format!r}.")
        self.fwm_template = fwm_template
        self.idm_template = idm_template
        self.prompt_format = prompt_format

    def template_for(self, direction: str) -> str:
        return self.fwm_template if direction == "fwm" else self.idm_template

    def prompt_text(self, phase: str, *, state, action=None, next_state=None, history=None) -> str:
        """Text of the policy's prompt in ``phase``: (x, z) for ``fwm``, (x, y) for ``idm``."""
        if phase == "fwm":
            return render(self.fwm_template, state=state, action=action, history=history)
        return render(self.idm_template, state=state, next_state=next_state, history=history)

    def prompt(self, phase: str, **row):
        text = self.prompt_text(phase, **row)
        return as_messages(text) if self.prompt_format == "conversational" else text

    def partner_context_text(self, phase: str, *, state, generated: str, history=None) -> str:
        """Text of the partner's context: the opposite direction's template with the generated piece in its slot."""
        if phase == "fwm":  # the IDM scores the action given (x, generated y)
            return render(self.idm_template, state=state, next_state=generated, history=history)
        return render(self.fwm_template, state=state, action=generated, history=history)  # FWM scores y given (x, z^)

"""Values from the environment, the model's conf or a default, each remembered with where it came from."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from megatron_sft.errors import UserError


class LaunchError(UserError):
    """A setting the launch refuses; printed as `<script>: error: <line>` with exit code 2."""


class Settings:
    """Environment > CONF_<NAME> of the model's conf > default, and the lines of the settings block."""

    def __init__(self, env: Mapping[str, str], conf: Mapping[str, str]):
        self.env, self.conf = env, dict(conf)
        self.lines: list[str] = []
        self.command_line: list[str] = []  # flags given after MODEL (appended last)

    def lookup(self, name: str, default: str = "") -> tuple[str, str]:
        """(value, origin): origin is env, conf or default. An empty variable counts as unset, as in bash."""
        if self.env.get(name):
            return self.env[name], "env"
        if self.conf.get(f"CONF_{name}"):
            return self.conf[f"CONF_{name}"], "conf"
        return default, "default"

    def setting(self, name: str, default: str = "") -> str:
        value, origin = self.lookup(name, default)
        self.note(name, value, origin)
        return value

    def given(self, name: str) -> str:
        """A variable only the environment sets (no conf value, no default)."""
        return self.env.get(name, "")

    def note(self, name: str, value: str, origin: str = "") -> None:
        self.lines.append(f"{name:<15} {value or '(none)'}{f'  ({origin})' if origin else ''}")

    def positive_int(self, name: str, value: str) -> int:
        if not value.isdigit() or int(value) < 1:
            raise LaunchError(f"{name}={value}: must be a positive integer")
        return int(value)

    def choice(self, name: str, default: str, allowed: dict[str, str]) -> str:
        value = self.setting(name, default)
        if value not in allowed:
            uses = " or ".join(f"{k} ({v})" for k, v in allowed.items())
            raise LaunchError(f"{name}={value}: use {uses}")
        return value


def words(text: str) -> list[str]:
    """A flags variable (MLM_*_ARGS) as words: split like the shell would, quotes allowed."""
    try:
        return shlex.split(text)
    except ValueError as err:
        raise LaunchError(f"cannot split {text!r} into flags: {err}") from None


def has_flag(flag: str, *texts: str) -> bool:
    return any(w == flag or w.startswith(flag + "=") for text in texts for w in words(text))


RUN_LENGTH_SETTERS = ("--train-iters", "--train-samples", "--train-epochs")
RUN_LENGTH_FLAGS = ("--train-iters", "--train-samples", "--lr-decay-iters", "--lr-decay-samples",
                    "--lr-warmup-samples")


def drop_run_length(text: str) -> str:
    """The flags without the run-length ones and their values (EPOCHS replaces them)."""
    return drop_flags(text, RUN_LENGTH_FLAGS)


def drop_flags(text: str, flags: tuple[str, ...]) -> str:
    """The flags of `text` without `flags` (each taking one value)."""
    kept, skip = [], False
    for word in words(text):
        if skip:
            skip = False
        elif word in flags:
            skip = True
        elif not word.startswith(tuple(f + "=" for f in flags)):
            kept.append(word)
    return shlex.join(kept)

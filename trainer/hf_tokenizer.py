"""The run's tokenizer as the files Hugging Face loads: ``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json`` and the token ids of ``generation_config.json``.

A ``tokenizer.json`` alone is not enough for ``AutoTokenizer`` and ``pipeline()``: it does not say which token
is BOS, EOS, PAD or UNK, so padding a batch fails and generation never stops. Those roles are what the
tokenizer's folder declares (``tokenizer_config.json``'s ``eos_token``... , else ``special_tokens_map.json``:
:func:`declared_roles`), and for a role it does not declare, the names tokenizers give them (BLOOM's
``<unk> <s> </s> <pad>``, which bigops' own BPE uses too, GPT-2's ``<|endoftext|>``, ...). A role the
tokenizer has no token for falls back to the EOS token, as GPT-2's tokenizer does for all three. A run keeps
the declared roles beside its tokenizer (``RUN/data/special_tokens_map.json``: :func:`keep_tokenizer`), so the
end-of-document token of its data and the roles of its exports are the source folder's. Padding is on the left: a causal LM generates after the prompt's last token,
and BLOOM's own tokenizer ships ``padding_side: left``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainer.rundir import SPECIAL_TOKENS_MAP, TOKENIZER, atomic_write_text

ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "eos": ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]"),
    "bos": ("<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "<|bos|>", "[CLS]"),
    "pad": ("<pad>", "<|pad|>", "<|padding|>", "[PAD]"),
    "unk": ("<unk>", "<|unk|>", "[UNK]"),
}
"""Each role's usual token names, the first present wins."""

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
"""The class ``tokenizer_config.json`` names: every ``transformers`` release since 3.x resolves it (5.x
would write its own ``TokenizersBackend``, which 4.x, vLLM's and TGI's pinned releases do not know)."""


TOKENIZER_CONFIG = "tokenizer_config.json"
ROLES = tuple(ROLE_NAMES)


class TokenizerExportError(ValueError):
    """The run's ``tokenizer.json`` cannot be read or written as HF tokenizer files; one line."""


@dataclass(frozen=True)
class SpecialTokens:
    """The token (text and id) of each role; ``eos`` None when the tokenizer has none of ROLE_NAMES["eos"]
    (then no role is set: nothing to fall back to)."""

    tokens: dict[str, str]
    ids: dict[str, int]

    @property
    def eos(self) -> str | None:
        return self.tokens.get("eos")

    def config_ids(self) -> dict[str, int]:
        """``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` for config.json and generation_config.json."""
        return {f"{role}_token_id": self.ids[role] for role in ("bos", "eos", "pad") if role in self.ids}


def declared_roles(tokenizer_file: Path) -> dict[str, str]:
    """The roles the tokenizer's folder declares: ``{"eos": "</s>", ...}`` from ``tokenizer_config.json``
    (``eos_token`` etc., a string or transformers' ``{"content": ...}``), then ``special_tokens_map.json`` for
    the roles it leaves out; {} when neither says anything (or cannot be read: the names decide then)."""
    folder = Path(tokenizer_file).parent
    declared: dict[str, str] = {}
    for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
        try:
            config = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict):
            continue
        for role in ROLES:
            value = config.get(f"{role}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and value:
                declared.setdefault(role, value)
    return declared


def special_tokens_of(tokenizer_file: Path, tokenizer=None) -> SpecialTokens:
    """The roles of the tokenizer in ``tokenizer_file``: declared beside it, else found by name."""
    return find_special_tokens(tokenizer if tokenizer is not None else load_tokenizer(tokenizer_file),
                               declared_roles(tokenizer_file))


def keep_tokenizer(source_file: Path, data_dir: Path, text: str | None = None) -> None:
    """The run's copy of its tokenizer: ``data_dir/tokenizer.json`` (``text``, or the source file's) and, when
    the source folder declares roles, ``data_dir/special_tokens_map.json`` with them (atomic writes)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    roles = declared_roles(source_file) if source_file is not None else {}
    atomic_write_text(data_dir / TOKENIZER, text if text is not None else Path(source_file).read_text())
    kept = data_dir / SPECIAL_TOKENS_MAP
    if roles:
        atomic_write_text(kept, json.dumps({f"{r}_token": t for r, t in roles.items()}, indent=2,
                                           ensure_ascii=False) + "\n")
    else:
        kept.unlink(missing_ok=True)  # a re-prepared run's old roles never outlive its tokenizer


def find_special_tokens(tokenizer, declared: dict[str, str] | None = None) -> SpecialTokens:
    """The BOS/EOS/PAD/UNK tokens of a ``tokenizers.Tokenizer``: ``declared`` roles whose token is in its
    vocabulary, the others by name (see the module docstring)."""
    found: dict[str, str] = {}
    for role, names in ROLE_NAMES.items():
        wanted = (declared or {}).get(role)
        candidates = ((wanted,) if wanted else ()) + names
        present = [name for name in candidates if tokenizer.token_to_id(name) is not None]
        if present:
            found[role] = present[0]
    if "eos" not in found:
        return SpecialTokens({}, {})
    for role in ("bos", "pad", "unk"):
        found.setdefault(role, found["eos"])
    return SpecialTokens(found, {role: tokenizer.token_to_id(token) for role, token in found.items()})


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception types
        raise TokenizerExportError(f"{path} is not a readable tokenizer.json ({str(exc).splitlines()[0]})") from None


def write_hf_tokenizer(tokenizer_file: Path, out_dir: Path) -> SpecialTokens:
    """Write the HF tokenizer files of ``tokenizer_file`` into ``out_dir`` (an existing folder) with
    ``transformers``' own ``save_pretrained``; returns the special tokens set (see :class:`SpecialTokens`)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = load_tokenizer(tokenizer_file)
    special = special_tokens_of(tokenizer_file, tokenizer)
    roles = {f"{role}_token": token for role, token in special.tokens.items()}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="left",
                                   clean_up_tokenization_spaces=False, **roles)
    fast.save_pretrained(str(out_dir))
    _make_portable(out_dir, roles)
    return special


def _make_portable(out_dir: Path, roles: dict[str, str]) -> None:
    """What ``save_pretrained`` of transformers 5 leaves out for older readers: a tokenizer class they know,
    and ``special_tokens_map.json`` (transformers 4 writes both itself; then this changes nothing)."""
    config_path = out_dir / TOKENIZER_CONFIG
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") != PORTABLE_TOKENIZER_CLASS:
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special_map = out_dir / SPECIAL_TOKENS_MAP
    if not special_map.exists():
        special_map.write_text(json.dumps(roles, indent=2, ensure_ascii=False) + "\n")


def write_generation_config(out_dir: Path, token_ids: dict[str, int]) -> None:
    """``generation_config.json`` with the BOS/EOS/PAD ids (what ``generate`` stops at and pads with)."""
    from transformers import GenerationConfig
    GenerationConfig(**token_ids).save_pretrained(str(out_dir))

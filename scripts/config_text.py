"""Edit a config.pbtxt's values in place: ops' comments, order and layout are kept.

Printing a protobuf rewrites the whole file and drops every comment, so tools that change a committed
config (`adopt`, and anything that hands ops a patch) say what they want as a whole `ModelConfig`, and
`edit_in_place` changes only the values that differ, at the place they are written. The text is
tokenized by protobuf's own text-format tokenizer (which knows strings and comments); the result is
parsed back and must equal the wanted config, so an edit can never mean something else than asked.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from google.protobuf import text_encoding, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


class InPlaceError(ValueError):
    """The wanted config differs from the text in a way that has no place in it (a field to add or remove)."""


@dataclasses.dataclass
class _Value:
    start: int  # offsets into the text: [start, end)
    end: int
    fields: list[_Field] | None = None  # a message's fields; None for a scalar


@dataclasses.dataclass
class _Field:
    name: str
    start: int  # where its name is written
    values: list[_Value]  # one, or the items of a `[ ... ]` list
    list_span: tuple[int, int] | None = None  # where the `[ ... ]` is, when written as a list


class _Tokens:
    """protobuf's tokenizer, with each token's offset in the text."""

    def __init__(self, text: str):
        lines = text.split("\n")
        self._line_starts = [0]
        for line in lines[:-1]:
            self._line_starts.append(self._line_starts[-1] + len(line) + 1)
        self._tokenizer = text_format.Tokenizer(lines)

    @property
    def token(self) -> str:
        return self._tokenizer.token

    @property
    def start(self) -> int:
        # The tokenizer keeps the current token's line and column only in these attributes.
        return self._line_starts[self._tokenizer._line] + self._tokenizer._column

    def next(self) -> tuple[str, int, int]:
        token, start = self.token, self.start
        self._tokenizer.NextToken()
        return token, start, start + len(token)

    def expect(self, token: str) -> int:
        if self.token != token:
            raise self._tokenizer.ParseError(f'expected "{token}", found "{self.token}"')
        return self.next()[2]


_CLOSING = {"{": "}", "<": ">"}


def _message(tokens: _Tokens, closing: str | None) -> list[_Field]:
    fields: list[_Field] = []
    while tokens.token != (closing or ""):
        name, name_start, _ = tokens.next()
        if name == "[":  # an extension or Any type name: [package.Type]
            while tokens.token != "]":
                name += tokens.next()[0]
            name += tokens.next()[0]
        if tokens.token == ":":
            tokens.next()
        if tokens.token == "[":
            start = tokens.start
            tokens.next()
            values = []
            while tokens.token != "]":
                values.append(_value(tokens))
                if tokens.token == ",":
                    tokens.next()
            end = tokens.expect("]")
            fields.append(_Field(name, name_start, values, (start, end)))
        else:
            fields.append(_Field(name, name_start, [_value(tokens)]))
        if tokens.token in (",", ";"):
            tokens.next()
    return fields


def _value(tokens: _Tokens) -> _Value:
    if tokens.token in _CLOSING:
        opening, start, _ = tokens.next()
        fields = _message(tokens, _CLOSING[opening])
        return _Value(start, tokens.expect(_CLOSING[opening]), fields)
    _, start, end = tokens.next()
    while tokens.token[:1] in ("'", '"'):  # adjacent strings are one value
        end = tokens.next()[2]
    return _Value(start, end)


def _scalar_text(field: FieldDescriptor, value) -> str:
    if field.type == FieldDescriptor.TYPE_STRING:
        return '"' + text_encoding.CEscape(value, as_utf8=True) + '"'
    if field.type == FieldDescriptor.TYPE_BYTES:
        return '"' + text_encoding.CEscape(value, as_utf8=False) + '"'
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return repr(value) if isinstance(value, float) else str(value)


def _list_text(field: FieldDescriptor, values, written: str) -> str:
    """A scalar list in the style it was written in: `[ 3, 64, 64 ]` or `[3, 64, 64]`."""
    pad = " " if written.startswith("[ ") else ""
    return f"[{pad}{', '.join(_scalar_text(field, v) for v in values)}{pad}]"


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _entry_key(text: str, value: _Value, field: FieldDescriptor, path: str):
    key_field = field.message_type.fields_by_name["key"]
    keys = [f for f in value.fields or [] if f.name == "key"]
    if len(keys) != 1:
        raise InPlaceError(f"{path}: a map entry without one key")
    written = text[keys[0].values[0].start:keys[0].values[0].end]
    entry = text_format.Parse(f"key: {written}", _entry_class(field)())
    return getattr(entry, key_field.name)


def _entry_class(field: FieldDescriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(field.message_type)


def _insertions(text: str, fields: list[_Field], want: Message, written: set[str]) -> list[tuple[int, int, str]]:
    """A line for each scalar field `want` sets that the message does not write, before its first field and
    indented as it is (a message written with no field has no indentation to follow: left to the check)."""
    missing = [(d, v) for d, v in want.ListFields() if d.name not in written and d.message_type is None]
    if not missing or not fields:
        return []
    line_start = text.rfind("\n", 0, fields[0].start) + 1
    indent = text[line_start:fields[0].start]
    if indent.strip():  # the first field shares its line with something else: no line of its own to copy
        return []
    lines = "".join(f"{indent}{d.name}: " + (_list_text(d, v, "[ ") if d.is_repeated else _scalar_text(d, v)) + "\n"
                    for d, v in missing)
    return [(line_start, line_start, lines)]


def _edits(text: str, fields: list[_Field], have: Message, want: Message, path: str) -> list[tuple[int, int, str]]:
    """(start, end, replacement) for every value of `fields` (the text of `have`) that `want` changes, and a
    new line for each scalar field `want` adds to a message that is written."""
    edits: list[tuple[int, int, str]] = []
    by_name: dict[str, list[_Field]] = {}
    for field in fields:
        by_name.setdefault(field.name, []).append(field)
    edits += _insertions(text, fields, want, set(by_name))
    for name, occurrences in by_name.items():
        descriptor = have.DESCRIPTOR.fields_by_name.get(name)
        if descriptor is None:  # an extension: left as written
            continue
        where = f"{path}{name}"
        values = [value for occurrence in occurrences for value in occurrence.values]
        if _is_map(descriptor):
            value_field = descriptor.message_type.fields_by_name["value"]
            have_map, want_map = getattr(have, name), getattr(want, name)
            for value in values:
                key = _entry_key(text, value, descriptor, where)
                if key not in want_map:
                    raise InPlaceError(f"{where}[{key}]: removing a map entry has no place in the text")
                if value_field.message_type is None:
                    edits += _edits(text, value.fields or [], _entry(descriptor, key, have_map[key]),
                                    _entry(descriptor, key, want_map[key]), f"{where}[{key}].")
                else:
                    inner = [f for f in value.fields or [] if f.name == "value"]
                    for item in inner:
                        edits += _edits(text, item.values[0].fields or [], have_map[key], want_map[key], f"{where}[{key}].value.")
        elif descriptor.is_repeated and descriptor.message_type is not None:
            have_items, want_items = getattr(have, name), getattr(want, name)
            if len(want_items) != len(values):
                raise InPlaceError(f"{where}: {len(values)} written, {len(want_items)} wanted (adding or removing has no place)")
            for index, (value, have_item, want_item) in enumerate(zip(values, have_items, want_items, strict=True)):
                edits += _edits(text, value.fields or [], have_item, want_item, f"{where}[{index}].")
        elif descriptor.is_repeated:
            have_items, want_items = list(getattr(have, name)), list(getattr(want, name))
            if have_items == want_items:
                continue
            if len(occurrences) == 1 and occurrences[0].list_span is not None:
                start, end = occurrences[0].list_span
                edits.append((start, end, _list_text(descriptor, want_items, text[start:end])))
            elif len(values) == len(want_items):
                edits += [(v.start, v.end, _scalar_text(descriptor, w)) for v, w in zip(values, want_items, strict=True)]
            else:
                raise InPlaceError(f"{where}: written as {len(values)} separate values, {len(want_items)} wanted: "
                                   "write it as one list ([a, b, c]) first")
        elif descriptor.message_type is not None:
            for value in values:
                edits += _edits(text, value.fields or [], getattr(have, name), getattr(want, name), f"{where}.")
        elif getattr(have, name) != getattr(want, name):
            edits += [(v.start, v.end, _scalar_text(descriptor, getattr(want, name))) for v in values]
    return edits


def _entry(field: FieldDescriptor, key, value):
    entry = _entry_class(field)()
    entry.key = key
    entry.value = value
    return entry


def edit_in_place(text: str, want: Message) -> str:
    """`text` (a config in protobuf text format) with the values `want` changes rewritten where they
    stand. Raises InPlaceError for a change the text has no place for (a field added or removed)."""
    have = text_format.Parse(text, type(want)())
    tokens = _Tokens(text)
    edits = _edits(text, _message(tokens, None), have, want, "")
    edited = text
    for start, end, replacement in sorted(edits, reverse=True):
        edited = edited[:start] + replacement + edited[end:]
    got = text_format.Parse(edited, type(want)())
    if got != want:
        names = sorted(field.name for field in want.DESCRIPTOR.fields if getattr(got, field.name) != getattr(want, field.name))
        raise InPlaceError(f"the wanted config changes {', '.join(names)} in a way the text has no place for "
                           "(a field to add): add it by hand first")
    return edited


Edits = dict[Path, tuple[str, str]]  # file -> (its text now, its text edited), for the files that change


def unified_diff(edits: Edits, project: Path) -> str:
    """The edits as one unified diff, paths relative to `project`."""
    lines = []
    for path, (before, after) in edits.items():
        name = path.relative_to(project) if path.is_relative_to(project) else path
        lines += difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{name}", f"b/{name}")
    return "".join(lines)


def write_edits(edits: Edits) -> None:
    """Each edited file replaced whole (written beside it, then renamed): never half-written."""
    for path, (_, after) in edits.items():
        staging = path.with_name(path.name + ".edit.tmp")
        staging.write_text(after)
        staging.replace(path)

"""A check Schemathesis runs against the daemon beside its built-in ones.

Loaded through SCHEMATHESIS_HOOKS by tests/contract/run.py.
"""
import os
import re

import schemathesis
import yaml


def _names(node, props, enums):
    if isinstance(node, dict):
        props.update(node.get("properties", {}))
        enums.update(v for v in node.get("enum", []) if isinstance(v, str))
        for v in node.values():
            _names(v, props, enums)
    elif isinstance(node, list):
        for v in node:
            _names(v, props, enums)


# Every property name and enum value the spec defines anywhere. Generated
# data may also carry properties the spec does not define (its schemas
# allow extra ones); refusing those is the daemon's choice.
SPEC_FIELDS, SPEC_VALUES = set(), set()
_names(yaml.safe_load(open(os.environ["SANDBOX0_SPEC"]))["components"], SPEC_FIELDS, SPEC_VALUES)


@schemathesis.check
def spec_fields_are_known(ctx, response, case):
    """Data the spec allows is never refused for a field or enum value the
    spec defines as if it were unknown: the daemon takes the field, and
    refuses a value it does not support by naming the field and saying so."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    text = response.text
    for m in re.finditer(r"unknown field `([^`]*)`", text):
        if m.group(1) in SPEC_FIELDS:
            raise AssertionError(f"the spec's field `{m.group(1)}` was refused as unknown: {text}")
    for m in re.finditer(r"unknown variant `([^`]*)`", text):
        if m.group(1) in SPEC_VALUES:
            raise AssertionError(f"the spec's value `{m.group(1)}` was refused as unknown: {text}")
    return None

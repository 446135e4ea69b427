"""Method signatures of a ``.pte``: each method's inputs and outputs, read from the program head.

``ExecutionPlan.inputs``/``outputs`` index the plan's ``values``; each is an ``EValue``, and a
tensor's ``scalar_type``, ``sizes`` and ``shape_dynamism`` say what the method takes and returns.
This is what the runtime's ``MethodMeta`` (``input_tensor_meta(i).sizes()``/``.dtype()``) reports:
for a dynamic tensor the sizes are its upper bounds, and the head does not say which dimensions
vary (only that the tensor is ``dynamic_bound`` or ``dynamic_unbound``). Only the values a
signature names are visited, so the cost is bounded by the number of inputs and outputs.

>>> specs = read_signatures(open_program("fixtures/multimodal/vision/model.pte"))  # doctest: +SKIP
>>> str(specs["vision_encoder"].inputs[0])  # doctest: +SKIP
'uint8[1,3,32,32]'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from etm_compat.constants import (
    EVALUE_MAX_TAG,
    EVALUE_TENSOR,
    EVALUE_TYPE_NAMES,
    SCALAR_TYPES,
    TENSOR_MAX_RANK,
    TENSOR_SHAPE_DYNAMISM,
    TORCH_DTYPE_NAMES,
)
from etm_compat.formats.flatbuf import Table
from etm_compat.formats.pte import MAX_DELEGATES, MAX_PLANS, MAX_VALUES, ProgramHead

#: A tensor whose byte size does not fit the runtime's 64-bit sizes is refused.
MAX_TENSOR_BYTES: Final = 2**63 - 1

# program.fbs vtable slots (4 + 2 * field id); see the research notes, section 2.
_PROGRAM_EXECUTION_PLAN = 6
_PLAN_NAME, _PLAN_VALUES, _PLAN_INPUTS, _PLAN_OUTPUTS, _PLAN_DELEGATES = 4, 8, 10, 12, 18
_EVALUE_TYPE, _EVALUE_VAL = 4, 6
_TENSOR_SCALAR_TYPE, _TENSOR_SIZES, _TENSOR_DIM_ORDER, _TENSOR_DYNAMISM = 4, 8, 10, 20
_DELEGATE_ID = 4


@dataclass(frozen=True)
class ValueSpec:
    """One input or output of a method.

    ``type`` is the EValue union type (``"Tensor"``, ``"Int"``, ...). For a tensor, ``dtype`` is
    the ScalarType name (``"FLOAT"``, ``"LONG"``, ``"BYTE"``...), ``scalar_type`` its number (what
    MethodMeta's ``dtype()`` returns), ``sizes`` the sizes (upper bounds when dynamic) and
    ``dynamism`` ``"static"``, ``"dynamic_bound"`` or ``"dynamic_unbound"``; all None otherwise.
    """

    type: str
    dtype: str | None = None
    scalar_type: int | None = None
    sizes: tuple[int, ...] | None = None
    dynamism: str | None = None

    @property
    def is_tensor(self) -> bool:
        return self.sizes is not None

    @property
    def torch_dtype(self) -> str | None:
        """The torch name of the dtype (``"float32"``, ``"int64"``, ``"uint8"``...), if known."""
        return None if self.scalar_type is None else TORCH_DTYPE_NAMES.get(self.scalar_type)

    def __str__(self) -> str:
        """``float32[1,80,3000]``; dynamic tensors mark their sizes as bounds: ``int64[<=1,<=127]``."""
        if self.sizes is None:
            return self.type
        mark = "" if self.dynamism == "static" else "<="
        dims = ",".join(f"{mark}{d}" for d in self.sizes)
        return f"{self.torch_dtype or self.dtype}[{dims}]"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.sizes is not None:
            out |= {"dtype": self.dtype, "scalar_type": self.scalar_type}
            out |= {"sizes": list(self.sizes), "dynamism": self.dynamism, "spec": str(self)}
        return out


@dataclass(frozen=True)
class MethodSpec:
    """A method's signature and the backends its delegates need (constant methods excluded)."""

    name: str
    inputs: tuple[ValueSpec, ...]
    outputs: tuple[ValueSpec, ...]
    backends: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": [v.to_json() for v in self.inputs],
            "outputs": [v.to_json() for v in self.outputs],
            "backends": list(self.backends),
        }


def read_signatures(
    head: ProgramHead, names: tuple[str, ...] | None = None
) -> Mapping[str, MethodSpec]:
    """The signature of every method named in ``names`` (default: every execution plan), by name.

    >>> read_signatures(open_program("model.pte"), ("forward",))["forward"].inputs  # doctest: +SKIP
    (ValueSpec(type='Tensor', dtype='LONG', scalar_type=4, sizes=(1, 127), dynamism='dynamic_bound'), ...)
    """
    wanted = None if names is None else set(names)
    specs: dict[str, MethodSpec] = {}
    for index, plan in enumerate(
        head.program.tables(_PROGRAM_EXECUTION_PLAN, "execution_plan", MAX_PLANS)
    ):
        name = plan.string(_PLAN_NAME, "name")
        if name is None:
            plan.buf.fail(f"execution_plan[{index}] has no name", offset=plan.pos)
        if wanted is None or name in wanted:
            specs[name] = _method(plan, name)
    return MappingProxyType(specs)


def _method(plan: Table, name: str) -> MethodSpec:
    values = plan.vector(_PLAN_VALUES, f"{name}.values", 4, MAX_VALUES)
    start, count = values if values is not None else (0, 0)

    def spec(index: int, role: str) -> ValueSpec:
        if not 0 <= index < count:
            plan.buf.fail(
                f"method {name!r} {role} value {index}, but it has {count} values",
                offset=plan.pos,
            )
        where = f"{name}.values[{index}]"
        value = plan.buf.table_at(plan.buf.deref(start + 4 * index, where), where)
        return _value_spec(value, where)

    inputs = plan.ints(_PLAN_INPUTS, f"{name}.inputs", "i", MAX_VALUES)
    outputs = plan.ints(_PLAN_OUTPUTS, f"{name}.outputs", "i", MAX_VALUES)
    backends = {
        d.string(_DELEGATE_ID, "id") or ""
        for d in plan.tables(_PLAN_DELEGATES, f"{name}.delegates", MAX_DELEGATES)
    }
    return MethodSpec(
        name=name,
        inputs=tuple(spec(i, "takes") for i in inputs),
        outputs=tuple(spec(i, "returns") for i in outputs),
        backends=tuple(sorted(backends - {""})),
    )


def _value_spec(value: Table, where: str) -> ValueSpec:
    buf = value.buf
    tag = value.u8(_EVALUE_TYPE, "val_type")
    if tag > EVALUE_MAX_TAG:
        buf.fail(
            f"unknown EValue union type {tag} in {where} (known types are 0..{EVALUE_MAX_TAG})",
            offset=value.pos,
        )
    if tag != EVALUE_TENSOR:
        return ValueSpec(EVALUE_TYPE_NAMES[tag])
    tensor = value.table(_EVALUE_VAL, "val")
    if tensor is None:
        buf.fail(f"{where} is a Tensor without a value", offset=value.pos)
    scalar_type = tensor.i8(_TENSOR_SCALAR_TYPE, "scalar_type")
    # The rank limit is the vector limit: a longer sizes vector is refused before it is read.
    sizes = tensor.ints(_TENSOR_SIZES, f"{where}.sizes", "i", TENSOR_MAX_RANK)
    order = tensor.ints(_TENSOR_DIM_ORDER, f"{where}.dim_order", "B", TENSOR_MAX_RANK)
    if order and sorted(order) != list(range(len(sizes))):
        buf.fail(f"{where} has dim_order {list(order)} for {len(sizes)} dimensions", tensor.pos)
    if any(d < 0 for d in sizes):
        buf.fail(f"{where} has a negative size: {list(sizes)}", offset=tensor.pos)
    name, elem = SCALAR_TYPES.get(scalar_type, (f"UNKNOWN_{scalar_type}", None))
    if elem is not None and math.prod(sizes) * elem > MAX_TENSOR_BYTES:
        buf.fail(f"{where} sizes {list(sizes)} make more than {MAX_TENSOR_BYTES} bytes", tensor.pos)
    dynamism = tensor.u8(_TENSOR_DYNAMISM, "shape_dynamism")
    if dynamism >= len(TENSOR_SHAPE_DYNAMISM):
        buf.fail(f"{where} has unknown shape_dynamism {dynamism}", offset=tensor.pos)
    return ValueSpec("Tensor", name, scalar_type, sizes, TENSOR_SHAPE_DYNAMISM[dynamism])


__all__ = ["MAX_TENSOR_BYTES", "MethodSpec", "ValueSpec", "read_signatures"]

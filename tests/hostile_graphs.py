"""Small ONNX graphs that are hostile programs (issue 16 item 2), built with onnx.helper.

Each takes input x of shape (N, 4) and outputs (N, 3) in the end, so it passes every static check:
- `endless_loop`: a `Loop` of 10^15 identity steps. With `classes_symbolic` its output's class
  dimension is undeclared, so an upload check has to run it once to count the classes.
- `input_dependent_loop`: the trip count comes from the input (it cannot be folded when the graph
  loads), so the graph loads at once and hangs only on data: in a job's caching_teacher phase.
- `memory_bomb`: `ConstantOfShape` of `floats` float32s (4 GiB by default), then reduced to a
  scalar; wrapped in a one-step Loop so its class dimension is unknown until it runs.
- `linear`: a well-behaved graph (x @ ones(4, 3)), for comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES, CLASSES = 4, 3


def _model(nodes, initializers, classes) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])
    model = helper.make_model(helper.make_graph(nodes, "hostile", [x], [y], initializer=initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _identity_body() -> onnx.GraphProto:
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    co = helper.make_tensor_value_info("co", TensorProto.BOOL, [])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, None)
    vo = helper.make_tensor_value_info("vo", TensorProto.FLOAT, None)
    return helper.make_graph([helper.make_node("Identity", ["c"], ["co"]), helper.make_node("Identity", ["v"], ["vo"])],
                             "body", [i, c, v], [co, vo])


def _common() -> list:
    return [numpy_helper.from_array(np.ones((FEATURES, CLASSES), np.float32), "W"),
            numpy_helper.from_array(np.array(True), "cond")]


def endless_loop(*, classes_symbolic: bool = True) -> onnx.ModelProto:
    inits = [*_common(), numpy_helper.from_array(np.array(10**15, np.int64), "M")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Loop", ["M", "cond", "xw"], ["y"], body=_identity_body())]
    return _model(nodes, inits, "C" if classes_symbolic else CLASSES)


def input_dependent_loop() -> onnx.ModelProto:
    inits = [*_common(), numpy_helper.from_array(np.array(0, np.float32), "zero"),
             numpy_helper.from_array(np.array(1e15, np.float32), "many")]
    nodes = [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
             helper.make_node("Mul", ["top", "zero"], ["nothing"]),
             helper.make_node("Add", ["nothing", "many"], ["trips"]),
             helper.make_node("Cast", ["trips"], ["M"], to=TensorProto.INT64),
             helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Loop", ["M", "cond", "xw"], ["y"], body=_identity_body())]
    return _model(nodes, inits, CLASSES)


def memory_bomb(floats: int = 1 << 30) -> onnx.ModelProto:
    inits = [*_common(), numpy_helper.from_array(np.array([floats], np.int64), "shape"),
             numpy_helper.from_array(np.array(1, np.int64), "one")]
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
             helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "total"], ["z"]),
             helper.make_node("Loop", ["one", "cond", "z"], ["y"], body=_identity_body())]
    return _model(nodes, inits, "C")


def linear() -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"])], _common()[:1], CLASSES)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path

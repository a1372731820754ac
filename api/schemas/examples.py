"""Request examples for the OpenAPI document (/docs' "Try it out" starts from them).

A job names an uploaded teacher, so its examples hold TEACHER_ID_PLACEHOLDER where the id goes: replace
it with the `id` that `POST /v1/files` answered for your teacher (sent unchanged, the job is a 422 on
`teacher.file_id` and on nothing else). The teacher's architecture is `make demo`'s (an MLP with hidden
sizes [256, 256] on the builtin digits); with another teacher, give its `arch` and `arch_params`.
tests/api/test_openapi_examples.py sends every example to the API and expects it accepted.
"""

from __future__ import annotations

from typing import Any

TEACHER_ID_PLACEHOLDER = "<the id POST /v1/files answered for your teacher>"
_TEACHER = {"file_id": TEACHER_ID_PLACEHOLDER, "arch": "mlp", "arch_params": {"hidden_sizes": [256, 256]}}
_REPLACE = (" Replace teacher.file_id with your uploaded teacher's id, and its arch and arch_params with its "
            "architecture (these are make demo's teacher's).")

JOB_EXAMPLES: dict[str, dict[str, Any]] = {
    "digits": {
        "summary": "Distil into a 16-unit MLP on the builtin digits, with a baseline",
        "description": "Every field left out gets its default; the answer's spec shows them all." + _REPLACE,
        "value": {"teacher": _TEACHER,
                  "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
                  "dataset": {"builtin": "digits", "standardize": True},
                  "hyperparameters": {"temperature": 4.0, "alpha": 0.3, "epochs": 10, "learning_rate": 0.01},
                  "baseline": True},
    },
    "few_labels": {
        "summary": "Few labels, many inputs: 10 labels per class, the other rows unlabelled",
        "description": ("The teacher labels the training rows whose labels are dropped; the baseline trains on "
                        "the 100 labelled rows alone." + _REPLACE),
        "value": {"teacher": _TEACHER,
                  "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
                  "dataset": {"builtin": "digits", "labels_per_class": 10, "standardize": True},
                  "hyperparameters": {"temperature": 4.0, "alpha": 0.1, "epochs": 20, "learning_rate": 0.01}},
    },
    "sweep": {
        "summary": "Sweep T and alpha with early stopping",
        "description": ("Every (T, alpha) point is trained; the best on validation becomes the student "
                        "(result.sweep lists them all)." + _REPLACE),
        "value": {"teacher": _TEACHER,
                  "student": {"arch": "mlp", "arch_params": {"hidden_sizes": [16]}},
                  "dataset": {"builtin": "digits", "standardize": True},
                  "hyperparameters": {"temperature": [2.0, 4.0, 8.0], "alpha": [0.1, 0.5], "epochs": 20,
                                      "learning_rate": 0.01, "early_stopping_patience": 5, "restore_best": True}},
    },
}

UPLOAD_EXAMPLES: dict[str, dict[str, Any]] = {
    "teacher": {"summary": "A teacher: a safetensors state dict, an ONNX graph or precomputed logits",
                "description": "Pick the file in `file`; make demo writes one at var/demo/teacher.safetensors.",
                "value": {"purpose": "teacher"}},
    "dataset": {"summary": "A dataset: .npz (x, y), Parquet or CSV with a label column; no labels = inputs only",
                "value": {"purpose": "dataset"}},
}

WEBHOOK_EXAMPLE: dict[str, Any] = {"url": "https://example.com/kd-events", "events": ["job.succeeded", "job.failed"]}
ROTATION_EXAMPLES = {"an hour to switch": {"summary": "the old secret signs beside the new one for an hour",
                                          "value": {"previous_secret_valid_seconds": 3600}}}

"""kdcore: the pure-PyTorch distillation engine (loss, architectures, teachers, data, trainer,
checkpoints, evaluation, export). No web, queue or database code lives here.

    from kdcore import kd_loss, build_model, DistillSpec, run_distillation, load_student
"""

from kdcore.data import DATASETS, ArrayDataset, IndexBatcher, inspect_dataset_file, load_builtin, read_dataset_file
from kdcore.errors import CheckpointError, DataError, FormatError, KDError, SpecError, TeacherError
from kdcore.export import export_onnx, load_student, read_student_metadata, save_student
from kdcore.losses import LOSSES, LossTerms, kd_loss
from kdcore.models import ARCHITECTURES, build_model, count_params, estimate_macs
from kdcore.pipeline import run_distillation
from kdcore.registry import Registry
from kdcore.spec import DistillSpec
from kdcore.teachers import load_teacher
from kdcore.trainer import Callbacks, train

__all__ = [
    "ARCHITECTURES", "DATASETS", "LOSSES", "ArrayDataset", "Callbacks", "CheckpointError", "DataError",
    "DistillSpec", "FormatError", "IndexBatcher", "KDError", "LossTerms", "Registry", "SpecError",
    "TeacherError", "build_model", "count_params", "estimate_macs", "export_onnx", "inspect_dataset_file",
    "kd_loss", "load_builtin", "load_student", "load_teacher", "read_dataset_file", "read_student_metadata",
    "run_distillation", "save_student", "train",
]

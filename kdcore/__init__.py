"""kdcore: the pure-PyTorch distillation engine (loss, architectures, teachers, data, trainer,
checkpoints, evaluation, export). No web, queue or database code lives here."""

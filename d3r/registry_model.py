"""The MLflow "model from code" file of the registered student (see :mod:`d3r.registry`).

:func:`d3r.registry.log_student_model` logs this file by path, so MLflow stores code, not a pickle;
loading the model runs it. Not meant to be imported.
"""

from mlflow.models import set_model

from d3r.registry import StudentModel

set_model(StudentModel())

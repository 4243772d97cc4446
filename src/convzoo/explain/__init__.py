"""Why a trained network decides as it does: class activation maps (Grad-CAM, through
captum's ``LayerGradCam``), top-k predictions, the first layer's filters and the
feature maps of each stage, written as PNG files and one HTML page
(``convzoo explain RUN [IMAGE...]``; see docs/explain.md).

Modules, one job each: ``layers`` (names, stages, the default layer), ``gradcam``,
``filters``, ``features``, ``images`` (files and picked test images), ``figures``
(PNG pictures), ``page`` (the HTML), ``run`` (:func:`explain_run`, all of it for a run).
"""

from __future__ import annotations

__all__ = ["explain_run", "grad_cam"]


def __getattr__(name: str):
    if name == "explain_run":
        from .run import explain_run

        return explain_run
    if name == "grad_cam":
        from .gradcam import grad_cam

        return grad_cam
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

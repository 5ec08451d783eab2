"""ComfyUI compatibility: API-format workflows in, planned zq jobs (or ComfyUI's errors) out."""

from producer.comfy.errors import WorkflowRejected
from producer.comfy.nodes import NODE_CLASSES, object_info
from producer.comfy.plan import PlannedJob, PlannedMask
from producer.comfy.translate import model_family, translate

__all__ = ["NODE_CLASSES", "PlannedJob", "PlannedMask", "WorkflowRejected", "model_family",
           "object_info", "translate"]

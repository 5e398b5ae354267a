"""course_utils: the small library every notebook of the course calls.

    from course_utils import load_model
    model = load_model()                 # the bundled model, offline
    logits, cache = model.run_with_cache("def add(a, b):")
    cache["pattern", 0]                  # [batch, head, query_pos, key_pos]

Modules, one concept each: devices, loading, families (per-architecture adapters), attention (the
hooked eager kernel), hook_points (where each hook lives), hooked_model (running, tokens, weights),
cache (the activation cache), lens (logit lens, residual decompositions, direct logit attribution),
plotting, data, checks, train.
"""

from course_utils.cache import ActivationCache, get_act_name
from course_utils.devices import get_device
from course_utils.errors import CourseError
from course_utils.hooked_model import HookedModel
from course_utils.loading import BUNDLED_MODEL, BUNDLED_MODELS, bundled_checkpoints, load_model

__all__ = ["ActivationCache", "BUNDLED_MODEL", "BUNDLED_MODELS", "CourseError", "HookedModel", "bundled_checkpoints",
           "get_act_name", "get_device", "load_model"]

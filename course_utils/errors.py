"""The one exception type the course raises for mistakes a learner can fix.

Its message is one sentence that says what to do. In a notebook it is shown without a stack trace.
"""


class CourseError(Exception):
    """A mistake the learner can act on; the message says how."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]

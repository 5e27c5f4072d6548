"""The earlier path of `autoscaler.core.policy`, kept so that policy plugins written before the move
still import (the plugin API is `autoscaler.core`). Same objects, not copies.
"""

from autoscaler.core.policy import *  # noqa: F403
